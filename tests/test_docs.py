"""The documentation holds together: every relative link of README.md, docs/ and results/
resolves (file and #anchor), and the package, scripts, docs and results describe what things
are, never which piece of past work made them."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^\s*```")


def markdown_files(root: Path = ROOT) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").glob("*.md")), *sorted((root / "results").rglob("*.md"))]


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    in_code = False
    for line in path.read_text().splitlines():
        if FENCE.match(line):
            in_code = not in_code
        if in_code or not line.startswith("#"):
            continue
        base = slug(line.lstrip("#"))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def links(path: Path) -> list[tuple[int, str]]:
    """(line number, target) of every Markdown link outside code blocks."""
    out, in_code = [], False
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if FENCE.match(line):
            in_code = not in_code
            continue
        if in_code:
            continue
        line = re.sub(r"`[^`]*`", "", line)  # inline code is no link
        out += [(i, a or b) for a, b in LINK.findall(line)]
    return out


def broken_links(files: list[Path]) -> list[str]:
    problems = []
    for f in files:
        for line, target in links(f):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            dest = (f.parent / path).resolve() if path else f
            where = f"{f.relative_to(ROOT) if f.is_relative_to(ROOT) else f}:{line}: {target}"
            if not dest.exists():
                problems.append(f"{where}: no such file")
            elif anchor and (dest.suffix != ".md" or anchor not in anchors(dest)):
                problems.append(f"{where}: no heading #{anchor} in {dest.name}")
    return problems


def test_every_relative_link_resolves():
    files = markdown_files()
    assert (ROOT / "docs").is_dir() and len(files) > 10
    assert not broken_links(files), "\n".join(broken_links(files))


def test_the_link_check_finds_a_missing_file_and_a_missing_anchor(tmp_path):
    (tmp_path / "a.md").write_text("# Top\n\n## The model's contract (`CTRModel.forward`)\n\ntext\n")
    (tmp_path / "b.md").write_text(
        "[ok](a.md#the-models-contract-ctrmodelforward) [ok](#here) [web](https://x.org/y)\n"
        "```\n[in code](nowhere.md)\n```\n`[inline](nowhere.md)`\n"
        "[gone](c.md) [bad anchor](a.md#no-such-heading)\n\n## Here\n")
    found = broken_links([tmp_path / "b.md"])
    assert len(found) == 2
    assert "c.md: no such file" in found[0] and "no heading #no-such-heading" in found[1]


def test_the_readme_is_a_front_door():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) < 200
    first_block = text.split("```")[1]
    assert "make demo" in first_block and "make test" in first_block  # the two commands first
    for page in ("training", "evaluation", "adaptation", "analysis", "scale", "interoperability",
                 "results", "design"):
        assert f"docs/{page}.md" in text, page
        body = (ROOT / "docs" / f"{page}.md").read_text()
        assert body.split("\n\n")[1].startswith("```"), f"docs/{page}.md starts with its command"


# ---- no history -------------------------------------------------------------------------------
HISTORY = re.compile(r"\bissues?\b|\bsession [0-9]+|\b(last|this|next) session\b|\bsession's\b"
                     r"|\bitem [0-9]+\b", re.IGNORECASE)
SCANNED = ("ctr", "scripts", "docs", "results", "README.md", "Makefile", "pyproject.toml", "configs",
           "checkpoints")
# Files other work owns that still carry such wording: each must be mended there, and then
# leave this list (the test fails while an entry no longer matches, so the list cannot go stale).
PENDING: set[str] = set()


def history_lines(root: Path = ROOT) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for name in SCANNED:
        base = root / name
        for f in ([base] if base.is_file() else sorted(p for p in base.rglob("*") if p.is_file())):
            if "__pycache__" in f.parts:
                continue
            data = f.read_bytes()
            if b"\0" in data[:4096]:  # figures, weights
                continue
            hits = [f"{i}: {line.strip()[:120]}" for i, line in
                    enumerate(data.decode("utf-8", "replace").splitlines(), 1) if HISTORY.search(line)]
            if hits:
                found[str(f.relative_to(root))] = hits
    return found


def test_no_history_in_code_docs_and_results():
    found = history_lines()
    new = {f: v for f, v in found.items() if f not in PENDING}
    assert not new, "describe what a thing is, not which work made it:\n" + "\n".join(
        f"{f}:{line}" for f, lines in new.items() for line in lines)
    assert PENDING <= set(found), f"mended, so drop from PENDING: {PENDING - set(found)}"


@pytest.mark.parametrize("line", ["the evidence table of issue 12", "rerun (Issue 14: ...)",
                                  "no GPU was lent this session", "in session 3", "the issue's goal",
                                  "Goal of item 4"])
def test_the_history_check_finds_it(tmp_path, line):
    (tmp_path / "ctr").mkdir()
    (tmp_path / "ctr" / "m.py").write_text(f'"""{line}"""\n')
    assert history_lines(tmp_path) == {"ctr/m.py": [f'1: """{line}"""']}
