"""lm-evaluation-harness model `ctr`: a CTR checkpoint under one code, on any lm-eval task.

    pip install -e '.[lm-eval]'
    python -m ctr.interop.lm_eval_model --model ctr \\
        --model_args checkpoint=runs/s1,task=NAME --tasks TASK [--include_path DIR]

model_args:
- `checkpoint`: a run folder, final/, a model folder, or a bare backbone (default smollm2);
- the code: `task=NAME` (a training task of the code table), `code=3:17:5:...` (also
  `code=[3,17,5,...]` on lm-eval's command line; a model_args string splits on commas), or
  `codes_file=F,task=T` (ctr zero-label / few-shot); none of them: the backbone alone, no
  soft prompt (stage 2: the fine-tuned backbone);
- `prompt_format`: `harness` (default) tokenizes context and continuation as lm-eval's `hf`
  model does, so with no code the numbers equal `--model hf` on the same backbone; `ctr`
  writes them in the checkpoint's own prompt format (`ctr.core.prompt_format`: the
  context stripped, the training delimiter, the continuation stripped), the token
  sequence the code was trained and selected on;
- `batch_size` (inputs per scoring batch), `max_length`, `max_gen_toks`, `device`.

`loglikelihood` goes through `RankScorer`: requests that share a context become one
scoring request, so each context is read once for all of its continuations (one encoder
pass, or one KV cache). `generate_until` goes through `generate_ids_with_codes`.

Registration: importing this module registers `ctr` in lm-eval's model registry
(`lm_eval.api.registry.register_model`). lm-eval 0.4 finds models only in that registry
(its own `lm_eval.models.MODEL_MAPPING` plus whatever was imported); it reads no
package entry points, so the plain `lm_eval` console script cannot know `ctr`.
`python -m ctr.interop.lm_eval_model ARGS` is lm-eval's own command line with `ctr`
registered first (every lm-eval flag works); from Python, import this module and call
`lm_eval.simple_evaluate(model="ctr", model_args={...})`.
"""
from __future__ import annotations

import json
import logging
import re
import sys
from collections import defaultdict
from enum import Enum
from typing import Any

import torch

from ctr.config import CTRConfig
from ctr.core.codes import code_for_task, read_codes_file, validate_code
from ctr.core.loading import load_model
from ctr.core.model import CTRModel
from ctr.inference.generation import encode_texts, generate_ids_with_codes
from ctr.inference.scoring import RankScorer, ScoreRequest, tokenize_request
from ctr.interop.families import family_of

try:
    # lm_eval.models registers lm-eval's own models; its registry is filled lazily only while
    # empty, so they must be in it before `ctr` is (or `--model hf` would stop working)
    import lm_eval.models  # noqa: F401
    from lm_eval.api.model import TemplateLM
    from lm_eval.api.registry import register_model
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError("ctr.interop.lm_eval_model needs lm-evaluation-harness: "
                      "pip install -e '.[lm-eval]' (or pip install 'lm-eval>=0.4')") from e

log = logging.getLogger(__name__)
DEFAULT_MAX_LENGTH = 2048  # as lm-eval's hf model, for backbones that state none
ARGS = ("checkpoint", "task", "code", "codes_file", "prompt_format", "batch_size", "max_length",
        "max_gen_toks", "device", "max_batch_size")


class PromptFormat(str, Enum):
    HARNESS = "harness"  # lm-eval's tokenization (as its `hf` model)
    CTR = "ctr"  # the checkpoint's prompt format (ctr.core.prompt_format)


def parse_lm_code(code: Any) -> list[int]:
    """A code as model_args give it: [3, 17, 5], 5, or a string '3:17:5' / '3 17 5'."""
    if isinstance(code, bool):
        raise ValueError(f"model_args code={code!r}: expected integers like code=3:17:5")
    if isinstance(code, int):
        return [code]
    if isinstance(code, (list, tuple)):
        return list(code)
    parts = [p for p in re.split(r"[\s,:;/|]+", str(code).strip("[]() ")) if p]
    try:
        return [int(p) for p in parts]
    except ValueError:
        raise ValueError(f"model_args code={code!r}: expected integers like code=3:17:5 "
                         "(or code=[3,17,5] on lm-eval's command line)") from None


def resolve_lm_code(model: CTRModel, task: str | None, code: Any, codes_file: str | None,
                    where: str) -> list[int] | None:
    """The code model_args ask for, or None for the backbone alone."""
    if codes_file and task is None:
        raise ValueError(f"model_args codes_file={codes_file} needs task=T: the task of the file "
                         "whose code to use")
    if task is None and code is None:
        return None
    if task is not None and code is not None:
        raise ValueError("model_args: pass task= or code=, not both")
    if not model.config.use_codes:
        raise ValueError(f"model_args task=/code= given, but checkpoint={where} has no codes "
                         "(use_codes=false): leave them out")
    L, K = model.config.code_length, model.config.codebook_size
    if code is not None:
        return validate_code(parse_lm_code(code), L, K, f"model_args code={code}")
    if codes_file:
        table, src = read_codes_file(codes_file, "model_args codes_file=")[0], f"codes_file={codes_file}"
    else:
        table = model.code_table()
        src = f"the code table of checkpoint={where} (an adapted code: codes_file=F,task=T)"
    return validate_code(code_for_task(table, str(task), src), L, K, f"model_args task={task}")


def without_codes(model: CTRModel) -> CTRModel:
    """The same backbone and prompt format with no soft prompt (its bare-backbone run)."""
    c = model.config
    cfg = CTRConfig(use_codes=False, backbone=c.backbone, backbone_trained=c.backbone_trained,
                    target_delimiter=c.target_delimiter, target_eos=c.target_eos)
    return CTRModel(model.backbone, cfg, model.tokenizer)


def _batch_size(value: Any) -> int:
    if value is None or str(value).startswith("auto"):
        return 16  # the scorer halves it on out-of-memory by itself
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"batch_size={value!r}: expected an integer") from None
    if n < 1:
        raise ValueError(f"batch_size={value!r}: must be >= 1")
    return n


class CTRLM(TemplateLM):
    """lm-eval's view of a CTRModel under one code (see the module docstring)."""

    def __init__(self, checkpoint: str = "smollm2", task: str | None = None, code: Any = None,
                 codes_file: str | None = None, prompt_format: str = "harness",
                 batch_size: Any = 16, max_length: int | None = None, max_gen_toks: int = 256,
                 device: str | None = None, max_batch_size: Any = None, **unknown: Any) -> None:
        super().__init__()
        if unknown:
            raise ValueError(f"ctr model: unknown model_args {sorted(unknown)}; accepted: "
                             f"{', '.join(ARGS)} (in a model_args string write a code as "
                             "code=3:17:5: commas separate the arguments)")
        try:
            self.prompt_format = PromptFormat(prompt_format)
        except ValueError:
            raise ValueError(f"model_args prompt_format={prompt_format!r}: must be "
                             f"{' or '.join(p.value for p in PromptFormat)}") from None
        model = load_model(str(checkpoint), "model_args checkpoint=")
        if device:  # lm-eval asks for cuda:0 by default; without a GPU, stay where ctr put it
            dev = torch.device(device)
            if dev.type == "cuda" and not torch.cuda.is_available():
                log.info("ctr: --device %s asked for, but there is no GPU: running on %s",
                         device, model.device)
            else:
                model.to(dev)
        self.code = resolve_lm_code(model, task, code, codes_file, str(checkpoint))
        if self.code is None and model.config.use_codes:
            log.info("ctr: no task= or code= given: the backbone runs without a soft prompt")
            model = without_codes(model)
        self.model = model.eval()
        if model.tokenizer is None:
            raise ValueError(f"checkpoint={checkpoint}: the model has no tokenizer")
        self.tokenizer = model.tokenizer
        self.family = family_of(model.adapter)
        self.backend = self.family.lm_eval_backend  # how TemplateLM splits context / continuation
        self._device = model.device
        self.batch_size = _batch_size(batch_size)
        self.max_gen_toks = int(max_gen_toks)
        cfg = model.backbone.config
        self._max_length = int(max_length or getattr(cfg, "max_position_embeddings", None)
                               or getattr(cfg, "n_positions", None) or DEFAULT_MAX_LENGTH)
        self.scorer = RankScorer(model, self.batch_size, progress=False)

    # ---- tokens --------------------------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        bos = self.tokenizer.bos_token_id
        return bos if bos is not None else self.tokenizer.eos_token_id

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def prompt_len(self) -> int:
        return self.model.config.code_length if self.code is not None else 0

    def tok_encode(self, string: str, add_special_tokens: bool | None = None,
                   left_truncate_len: int | None = None, **kwargs: Any) -> list[int]:
        """As lm-eval's hf model: the tokenizer's own special tokens unless told otherwise,
        and none added to a string that starts with BOS already."""
        kw: dict[str, Any] = {} if add_special_tokens is None else {"add_special_tokens": add_special_tokens}
        bos = self.tokenizer.bos_token
        if add_special_tokens is None and bos and string.startswith(bos):
            kw["add_special_tokens"] = False
        ids = list(self.tokenizer.encode(string, **kw))
        return ids[-left_truncate_len:] if left_truncate_len else ids

    def tok_decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    def _fit_context(self, ctx: list[int], n_new: int) -> list[int]:
        """The context cut from the left so that the prompt, the context and (decoder-only)
        the new tokens fit in max_length."""
        room = self.max_length - self.prompt_len - n_new * self.family.continuation_in_window
        return ctx[-max(1, room):] or [self.prefix_token_id]

    # ---- log-likelihoods -----------------------------------------------------------
    def _score_pairs(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """(log-likelihood, greedy) of each (context ids, continuation ids); pairs that share
        a context are one scoring request, read once for all their continuations."""
        requests: list[ScoreRequest] = []
        by_context: dict[tuple[int, ...], int] = {}
        where: list[tuple[int, int] | None] = []
        for ctx, cont in pairs:
            if not cont:  # nothing to score
                where.append(None)
                continue
            key = tuple(self._fit_context(list(ctx), len(cont)))
            if key not in by_context:
                by_context[key] = len(requests)
                requests.append(ScoreRequest(list(key), [], self.code))
            r = by_context[key]
            where.append((r, len(requests[r].choices)))
            requests[r].choices.append(list(cont))
        scores = self.scorer.score(requests)
        return [(0.0, True) if w is None else (scores[w[0]].logprob[w[1]], scores[w[0]].greedy[w[1]])
                for w in where]

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs: Any
                              ) -> list[tuple[float, bool]]:
        out = self._score_pairs([(ctx, cont) for _, ctx, cont in requests])
        for (key, _, _), res in zip(requests, out):
            if key is not None:
                self.cache_hook.add_partial("loglikelihood", key, res)
        return out

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        if self.prompt_format is PromptFormat.HARNESS:
            return super().loglikelihood(requests, disable_tqdm)
        pairs = []
        for ctx, cont in (r.args for r in requests):  # the checkpoint's own prompt format
            if not cont.strip():
                pairs.append(([], []))
                continue
            req = tokenize_request(self.model, ctx, [cont], self.max_length)
            pairs.append((req.input_ids, req.choices[0]))
        return self._loglikelihood_tokens([(r.args, c, t) for r, (c, t) in zip(requests, pairs)])

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        pairs, owner = [], []
        for i, req in enumerate(requests):
            tokens = self.tok_encode(req.args[0], add_special_tokens=False)
            for ctx, cont in map(make_disjoint_window, get_rolling_token_windows(
                    token_list=tokens, prefix_token=self.prefix_token_id,
                    max_seq_len=max(1, self.max_length - self.prompt_len), context_len=1)):
                pairs.append((ctx, cont))
                owner.append(i)
        totals = [0.0] * len(requests)
        for i, (ll, _) in zip(owner, self._score_pairs(pairs)):
            totals[i] += ll
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    # ---- generation ----------------------------------------------------------------
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        out: list[str] = [""] * len(requests)
        groups: dict[str, list[int]] = defaultdict(list)
        for i, req in enumerate(requests):
            groups[json.dumps(req.args[1], sort_keys=True, default=str)].append(i)
        for idx in groups.values():
            kwargs = dict(requests[idx[0]].args[1])
            until = kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(kwargs.pop("max_gen_toks", self.max_gen_toks))
            temperature = float(kwargs.pop("temperature", 1.0))
            do_sample = bool(kwargs.pop("do_sample", False)) and temperature > 0
            top_p = float(kwargs.pop("top_p", 1.0) or 1.0)
            if kwargs:
                log.warning("ctr: gen_kwargs %s are not used (until, max_gen_toks, do_sample, "
                            "temperature and top_p are)", sorted(kwargs))
            contexts = [requests[i].args[0] for i in idx]
            if self.prompt_format is PromptFormat.CTR:
                room = self.max_length - self.prompt_len - max_new * self.family.continuation_in_window
                ids = encode_texts(self.model, contexts, max(1, room))
            else:
                ids = [self._fit_context(self.tok_encode(c), max_new) for c in contexts]
            new = generate_ids_with_codes(self.model, ids, self.code, max_new_tokens=max_new,
                                          do_sample=do_sample, temperature=temperature or 1.0,
                                          top_p=top_p, batch_size=self.batch_size)
            for i, tokens in zip(idx, new):
                text = self.tok_decode(tokens)
                for stop in until:
                    if stop:
                        text = text.split(stop)[0]
                out[i] = text
                self.cache_hook.add_partial("generate_until", requests[i].args, text)
        return out


if __name__ != "__main__":  # run as a script, main() imports the module, which registers it
    register_model("ctr")(CTRLM)


def main(argv: list[str] | None = None) -> None:
    """lm-eval's command line (`lm-eval run ...`) with the `ctr` model registered."""
    from lm_eval.__main__ import cli_evaluate

    import ctr.interop.lm_eval_model  # noqa: F401  (registers `ctr` when run as __main__)

    if argv is not None:
        sys.argv = ["lm-eval", *argv]
    cli_evaluate()


if __name__ == "__main__":
    main()
