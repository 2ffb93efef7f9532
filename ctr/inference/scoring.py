"""Rank classification: log-likelihood of every answer choice given the input.

Each input is processed once and all its choices are scored from it:
- seq2seq: one encoder pass per input; the decoder runs on (input, choice) pairs over the
  shared encoder states.
- decoder-only: one pass over the input that keeps its KV cache; the choices continue
  from that cache (rows repeated per choice), and the LM head runs on choice tokens only.
Requests are sorted by input length before batching, so a batch holds inputs of about
one length (codes x shots of a search: the same shot under many codes) and little padding;
the batch size halves on out-of-memory and retries.
Every request may carry its own code, so one batch can mix tasks.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ctr.core.adapter import IGNORE, cache_kwarg  # noqa: F401  (cache_kwarg re-exported: it was defined here)
from ctr.core.model import CTRModel
from ctr.core.prompt_format import PromptEncoder


@dataclass
class ScoreRequest:
    input_ids: list[int]
    choices: list[list[int]]  # token ids of each answer choice (non-empty)
    code: list[int] | None = None  # this request's code (CTR models with codes)


@dataclass
class ChoiceScores:
    logprob: list[float]  # summed log-likelihood of each choice's tokens
    tokens: list[int] = field(default_factory=list)
    greedy: list[bool] = field(default_factory=list)  # every token the argmax (lm-eval's is_greedy)

    @property
    def mean_logprob(self) -> list[float]:
        return [lp / max(n, 1) for lp, n in zip(self.logprob, self.tokens)]

    def prediction(self, normalised: bool = False) -> int:
        scores = self.mean_logprob if normalised else self.logprob
        return max(range(len(scores)), key=scores.__getitem__)


def tokenize_request(model: CTRModel, input_text: str, choices: list[str],
                     max_input_len: int = 1024, code: list[int] | None = None) -> ScoreRequest:
    """A request whose ids are exactly what training saw for (input, choice): the model's
    prompt format (`ctr.core.prompt_format`), read from its checkpoint config (a decoder-only
    choice is scored without the EOS training appends to it)."""
    src, outs = PromptEncoder.for_model(model).pair(input_text, list(choices), max_input_len,
                                                    scoring=True)
    if any(len(o) == 0 for o in outs):
        raise ValueError(f"an answer choice tokenises to nothing: {choices!r}")
    return ScoreRequest(src, outs, code)


class RankScorer:
    def __init__(self, model: CTRModel, batch_size: int = 16, progress: bool = True,
                 prompt: torch.Tensor | None = None):
        self.model = model
        self.batch_size = batch_size
        self.progress = progress
        self.prompt = prompt  # a continuous prompt [P, H] for every request (prompt tuning)

    @torch.no_grad()
    def score(self, requests: list[ScoreRequest]) -> list[ChoiceScores]:
        self.model.eval()
        order = sorted(range(len(requests)), key=lambda i: -len(requests[i].input_ids))
        results: list[ChoiceScores | None] = [None] * len(requests)
        bar = tqdm(total=len(requests), desc="scoring", disable=not self.progress, leave=False)
        start = 0
        while start < len(order):
            idx = order[start:start + self.batch_size]
            try:
                scored = self._score_batch([requests[i] for i in idx])
            except torch.OutOfMemoryError:
                if self.batch_size == 1:
                    raise
                self.batch_size //= 2  # adapt to memory, then retry the same rows
                continue
            for i, s in zip(idx, scored):
                results[i] = s
            start += len(idx)
            bar.update(len(idx))
        bar.close()
        return results  # type: ignore[return-value]

    def _codes(self, batch: list[ScoreRequest]) -> torch.Tensor | None:
        if not self.model.config.use_codes or self.prompt is not None:
            if any(r.code is not None for r in batch):
                raise ValueError("codes given for a model without codes (or with a prompt)")
            return None
        if any(r.code is None for r in batch):
            raise ValueError("this CTR model needs a code for every request")
        return torch.tensor([r.code for r in batch], dtype=torch.long)

    def _score_batch(self, batch: list[ScoreRequest]) -> list[ChoiceScores]:
        m = self.model
        dev = m.device
        width = max(len(r.input_ids) for r in batch)
        ids = torch.zeros(len(batch), width, dtype=torch.long)
        mask = torch.zeros(len(batch), width, dtype=torch.long)
        for i, r in enumerate(batch):
            ids[i, :len(r.input_ids)] = torch.tensor(r.input_ids)
            mask[i, :len(r.input_ids)] = 1
        codes = self._codes(batch)
        pair_row = torch.tensor([i for i, r in enumerate(batch) for _ in r.choices], device=dev)
        choices = [c for r in batch for c in r.choices]
        cwidth = max(len(c) for c in choices)
        cids = torch.full((len(choices), cwidth), IGNORE, dtype=torch.long)
        for j, c in enumerate(choices):
            cids[j, :len(c)] = torch.tensor(c)
        cids = cids.to(dev)
        cmask = cids != IGNORE
        # inputs padded where the adapter continues from them; then each choice's logits
        x = m.embed_inputs(ids.to(dev), mask.to(dev), codes=codes, pad_side=m.adapter.pad_side,
                           prompt=self.prompt)
        token_logits = m.adapter.choice_logits(m, x, cids, cmask, pair_row)  # [choice tokens, V]
        logp = F.log_softmax(token_logits.float(), -1).gather(1, cids[cmask][:, None]).squeeze(1)
        rows = cmask.nonzero()[:, 0]
        per_choice = torch.zeros(len(choices), device=dev).index_add(0, rows, logp).tolist()
        counts = cmask.sum(1).tolist()
        missed = (token_logits.argmax(-1) != cids[cmask]).float()
        greedy = (torch.zeros(len(choices), device=dev).index_add(0, rows, missed) == 0).tolist()
        out_scores, k = [], 0
        for r in batch:
            n = len(r.choices)
            out_scores.append(ChoiceScores(per_choice[k:k + n], counts[k:k + n], greedy[k:k + n]))
            k += n
        return out_scores
