"""Zero-label adaptation (`ctr zero-label`): Code Ensemble per task, then evaluation.

The selection itself is `ctr.adapt.code_ensemble.select_code`; this module runs it over
the tasks, writes codes.json (with the evaluation indices selection used, kept out of
`ctr eval`) and evaluates the chosen codes.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from ctr.adapt.code_ensemble import select_code
from ctr.adapt.common import AdaptCommon, prepare_adaptation
from ctr.config import opt
from ctr.core.codes import codes_file_content
from ctr.fileio import write_json
from ctr.provenance import provenance
from ctr.inference.evaluate import evaluate, markdown_table


@dataclass
class ZeroLabelConfig(AdaptCommon):
    n_inputs: int = opt(32, "unlabelled inputs used for selection")
    vote: Literal["majority", "mean_prob"] = opt("majority", "how pseudo-labels are formed")
    degenerate_threshold: float | None = opt(
        None, "drop candidates that give one answer to more than this fraction of inputs")
    authors_max_distance: float = opt(
        0.25, "--protocol authors only: drop candidates whose predicted answer shares lie further "
              "than this (total variation) from the gold label shares")
    output_dir: str = opt("runs/zero_label", "where selection and evaluation results go")


def run_zero_label(cfg: ZeroLabelConfig) -> dict[str, Any]:
    model, tasks, candidates, scorer, out = prepare_adaptation(cfg)
    selection = {}
    for name in tasks:
        selection[name] = select_code(model, name, cfg, candidates, scorer)
        s = selection[name]
        print(f"[zero-label] {name}: code {','.join(map(str, s['code']))} (from {s['from_tasks'][0]}"
              f"{' +%d' % (len(s['from_tasks']) - 1) if len(s['from_tasks']) > 1 else ''}), agreement "
              f"{s['agreement']:.2f} over {s['inputs']} inputs x templates, {len(candidates)} candidates",
              flush=True)
    write_json(out / "zero_label.json", {"config": dataclasses.asdict(cfg), "tasks": selection,
                                         "provenance": provenance()})
    # codes.json carries its exclusions: `ctr eval --codes-file` alone keeps them out
    write_json(out / "codes.json", codes_file_content({t: s["code"] for t, s in selection.items()},
                                                      {t: s["exclude"] for t, s in selection.items()}))
    write_json(out / "exclude.json", {t: s["exclude"] for t, s in selection.items()})
    if cfg.no_eval:
        return {"selection": selection}
    res = evaluate(model, cfg.eval_config(tasks, out, codes_file=str(out / "codes.json")))
    res["zero_label"] = {t: {k: v for k, v in s.items() if k != "ranked"} for t, s in selection.items()}
    write_json(out / "results.json", res)
    table = markdown_table(res)
    (out / "results.md").write_text(table + "\n")
    print(table)
    return {"selection": selection, "results": res}
