"""The evidence table as Markdown (ctr.experiments.evidence builds the data)."""
from __future__ import annotations

from collections import Counter
from typing import Any

from ctr.experiments.evidence import CEILING, COLUMNS, PAIR_TITLES, VS_BACKBONE, ZERO_LABEL
from ctr.experiments.evidence_bootstrap import BINOMIAL, EXAMPLES, LEVEL


def diff_section(ev: dict[str, Any], key: str, wanted: dict[str, tuple[str, str]], title: str,
                 text: str) -> list[str]:
    """A table of the differences `ev`'s rows hold under `key` (named as in `wanted`); none: no section."""
    if not any(r[key] for r in ev["rows"]):
        return []
    lines = [title, "", text, "", "| mixture | task | difference | points [95% over examples] | verdict | "
             "[95% over seeds x templates] |", "|---|---|---|---|---|---|"]
    for r in ev["rows"]:
        for name, d in r[key].items():
            a, b = (dict(COLUMNS)[c] for c in wanted[name])
            lines.append(f"| {r['pair']} | {r['task']} | {a} - {b} | {fmt_diff(d)} | {d['verdict']} | "
                         f"{fmt_diff(d.get('paired_templates'))} |")
    return lines + [""]


def fmt_cell(c: dict[str, Any] | None, n_seeds: int) -> str:
    if c is None:
        return "-"
    mark = "" if len(c["seeds"]) == n_seeds or c["shared"] else f" ({len(c['seeds'])} of {n_seeds} seeds)"
    return f"{c['value']:.1f} [{c['ci_low']:.1f}, {c['ci_high']:.1f}]{mark}"


def fmt_diff(d: dict[str, Any] | None) -> str:
    if d is None:
        return "-"
    n = f" ({d['pairs']} pairs)" if "pairs" in d else ""
    return f"{d['diff']:+.1f} [{d['ci_low']:+.1f}, {d['ci_high']:+.1f}]{n}"



def bootstrap_note(ev: dict[str, Any]) -> str:
    """Which bootstrap the cells used, for the reader of evidence.md."""
    methods = Counter(c["bootstrap"] for r in ev["rows"] for c in r["cells"].values() if c)
    parts = []
    if methods[EXAMPLES]:
        parts.append(f"{methods[EXAMPLES]} of {sum(methods.values())} cells resample examples (their "
                     "results.json store each example's outcome): one draw of examples per (seed, task), "
                     "shared by every template and every column, so a difference between two columns is "
                     "paired over the examples both scored.")
    if methods[BINOMIAL]:
        parts.append(f"{methods[BINOMIAL]} of {sum(methods.values())} cells come from results.json that store "
                     "per template only k correct of n: each template's 0/1 vector is resampled "
                     f"(binomial; {ev['coupling']} coupling of templates) and columns independently, so a "
                     "difference involving one is unpaired over examples.")
    mixed = sum(n for m, n in methods.items() if m not in (EXAMPLES, BINOMIAL))
    if mixed:
        parts.append(f"{mixed} cells mix the two over seeds (see `evidence.json`).")
    return " ".join(parts)


def markdown(ev: dict[str, Any]) -> str:
    n_seeds = len(ev["seeds"])
    cols = [c for c, _ in COLUMNS if any(r["cells"][c] for r in ev["rows"])]
    hw = ev["hardware"]
    where = hw.get("gpu") or f"CPU ({hw.get('cpu', '?')}, {hw.get('cpu_count', '?')} cores, " \
        f"{hw.get('threads', '?')} torch thread(s), torch {hw.get('torch', '?')})"
    lines = ["# Evidence: do the codes matter?", "",
             f"Backbone `{ev['backbone']}`; {where}.", ""]
    if ev["mode"] == "quick":
        lines += ["**QUICK run (`--quick`): a pipeline check on a few examples, not evidence.**", ""]
    lines += [f"Seeds {', '.join(map(str, ev['seeds']))}. Each cell: accuracy (%), median over templates per "
              f"seed, mean over seeds, and its bootstrap {LEVEL:.0%} interval over examples ({ev['n_boot']} "
              f"replicates; see `ctr/experiments/evidence_bootstrap.py`). {bootstrap_note(ev)} Built by "
              f"`bash scripts/evidence_smollm2.sh` and `python scripts/compile_evidence.py {ev['runs']}`.", "",
              "| mixture | task | role | " + " | ".join(dict(COLUMNS)[c] for c in cols) + " |",
              "|---|---|---|" + "---|" * len(cols)]
    for r in ev["rows"]:
        role = "held-in (dataset trained on)" if r["held_in"] else "held-out"
        lines.append(f"| {PAIR_TITLES.get(r['pair'], r['pair'])} ({r['training_tasks']} tasks) | {r['task']} | "
                     f"{role} | " + " | ".join(fmt_cell(r["cells"][c], n_seeds) for c in cols) + " |")
    lines += ["", "## The paper's claim: CTR zero-label >= the multi-task prompted baseline", "",
              "Difference in points (CTR zero-label minus baseline), with its interval over examples "
              "(paired over examples where both columns stored per-example outcomes: the bootstrap "
              "column says) and over (seed, template) pairs (`paired_effect`, mean over templates).", "",
              "| mixture | task | stage | difference [95% over examples] | verdict | bootstrap over examples | "
              "difference [95% over seeds x templates] | verdict |", "|---|---|---|---|---|---|---|---|"]
    for r in ev["rows"]:
        for zl, d in r["diffs"].items():
            p = d.get("paired_templates")
            only = "" if len(d["seeds"]) == n_seeds else f" (seed {', '.join(map(str, d['seeds']))} only)"
            lines.append(f"| {r['pair']} | {r['task']}{' (held-in)' if r['held_in'] else ''} | "
                         f"{ZERO_LABEL[zl]}{only} | {fmt_diff(d)} | {d['verdict']} | {d['bootstrap']} | {fmt_diff(p)} | "
                         f"{p['verdict'] if p else '-'} |")
    for zl, p in ev["pooled_zero_label_minus_baseline"].items():
        lines.append(f"| **pooled** | mean over {p['tasks']} held-out tasks | {ZERO_LABEL[zl]} | {fmt_diff(p)} | "
                     f"{p['verdict']} | {p['bootstrap']} | | |")
    lines += ["", "The claim (>=) is contradicted where an interval lies below 0 and shown where it lies "
              "above 0; where it includes 0, these data do not decide it.",
              ""]
    lines += diff_section(ev, "vs_backbone", VS_BACKBONE, "## What training moved: against the backbone", (
        "Each trained column minus the bare LM on the same held-out task and templates: the baseline "
        "and stage 2 train the LM, stage 1 only the codes."))
    lines += diff_section(ev, "ceiling", CEILING, "## Stage 1 against its ceiling: free per-task prompts", (
        "A code's prompt cannot do better than a free prompt per training task (multi-task prompt "
        "tuning of the frozen LM, same mixture and budget), scored by the same Code Ensemble. The "
        "ceiling minus the backbone is what any prompt of the frozen LM adds to the held-out task; "
        "stage 1 minus the ceiling near 0 means the codes carry all that free prompts do."))
    lines += ["## Zero-label selection: do the training codes disagree?", "",
              "Mean agreement of the training codes with their majority vote on the selection inputs "
              "(1.0: every code gives the same answers, so selection cannot matter), and the code picked.", "",
              "| mixture | task | stage | mean agreement | picked (seed: training task, agreement) |",
              "|---|---|---|---|---|"]
    for r in ev["rows"]:
        for zl, a in r["agreement"].items():
            if a:
                picks = "; ".join(f"{x['seed']}: `{x['chosen_from']}` {x['chosen_agreement']:.3f}"
                                  for x in a["per_seed"])
                lines.append(f"| {r['pair']} | {r['task']} | {ZERO_LABEL[zl]} | {a['mean_agreement']:.3f} | {picks} |")
    lines += ["", "## Few-shot search", "",
              "| mixture | task | seed | checkpoint | start (best training code) | loss start -> search | "
              "code moved | chosen by |", "|---|---|---|---|---|---|---|---|"]
    for r in ev["rows"]:
        for f in r["few_shot"]:
            lines.append(f"| {r['pair']} | {r['task']} | {f['seed']} | `{f['checkpoint']}` | `{f['start_from']}` | "
                         f"{f['start_objective']:.2f} -> {f['search_objective']:.2f} | {f['moved']} | "
                         f"{f['chosen_by']} |")
    lines += ["", "## Per seed (median over templates; examples scored)", "",
              "| mixture | task | column | " + " | ".join(f"seed {s}" for s in ev["seeds"]) + " |",
              "|---|---|---|" + "---|" * n_seeds]
    for r in ev["rows"]:
        for c in cols:
            cell = r["cells"][c]
            if not cell:
                continue
            by = {p["seed"]: p for p in cell["per_seed"]}
            vals = [f"{by[s]['median']:.1f} (n={by[s]['examples']})" if s in by else
                    ("same file" if cell["shared"] else "-")
                    for s in ev["seeds"]]
            lines.append(f"| {r['pair']} | {r['task']} | {c} | " + " | ".join(vals) + " |")
    lines += ["", "## Training", "",
              "| seed | mixture | run | stage | tasks | steps x batch | lr | LM loss, last 10 steps | "
              "VQ loss first -> last | code values in use (last step) | training time (s) |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for t in ev["training"]:
        loss = "-" if t["lm_loss_last10"] is None else f"{t['lm_loss_last10']:.3f}"
        vq = "-" if t["vq_first"] is None else f"{t['vq_first']:.4f} -> {t['vq_last']:.4f}"
        lines.append(f"| {t['seed']} | {t['pair']} | {t['run']} ({t['kind']}) | {t['stage']} | {len(t['tasks'])} | "
                     f"{t['steps']} x {t['batch_size']}{'' if t['finished'] else ' (unfinished)'} | "
                     f"{t['lr']} | {loss} | {vq} | {t['values_in_use'] if t['values_in_use'] is not None else '-'} | "
                     f"{t['train_seconds']:.0f} |")
    if ev["timings"]:
        lines += ["", f"Wall time of the steps run ({len(ev['timings'])} logged in `timings.tsv`): "
                  f"{ev['total_step_seconds'] / 3600:.2f} h."]
    prov = ev["provenance"]
    commits = sorted({str(v.get("commit"))[:10] for v in ev["inputs"].values()})
    lines += ["", f"Compiled {prov['time']} at commit {str(prov.get('commit'))[:10]} (dirty: {prov.get('dirty')}); "
              f"runs made at commit(s) {', '.join(commits) or '-'}; every input file and its provenance "
              "are listed in `evidence.json`."]
    return "\n".join(lines) + "\n"


