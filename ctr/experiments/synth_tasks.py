"""A synthetic compositional task suite: every task is one combination of primitive factors.

An input is a short list of distinct letters ("cafbe:"). A task picks some of them
(factor `sel`), transforms them (factor `tf`) and renders the result (factor `out`):
`sel-last3.tf-sort.out-comma` maps "cafbe:" to "b,e,f". The input never says which task
is asked for, so a model can only solve a task through its code: that is what makes the
suite a test of whether codes compose.

Held-out combinations are chosen so that each of their primitives, and each pair of them,
occurs in training, but the whole combination never does (`split_combinations` asserts
it). Everything is a function of the seed.
"""
from __future__ import annotations

import itertools
import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

ITEMS = "abcdefgh"  # small on purpose: a tiny char model learns every letter quickly
INPUT_LEN = 5
# Ends every input: a decoder-only model then sees where the answer starts ("cafbe:caf")
# instead of counting characters, which it learned slowly for answers with no separators.
INPUT_END = ":"


@dataclass(frozen=True)
class Primitive:
    factor: str
    name: str
    description: str
    fn: Callable[[list[str]], list[str]] | Callable[[list[str]], str]


# factor -> its primitives, in a fixed order (task names and analyses depend on it)
FACTORS: dict[str, list[Primitive]] = {
    "sel": [
        Primitive("sel", "first3", "take the first three letters", lambda xs: xs[:3]),
        Primitive("sel", "last3", "take the last three letters", lambda xs: xs[-3:]),
        Primitive("sel", "odd", "take every other letter, starting with the first",
                  lambda xs: xs[::2]),
    ],
    "tf": [
        Primitive("tf", "keep", "keep their order", lambda xs: list(xs)),
        Primitive("tf", "rev", "reverse them", lambda xs: xs[::-1]),
        Primitive("tf", "sort", "sort them alphabetically", sorted),
        Primitive("tf", "upper", "write them in capitals", lambda xs: [x.upper() for x in xs]),
    ],
    "out": [
        Primitive("out", "plain", "write them with nothing in between", "".join),
        Primitive("out", "space", "separate them with spaces", " ".join),
        Primitive("out", "comma", "separate them with commas", ",".join),
    ],
}
FACTOR_NAMES = tuple(FACTORS)
Combination = tuple[str, ...]  # one primitive name per factor, in FACTOR_NAMES order


def primitive(factor: str, name: str) -> Primitive:
    for p in FACTORS.get(factor, []):
        if p.name == name:
            return p
    known = {f: [p.name for p in ps] for f, ps in FACTORS.items()}
    raise ValueError(f"unknown primitive {factor}-{name}; known: {known}")


def task_name(combo: Combination) -> str:
    """`sel-first3.tf-rev.out-comma`: the factors can be read back by `parse_task_name`."""
    return ".".join(f"{f}-{v}" for f, v in zip(FACTOR_NAMES, combo))


def parse_task_name(name: str) -> dict[str, str]:
    """{factor: primitive} of a synthetic task name; ValueError for anything else."""
    parts = dict(part.split("-", 1) for part in name.split(".") if "-" in part)
    if list(parts) != list(FACTOR_NAMES) or len(name.split(".")) != len(FACTOR_NAMES):
        raise ValueError(f"{name!r} is not a synthetic task name like "
                         f"{task_name(all_combinations()[0])!r}")
    for f, v in parts.items():
        primitive(f, v)
    return parts


def describe(combo: Combination) -> str:
    sel, tf, out = (primitive(f, v).description for f, v in zip(FACTOR_NAMES, combo))
    return f"{sel.capitalize()}, {tf}, and {out}."


def apply(combo: Combination, letters: Sequence[str]) -> str:
    sel, tf, out = (primitive(f, v).fn for f, v in zip(FACTOR_NAMES, combo))
    return out(tf(sel(list(letters))))


def all_combinations(primitives: Sequence[str] = ()) -> list[Combination]:
    """Every combination, or those made only of `primitives` (names like "tf-rev"; a factor
    none of whose primitives is named keeps all of its primitives)."""
    chosen = {f: [p.name for p in FACTORS[f]] for f in FACTOR_NAMES}
    picked: dict[str, list[str]] = {}
    for item in primitives:
        factor, _, name = item.partition("-")
        primitive(factor, name)  # a clear error for a typo
        picked.setdefault(factor, []).append(name)
    chosen.update({f: [n for n in chosen[f] if n in names] for f, names in picked.items()})
    return list(itertools.product(*chosen.values()))


def _pairs(combo: Combination) -> list[tuple[tuple[str, str], tuple[str, str]]]:
    named = list(zip(FACTOR_NAMES, combo))
    return list(itertools.combinations(named, 2))


def split_combinations(n_heldout: int, seed: int, primitives: Sequence[str] = ()
                       ) -> tuple[list[Combination], list[Combination]]:
    """(train, held-out). Held-out combinations are drawn in a seeded order and kept only
    while every primitive and every pair of primitives of each of them stays in training:
    the held-out task is then new only as a whole, which is what composition means here."""
    combos = all_combinations(primitives)
    if not 1 <= n_heldout < len(combos):
        raise ValueError(f"n_heldout must lie in [1, {len(combos)}), got {n_heldout}")
    order = random.Random(seed).sample(combos, len(combos))
    heldout: list[Combination] = []
    for cand in order:
        if len(heldout) == n_heldout:
            break
        train = [c for c in combos if c not in heldout and c != cand]
        if all(_covered(h, train) for h in heldout + [cand]):
            heldout.append(cand)
    if len(heldout) < n_heldout:
        raise ValueError(f"cannot hold out {n_heldout} combinations with every primitive pair "
                         f"still in training (found {len(heldout)})")
    train = [c for c in combos if c not in heldout]
    check_split(train, heldout)
    return train, sorted(heldout)


def _covered(combo: Combination, train: list[Combination]) -> bool:
    seen_prims = {(f, v) for c in train for f, v in zip(FACTOR_NAMES, c)}
    seen_pairs = {p for c in train for p in _pairs(c)}
    return (all(p in seen_prims for p in zip(FACTOR_NAMES, combo))
            and all(p in seen_pairs for p in _pairs(combo)))


def check_split(train: list[Combination], heldout: list[Combination]) -> None:
    """Raise unless no held-out combination is a training one and each is covered."""
    overlap = set(train) & set(heldout)
    if overlap:
        raise AssertionError(f"held-out combinations in training: {sorted(overlap)}")
    for h in heldout:
        if not _covered(h, train):
            raise AssertionError(f"{task_name(h)}: a primitive or pair of it is not in training")


@dataclass
class SynthExample:
    input: str
    target: str


def input_pools(sizes: dict[str, int], seed: int) -> dict[str, list[str]]:
    """Disjoint pools of inputs (distinct-letter strings) by role, e.g. train/shots/eval:
    no evaluation input is ever a training or shot input, whatever the task."""
    every = ["".join(p) for p in itertools.permutations(ITEMS, INPUT_LEN)]
    need = sum(sizes.values())
    if need > len(every):
        raise ValueError(f"{need} inputs asked for, only {len(every)} exist")
    picked = random.Random(seed).sample(every, need)
    pools, start = {}, 0
    for role, n in sizes.items():
        pools[role] = picked[start:start + n]
        start += n
    return pools


def make_examples(combo: Combination, inputs: Sequence[str]) -> list[SynthExample]:
    return [SynthExample(x + INPUT_END, apply(combo, x)) for x in inputs]


def sample_inputs(pool: Sequence[str], n: int, seed: int, combo: Combination) -> list[str]:
    """n inputs of a pool for one task (seeded by the task, so tasks see different ones)."""
    if n > len(pool):
        raise ValueError(f"{n} inputs asked for from a pool of {len(pool)}")
    return random.Random(f"{seed}/{task_name(combo)}").sample(list(pool), n)


def write_jsonl(path: str | Path, tasks: dict[str, list[SynthExample]]) -> Path:
    """The trainer's JSONL task format: task, input, target."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for name, examples in tasks.items():
            for e in examples:
                f.write(json.dumps({"task": name, "input": e.input, "target": e.target}) + "\n")
    return path
