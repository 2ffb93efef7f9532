"""Batched Bitwise Search vs the authors' one-code-at-a-time loop, in one run.

    python -m ctr.bench.search [--checkpoint RUN] [--task super_glue_rte] [--shots 16]

Both searches use the same model, shots, start codes, positions order and values. The
reference re-creates the released code's loop: for every candidate code it re-tokenises
the shots, runs one forward pass over them (shots batched) with full-vocabulary logits
and sums the target loss. The batched search scores all values of a position together:
tokenised once, their codes x shots rows sorted by length into passes of --batch-size rows
(so a pass holds a few shots under many codes and little padding), target-only LM head.
Without --checkpoint a fresh CTR model on the backbone is used (timing does not depend on
training). Last line: `search_speedup=<reference time / batched time> same_code=<true|false>`.

    python -m ctr.bench.search --guided [--shots 8] [--guide-top 8[,16,32]] [--max-sweeps 2]

`--guided` compares the exhaustive batched search with the gradient-guided one
(`ctr.adapt.guided_search`) instead: same model, shots, start codes, order and values (all
K by default), one after the other in one run. Also measured, untimed: the ranking's
recall along the exhaustive trajectory. Last line: `eval_ratio=<exhaustive evaluations /
guided> time_ratio=<exhaustive time / guided time> objective_ratio=<guided final objective /
exhaustive final objective>`. Several --guide-top values run one guided search each against the
one exhaustive search (the trade-off between evaluations and objective); the first is the
headline of the last line, the others print a `top=<m> ...` line each before it.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from ctr.core.backbone import default_device, load_backbone
from ctr.train.batching import Encoded, collate
from ctr.adapt.bitwise_search import ShotObjective, bitwise_search
from ctr.adapt.guided_search import GradientGuide, check_top, loss_and_gradient, ranking_recall, run_search
from ctr.config import CTRConfig
from ctr.tasks.registry import get_task, render_task
from ctr.bench.report import emit
from ctr.provenance import provenance
from ctr.core.loading import load_model
from ctr.adapt.few_shot import make_shots
from ctr.core.model import CTRModel
from ctr.inference.scoring import RankScorer
from ctr.tasks.splits import few_shot
from ctr.adapt.common import AdaptCommon, selection_templates


def reference_objective(model: CTRModel, texts: list[tuple[str, str]], delimiter: str, max_len: int):
    """One code per call: re-tokenise, one batched forward with full logits. Decoder-only
    targets follow the delimiter, without EOS; seq2seq sources and targets end with EOS."""
    tok, adapter, eos = model.tokenizer, model.adapter, model.tokenizer.eos_token_id

    @torch.no_grad()
    def objective(codes):
        out = []
        for code in codes:
            rows = []
            for src_text, tgt_text in texts:
                src = tok(src_text, add_special_tokens=False).input_ids
                tgt = tok(adapter.sequence_delimiter(delimiter) + tgt_text, add_special_tokens=False).input_ids
                rows.append(Encoded(0, adapter.finish_source(src, max_len, eos),
                                    adapter.finish_target(tgt, None, eos, target_eos=True, scoring=True)))
            batch = collate(rows, tok.pad_token_id, adapter)
            batch.pop("task_ids")
            batch = {k: v.to(model.device) for k, v in batch.items()}
            o = model(**batch, codes=torch.tensor([code]), target_only=False)
            out.append(float(o.example_loss_sum.double().sum()))
        return out
    return objective


def top_list(text: str) -> list[int]:
    """`--guide-top 8` or `--guide-top 8,16,32`: distinct values, each >= 1 (K-1 is checked
    once the model is loaded)."""
    try:
        tops = [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas, got {text!r}") from None
    for top in tops:
        try:
            check_top(top)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    if len(set(tops)) != len(tops):
        raise argparse.ArgumentTypeError(f"a value is repeated in {text!r}")
    return tops


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=None, help="CTR run/model folder (default: fresh CTR)")
    ap.add_argument("--model", default="smollm2", help="backbone for a fresh CTR model")
    ap.add_argument("--task", default="super_glue_rte")
    ap.add_argument("--shots", type=int, default=None, help="default 16 (--guided: 8)")
    ap.add_argument("--values", type=int, default=None,
                    help="values tried per position (default 16; --guided: all K)")
    ap.add_argument("--candidates", type=int, default=8, help="training codes of a fresh model")
    ap.add_argument("--max-sweeps", type=int, default=None, help="default 1 (--guided: 2)")
    ap.add_argument("--guided", action="store_true",
                    help="exhaustive vs gradient-guided search instead of batched vs reference")
    ap.add_argument("--guide-top", type=top_list, default=[8],
                    help="--guided: values scored per position; several (8,16,32): one guided "
                         "search each, the first is the headline")
    ap.add_argument("--no-recall", action="store_true", help="--guided: skip the recall measurement")
    ap.add_argument("--trajectory-dir", default=None,
                    help="--guided: write both searches' trajectories here (a cut run keeps its steps)")
    ap.add_argument("--max-input-len", type=int, default=1024, help="input tokens kept (from the end)")
    ap.add_argument("--code-length", type=int, default=10, help="L of a fresh CTR model")
    ap.add_argument("--batch-size", type=int, default=64, help="rows per batched forward")
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32",
                    help="model weights for both searches (bf16: GPU tensor cores)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    defaults = (8, None, 2) if args.guided else (16, 16, 1)
    for name, value in zip(("shots", "values", "max_sweeps"), defaults):
        if getattr(args, name) is None:
            setattr(args, name, value)
    torch.manual_seed(args.seed)
    if args.checkpoint:
        model = load_model(args.checkpoint)
    else:
        backbone, tok = load_backbone(args.model)
        cfg = CTRConfig(task_names=[f"task{i}" for i in range(args.candidates)],
                        code_length=args.code_length)
        model = CTRModel(backbone, cfg, tok).to(default_device())
    model = model.to(torch.bfloat16 if args.dtype == "bf16" else torch.float32).eval()
    task = get_task(args.task)
    common = AdaptCommon(max_templates=1, max_input_len=args.max_input_len)
    examples = few_shot(task, args.shots, args.seed).examples
    templates = selection_templates(task, common, examples, labelled=True)
    shots = make_shots(model, task, examples, templates, common)
    texts = []
    for template in templates:
        instances, _ = render_task(task, template, examples)
        texts += [(i.prompt.input_text, i.prompt.choices[i.label_index]) for i in instances]
    starts = list({tuple(c): None for c in model.code_table().values()})
    starts = [list(c) for c in starts]
    K, L = model.config.codebook_size, model.config.code_length
    if args.guided:
        return guided_bench(args, model, shots, starts)
    g = torch.Generator().manual_seed(args.seed)
    values = [sorted(torch.randperm(K, generator=g)[:args.values].tolist()) for _ in range(L)]
    batched_obj = ShotObjective(RankScorer(model, args.batch_size, progress=False), shots)
    ref_obj = reference_objective(model, texts, " ", 1024)
    batched_obj(starts[:1])  # warm-up both paths
    ref_obj(starts[:1])
    sync = torch.cuda.synchronize if model.device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    fast = bitwise_search(batched_obj, starts, values, args.max_sweeps, args.seed)
    sync()
    t_fast = time.perf_counter() - t0
    t0 = time.perf_counter()
    slow = bitwise_search(ref_obj, starts, values, args.max_sweeps, args.seed, chunk=1)
    sync()
    t_slow = time.perf_counter() - t0
    result = {"task": args.task, "shots": len(shots), "codes_scored": fast.evaluations,
              "values_per_position": args.values, "start_codes": len(starts),
              "sweeps": args.max_sweeps, "dtype": args.dtype, "batch_size": args.batch_size,
              "batched_seconds": round(t_fast, 2),
              "reference_seconds": round(t_slow, 2), "search_speedup": round(t_slow / t_fast, 2),
              "same_code": fast.code == slow.code, "batched_code": fast.code, "reference_code": slow.code,
              "batched_objective": fast.objective, "reference_objective": slow.objective,
              "model": args.checkpoint or args.model, "provenance": provenance()}
    emit(result, args.out)
    print(f"search_speedup={result['search_speedup']:.2f} same_code={str(result['same_code']).lower()}")


def guided_bench(args, model: CTRModel, shots, starts: list[list[int]]) -> None:
    """Exhaustive vs gradient-guided Bitwise Search on the same everything; prints and
    writes the figures, and the ratio line last."""
    K, L = model.config.codebook_size, model.config.code_length
    n = args.values or K
    values = [list(range(K))] * L if n >= K else [
        sorted(torch.randperm(K, generator=torch.Generator().manual_seed(args.seed + p))[:n].tolist())
        for p in range(L)]
    obj = ShotObjective(RankScorer(model, args.batch_size, progress=False), shots)
    obj(starts[:1])  # warm-up: scoring and a backward pass
    loss_and_gradient(model, shots, model.decoder(model.quantizer.weight[:L]).detach())
    sync = torch.cuda.synchronize if model.device.type == "cuda" else (lambda: None)

    def progress(tag):
        return lambda r: print(f"[{tag}] sweep {r['sweep']} step {r['step']} position {r['position']}: "
                               f"scored {r['tried']}, objective {r['objective']:.4f}"
                               f"{' (accepted)' if r['accepted'] else ''}, {r['time']}s", flush=True)
    sync()  # the guided searches first: the short ones are complete even if a long run is cut
    traj = Path(args.trajectory_dir) if args.trajectory_dir else None
    names = ["guided"] + [f"guided_top{m}" for m in args.guide_top[1:]]
    if traj:  # fresh files: a resumed search would not be timed
        traj.mkdir(parents=True, exist_ok=True)
        for name in names + ["exhaustive"]:
            (traj / f"trajectory_{name}.jsonl").unlink(missing_ok=True)
    path = lambda name: traj / f"trajectory_{name}.jsonl" if traj else None
    for top in args.guide_top:  # every value before the first search
        check_top(top, K)
    guided = []
    for top, name in zip(args.guide_top, names):
        gd, gd_rep = run_search(obj, starts, values, GradientGuide(model, shots, top), args.max_sweeps,
                                args.seed, trajectory_path=path(name), on_step=progress(name))
        sync()
        guided.append((top, gd, gd_rep))
    ex, ex_rep = run_search(obj, starts, values, None, args.max_sweeps, args.seed,
                            trajectory_path=path("exhaustive"), on_step=progress("exhaustive"))
    sync()
    recall = None
    if not args.no_recall:  # untimed: a fresh guide ranks at each exhaustive step's code
        recall = ranking_recall(GradientGuide(model, shots, args.guide_top[0]), ex.trajectory, values,
                                tops=[1, 2, 4, 8, 16, 32, 64])

    def ratios(top, gd, gd_rep):  # one guided search against the exhaustive one
        return {"top": top, **gd_rep, "code": gd.code, "same_code": gd.code == ex.code,
                "eval_ratio": round(ex_rep["evaluations"] / gd_rep["evaluations"], 3),
                "time_ratio": round(ex_rep["seconds"] / gd_rep["seconds"], 3),
                "cpu_time_ratio": round(ex_rep["cpu_seconds"] / gd_rep["cpu_seconds"], 3),
                "objective_ratio": round(gd_rep["objective"] / ex_rep["objective"], 5)}
    by_top = [ratios(*g) for g in guided]
    head = by_top[0]
    result = {"task": args.task, "shots": len(shots), "shot_tokens": [len(s.input_ids) for s in shots],
              "max_input_len": args.max_input_len, "code_length": L, "codebook_size": K,
              "values_per_position": len(values[0]), "start_codes": len(starts),
              "max_sweeps": args.max_sweeps, "guide_top": args.guide_top[0], "dtype": args.dtype,
              "batch_size": args.batch_size, "threads": torch.get_num_threads(),
              "exhaustive": {**ex_rep, "code": ex.code, "start_code": ex.start_code,
                             "start_objective": ex.start_objective},
              "guided": {**guided[0][2], "code": guided[0][1].code, "start_code": guided[0][1].start_code},
              "same_code": head["same_code"], "recall": recall,
              **{k: head[k] for k in ("eval_ratio", "time_ratio", "cpu_time_ratio", "objective_ratio")},
              "by_top": by_top, "model": args.checkpoint or args.model, "provenance": provenance()}
    emit(result, args.out)
    for r in by_top[1:] + by_top[:1]:  # the headline last
        tag = "" if r is head else f"top={r['top']} "
        print(f"{tag}eval_ratio={r['eval_ratio']:.2f} time_ratio={r['time_ratio']:.2f} "
              f"objective_ratio={r['objective_ratio']:.4f}")


if __name__ == "__main__":
    main()
