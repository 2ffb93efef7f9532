"""lm-evaluation-harness with the `ctr` model, offline on the toy tasks beside this file
(ctr_toy_*.yaml over ctr_toy.json): its log-likelihoods are RankScorer's, its generations
generate_ids_with_codes', and with no code it agrees with lm-eval's own `hf` model."""
from __future__ import annotations

import json
import os
import runpy
import sys
from pathlib import Path

import pytest
import torch

if os.environ.get("CTR_REQUIRE_LM_EVAL"):  # `make test` installs the extra: missing is a failure
    import lm_eval  # noqa: F401
else:
    pytest.importorskip("lm_eval")
from lm_eval import simple_evaluate
from lm_eval.api.registry import get_model
from lm_eval.tasks import TaskManager

from ctr.config import CTRConfig
from ctr.core.backbone import load_backbone
from ctr.core.model import CTRModel
from ctr.inference.generation import generate_ids_with_codes
from ctr.inference.scoring import RankScorer, ScoreRequest, tokenize_request
from ctr.interop.lm_eval_model import CTRLM, parse_lm_code

HERE = Path(__file__).parent
ATOL = 1e-5


@pytest.fixture(scope="module")
def task_manager() -> TaskManager:
    return TaskManager(include_path=str(HERE))


@pytest.fixture(scope="module")
def checkpoints(tiny_paths, tmp_path_factory) -> dict[str, tuple[Path, CTRModel]]:
    out = {}
    for arch in ("llama", "t5"):
        path = tmp_path_factory.mktemp("lm_eval") / arch
        backbone, tok = load_backbone(str(tiny_paths[arch]))
        torch.manual_seed(3)
        # the CPU presets' prompt path: code values start as token embeddings (the paper's
        # uniform(-12.5, 12.5) init makes the tiny model's log-likelihoods ~ -60 nats)
        CTRModel(backbone, CTRConfig(task_names=["a", "b"], code_length=3, codebook_size=8,
                                     codebook_init="vocab", decoder_init="identity",
                                     backbone=str(tiny_paths[arch])), tok).save_pretrained(path)
        out[arch] = (path, CTRModel.from_pretrained(path).eval())
    return out


def run(task_manager, tasks, model="ctr", **model_args) -> dict[str, list[dict]]:
    res = simple_evaluate(model=model, model_args=model_args, tasks=tasks, task_manager=task_manager,
                          log_samples=True, batch_size=4)
    return res["samples"]


def harness_ids(model: CTRModel, ctx: str, cont: str) -> tuple[list[int], list[int]]:
    """Context and continuation ids the way lm-eval's hf model makes them (written out
    here, not taken from the code under test)."""
    tok = model.tokenizer
    n = len(ctx) - len(ctx.rstrip())
    if n:
        ctx, cont = ctx[:-n], ctx[-n:] + cont
    if model.seq2seq:
        return tok.encode(ctx), tok.encode(cont, add_special_tokens=False)
    c = tok.encode(ctx)
    return c, tok.encode(ctx + cont)[len(c):]


@pytest.mark.parametrize("arch", ["llama", "t5"])
def test_loglikelihoods_equal_the_rank_scorer_in_both_prompt_formats(arch, checkpoints, task_manager):
    """The reference is RankScorer on the task's requests as `ctr eval` makes them (one
    request per document, all its choices), in lm-eval's batch size."""
    path, model = checkpoints[arch]
    code = model.code_table()["b"]
    scorer = RankScorer(model, batch_size=4, progress=False)
    for fmt in ("harness", "ctr"):
        samples = run(task_manager, ["ctr_toy_choice"], checkpoint=str(path), task="b",
                      prompt_format=fmt)["ctr_toy_choice"]
        assert len(samples) == 6
        requests = []
        for s in sorted(samples, key=lambda s: s["doc_id"]):
            ctx, conts = s["arguments"][0][0], [a[1] for a in s["arguments"]]
            if fmt == "harness":  # ids as lm-eval's hf model makes them
                pairs = [harness_ids(model, ctx, c) for c in conts]
                assert all(c == pairs[0][0] for c, _ in pairs)
                requests.append(ScoreRequest(pairs[0][0], [t for _, t in pairs], code))
            else:  # the checkpoint's own prompt format: exactly ctr eval's request
                requests.append(tokenize_request(model, ctx, conts, code=code))
        want = scorer.score(requests)
        for s, w in zip(sorted(samples, key=lambda s: s["doc_id"]), want):
            got = [r[0] for r in s["resps"]]  # [(loglikelihood, is_greedy)] per choice
            assert [g[0] for g in got] == pytest.approx(w.logprob, abs=ATOL), fmt
            assert [g[1] for g in got] == w.greedy, fmt


@pytest.mark.parametrize("arch", ["llama", "t5"])
def test_without_a_code_it_is_lm_evals_own_hf_model(arch, checkpoints, task_manager, tiny_paths):
    path, _ = checkpoints[arch]
    ours = run(task_manager, ["ctr_toy_choice"], checkpoint=str(path))["ctr_toy_choice"]
    hf = run(task_manager, ["ctr_toy_choice"], model="hf", pretrained=str(tiny_paths[arch]),
             device="cpu")["ctr_toy_choice"]
    for a, b in zip(ours, hf):
        assert a["arguments"] == b["arguments"]
        assert [r[0][0] for r in a["resps"]] == pytest.approx([r[0][0] for r in b["resps"]],
                                                              rel=1e-6, abs=ATOL)


def test_generation_and_rolling_loglikelihood(checkpoints, task_manager):
    path, model = checkpoints["llama"]
    code = model.code_table()["a"]
    samples = run(task_manager, ["ctr_toy_gen", "ctr_toy_rolling"], checkpoint=str(path), task="a")
    tok = model.tokenizer
    texts = []
    for s in samples["ctr_toy_gen"]:
        ctx, kwargs = s["arguments"][0]
        new = generate_ids_with_codes(model, [tok.encode(ctx)], code, max_new_tokens=kwargs["max_gen_toks"])
        texts.append(tok.decode(new[0], skip_special_tokens=True).split("\n")[0])
        assert s["resps"][0][0] == texts[-1]
    assert any(texts)
    scorer = RankScorer(model, batch_size=1, progress=False)
    for s in samples["ctr_toy_rolling"]:
        text = s["arguments"][0][0]
        ids = tok.encode(text, add_special_tokens=False)  # one window: BOS, then the text
        want = scorer.score([ScoreRequest([tok.bos_token_id], [ids], code)])[0]
        assert s["resps"][0][0] == pytest.approx(want.logprob[0], abs=ATOL)


@pytest.mark.filterwarnings("ignore:'ctr.interop.lm_eval_model' found in sys.modules:RuntimeWarning")
def test_the_command_line_wrapper_registers_ctr(checkpoints, task_manager, tmp_path, monkeypatch):
    """`python -m ctr.interop.lm_eval_model ...` is lm-eval's CLI with `ctr` registered; a
    code may be given as a list on that command line."""
    path, model = checkpoints["llama"]
    code = model.code_table()["b"]
    argv = ["python -m ctr.interop.lm_eval_model", "--model", "ctr", "--model_args",
            f"checkpoint={path},code=[{','.join(map(str, code))}]", "--tasks", "ctr_toy_choice",
            "--include_path", str(HERE), "--output_path", str(tmp_path), "--log_samples",
            "--device", "cpu"]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_module("ctr.interop.lm_eval_model", run_name="__main__")
    files = list(tmp_path.rglob("samples_ctr_toy_choice_*.jsonl"))
    assert len(files) == 1
    cli = [json.loads(line) for line in files[0].read_text().splitlines()]
    api = run(task_manager, ["ctr_toy_choice"], checkpoint=str(path), task="b")["ctr_toy_choice"]
    for a, b in zip(cli, api):
        assert [float(r[0][0]) for r in a["resps"]] == pytest.approx([r[0][0] for r in b["resps"]], abs=ATOL)
    assert get_model("ctr") is CTRLM and get_model("hf").__name__ == "HFLM"  # lm-eval's own still there


def test_bad_model_args_are_clear_errors(checkpoints):
    path, _ = checkpoints["llama"]
    with pytest.raises(ValueError, match="task 'zzz': not in the code table"):
        CTRLM(checkpoint=str(path), task="zzz")
    with pytest.raises(ValueError, match=r"model_args code=1:2: expected 3 integers in \[0, 8\)"):
        CTRLM(checkpoint=str(path), code="1:2")
    with pytest.raises(ValueError, match=r"unknown model_args \['17', 'pretrained'\]"):
        CTRLM(checkpoint=str(path), pretrained="x", **{"17": ""})
    with pytest.raises(ValueError, match="prompt_format='chat': must be harness or ctr"):
        CTRLM(checkpoint=str(path), prompt_format="chat")
    with pytest.raises(ValueError, match="pass task= or code=, not both"):
        CTRLM(checkpoint=str(path), task="a", code="1:2:3")
    assert parse_lm_code("3:1:4") == parse_lm_code("[3, 1, 4]") == parse_lm_code([3, 1, 4]) == [3, 1, 4]
