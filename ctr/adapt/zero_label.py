"""Zero-label adaptation (`ctr zero-label`): Code Ensemble per task, then evaluation.

The selection and its options are `ctr.adapt.code_ensemble` (`select_code`,
`ZeroLabelConfig`, importable from here too); this module runs it over the tasks, writes
codes.json (with the evaluation indices selection used, kept out of `ctr eval`) and
evaluates the chosen codes.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from ctr.adapt.code_ensemble import ZeroLabelConfig, select_code
from ctr.adapt.common import prepare_adaptation
from ctr.core.codes import codes_file_content
from ctr.fileio import write_json
from ctr.provenance import provenance
from ctr.inference.evaluate import evaluate, markdown_table

__all__ = ["ZeroLabelConfig", "run_zero_label", "select_code"]


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
