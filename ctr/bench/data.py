"""Training data at scale: building and reopening the Arrow data cache, and sampling from it.

    python -m ctr.bench.data [--examples 1000000] [--task-files 300] [--folder DIR]
                             [--model smollm2] [--workers 1] [--batches 200] [--batch-size 2048]
                             [--words 20 120] [--collate] [--out results/bench_data/cpu/bench_data.json]

1. writes a synthetic T0-format folder (`t0_train/*.jsonl` + manifest, with the real
   sample's defects: an empty file, empty targets, `<|endoftext|>` markers, single-answer
   tasks) of --examples examples in --task-files files (kept in --folder when given and
   reused when its size matches, else in a temporary folder);
2. a fresh process reads and tokenises it into an empty cache (`build_s`: the raw Arrow
   table and the token ids, what `ctr train` does the first time);
3. another fresh process opens the cache (`cached_load_s`: from the data folder's path to
   a sampler-ready table; the process's start (interpreter, imports) and the tokenizer's
   own loading are reported apart) and samples --batches global batches of --batch-size rows as `ctr train` does
   (`MixtureSampler` and the rows' ids; `--collate` also pads them into tensors);
   `peak_rss_mb` is that process's peak resident memory over its whole life (imports,
   opening and sampling: memory-mapped pages the sampling touched count in it).
The last line is `examples=<n> build_s=... cached_load_s=... peak_rss_mb=...`.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ctr.bench.report import emit

WORDS = [a + b + c for a in ("st", "pr", "b", "k", "tr", "m", "l", "gr", "sh", "d")
         for b in ("a", "e", "i", "o", "u", "ea", "oo") for c in ("n", "rt", "ll", "ck", "m", "sh", "ve", "d")]
TASK_TYPES = ["sentiment", "topic_classification", "paraphrase", "qa_extractive",
              "qa_multiple_choice", "summarization", "structure_to_text", "qa_closed_book"]
STAMP = "bench_data.json"


def make_folder(folder: Path, examples: int, task_files: int, words: tuple[int, int] = (20, 120),
                seed: int = 0) -> None:
    """A synthetic T0 sample: prompts of `words` words (uniform), answers from a few labels
    (two tasks in three) or of 12 words."""
    spec = {"examples": examples, "task_files": task_files, "words": list(words), "seed": seed,
            "version": 1}
    stamp = folder / STAMP
    if stamp.exists() and json.loads(stamp.read_text()) == spec:
        return
    shutil.rmtree(folder / "t0_train", ignore_errors=True)
    (folder / "t0_train").mkdir(parents=True)
    rng = np.random.default_rng(seed)
    sizes = [*rng.multinomial(examples, rng.dirichlet(np.full(task_files - 1, 2.0))), 0]  # last: empty
    vocab = np.array(WORDS)
    rows = ["file\tdataset\ttemplate\ttask_type\texamples\tempty_targets"]
    for k, n in enumerate(sizes):
        name = f"ds{k // 6:03d}_template_{k % 6}"
        ttype = TASK_TYPES[k % len(TASK_TYPES)]
        answers = None if k % 3 == 0 else list(vocab[rng.integers(len(vocab), size=1 + k % 5)])
        lengths = rng.integers(words[0], words[1] + 1, size=int(n))
        empty_targets = 0
        with open(folder / "t0_train" / f"{name}.jsonl", "w") as f:
            for i, length in enumerate(lengths):
                prompt = " ".join(vocab[rng.integers(len(vocab), size=length)]) + "\nAnswer:\n"
                target = (answers[int(rng.integers(len(answers)))] if answers
                          else " ".join(vocab[rng.integers(len(vocab), size=12)]))
                if k % 50 == 7 and i % 10 == 0:
                    target, empty_targets = "", empty_targets + 1
                f.write(json.dumps({"prompt": prompt, "completion": target + "<|endoftext|>"}) + "\n")
        rows.append(f"{name}.jsonl\tds{k // 6:03d}\ttemplate_{k % 6}\t{ttype}\t{n}\t{empty_targets}")
    (folder / "t0_train_manifest.tsv").write_text("\n".join(rows) + "\n")
    stamp.write_text(json.dumps(spec))


def load_phase(args: argparse.Namespace) -> dict:
    """One process: open (or build) the cache, then sample; figures as a dict."""
    import psutil  # an Accelerate dependency
    startup_s = time.time() - psutil.Process().create_time()  # interpreter and imports of `ctr`
    from transformers import AutoConfig, AutoTokenizer

    from ctr.core.backbone import prepare_tokenizer, resolve_model_path
    from ctr.core.prompt_format import PromptEncoder, PromptFormat
    from ctr.tasks.arrow_data import open_raw, t0_spec
    from ctr.train.batching import MixtureSampler, collate
    from ctr.train.dataset_cache import open_ids
    t_tok = time.perf_counter()
    path = resolve_model_path(args.model)
    tok = prepare_tokenizer(AutoTokenizer.from_pretrained(path))
    seq2seq = bool(getattr(AutoConfig.from_pretrained(path), "is_encoder_decoder", False))
    encoder = PromptEncoder(tok, PromptFormat(), seq2seq)
    tokenizer_s = time.perf_counter() - t_tok
    t0 = time.perf_counter()
    raw = open_raw(t0_spec(args.folder, None), args.cache, args.workers)
    tasks, report = raw.select()
    rows = open_ids(raw, tasks, encoder, args.max_source_len, args.max_target_len, args.cache,
                    args.workers, progress=False)
    load_s = time.perf_counter() - t0
    out = {"load_s": round(load_s, 3), "built": raw.built_s is not None or rows.built_s is not None,
           "startup_s": round(startup_s, 3), "tokenizer_s": round(tokenizer_s, 3),
           "examples": int(sum(rows.sizes)), "tasks": len(tasks), "report": report.summary(),
           "id_dtype": rows.meta["dtype"]}
    if args.batches:
        sampler = MixtureSampler(rows.sizes, "proportional", 50000, seed=0)
        t1, tokens = time.perf_counter(), 0
        for step in range(args.batches):
            batch = rows.rows(sampler.batch(step, args.batch_size))
            if args.collate:  # the trainer's padding into tensors (not data loading: optional)
                tokens += int(collate(batch, tok.pad_token_id, seq2seq)["attention_mask"].sum())
            else:
                tokens += sum(len(r.source) + len(r.target) for r in batch)
        out.update(sample_s=round(time.perf_counter() - t1, 3), sampled_tokens=tokens)
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return out


def _child(args: argparse.Namespace, batches: int) -> dict:
    if args.in_process:  # tests: no fresh process (the timings and peak memory mean less)
        return load_phase(argparse.Namespace(**{**vars(args), "batches": batches}))
    cmd = [sys.executable, "-m", "ctr.bench.data", "--phase", "load", "--folder", str(args.folder),
           "--cache", str(args.cache), "--model", args.model, "--workers", str(args.workers),
           "--batches", str(batches), "--batch-size", str(args.batch_size),
           *(["--collate"] if args.collate else []),
           "--max-source-len", str(args.max_source_len), "--max-target-len", str(args.max_target_len)]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["process_s"] = round(time.perf_counter() - t0, 3)
    return result


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--examples", type=int, default=1_000_000)
    ap.add_argument("--task-files", type=int, default=300)
    ap.add_argument("--folder", type=Path, default=None, help="data folder (kept); default: a temp folder")
    ap.add_argument("--cache", type=Path, default=None, help="cache folder (emptied first); default: in the data folder")
    ap.add_argument("--model", default="smollm2", help="whose tokenizer (default: the SmolLM2 backbone's)")
    ap.add_argument("--workers", type=int, default=1, help="processes reading and tokenising")
    ap.add_argument("--batches", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=2048, help="rows per global batch (paper: 2048)")
    ap.add_argument("--words", type=int, nargs=2, default=(20, 120), metavar=("MIN", "MAX"),
                    help="prompt length in words, uniform (default: ~410 characters on average, the real T0 sample's median; its mean is ~980)")
    ap.add_argument("--collate", action="store_true", help="also pad each batch into tensors")
    ap.add_argument("--max-source-len", type=int, default=384)
    ap.add_argument("--max-target-len", type=int, default=32)
    ap.add_argument("--out", default=None, help="also write the figures as JSON here")
    ap.add_argument("--in-process", action="store_true", help="both loads in this process (tests)")
    ap.add_argument("--phase", choices=["all", "load"], default="all", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.phase == "load":
        print(json.dumps(load_phase(args)))
        return
    tmp = None
    if args.folder is None:
        tmp = tempfile.TemporaryDirectory(prefix="ctr_bench_data_")
        args.folder = Path(tmp.name)
    args.folder = args.folder.resolve()
    args.cache = (args.cache or args.folder / "cache").resolve()
    try:
        t0 = time.perf_counter()
        make_folder(args.folder, args.examples, args.task_files, tuple(args.words))
        write_s = time.perf_counter() - t0
        shutil.rmtree(args.cache, ignore_errors=True)
        first = _child(args, batches=0)
        second = _child(args, batches=args.batches)
        if not first["built"] or second["built"]:
            raise RuntimeError("the first load should build the cache and the second reuse it")
        result = {"examples": args.examples, "kept_examples": second["examples"], "task_files": args.task_files,
                  "build_s": first["load_s"], "cached_load_s": second["load_s"],
                  "peak_rss_mb": second["peak_rss_mb"], "write_folder_s": round(write_s, 3),
                  "first": first, "second": second, "model": args.model, "workers": args.workers,
                  "batches": args.batches, "batch_size": args.batch_size, "words": list(args.words),
                  "collate": args.collate, "data_mb": round(sum(
                      f.stat().st_size for f in (args.folder / "t0_train").iterdir()) / 2**20, 1),
                  "cache_mb": round(sum(f.stat().st_size for f in args.cache.rglob("*") if f.is_file()) / 2**20, 1),
                  "cpu": platform.processor() or platform.machine()}
        from ctr.provenance import provenance
        result["provenance"] = provenance()
    finally:
        if tmp is not None:
            tmp.cleanup()
    emit(result, args.out)
    print(f"examples={result['examples']} build_s={result['build_s']:.2f} "
          f"cached_load_s={result['cached_load_s']:.2f} peak_rss_mb={result['peak_rss_mb']:.0f}")


if __name__ == "__main__":
    main()
