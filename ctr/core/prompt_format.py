"""The one place where an input text and a target text become token ids.

Training (`batching.encode_tasks`), rank scoring (`scoring.tokenize_request`), Bitwise
Search and prompt tuning (through the scorer's requests) and generation
(`generation.encode_texts`) all go through `PromptEncoder`, and its rule is stored in the
checkpoint's `CTRConfig` (`target_delimiter`, `target_eos`), so a code is selected and
evaluated on exactly the token sequence it was trained on.

The rule, for an input `x` and a target `y` (a training target or an answer choice):
- whitespace at the end of `x` and at the start of `y` is dropped, and `x`, the delimiter
  and `y` are joined: T0's training prompts end in "\\n" and their targets follow with no
  space, so the default delimiter "\\n" reproduces them exactly, and a PromptSource input
  (rendered stripped) gets the same boundary;
- seq2seq: `x` and `y` are separate sequences, each ending with EOS (as T0 trains and
  scores); the delimiter plays no part;
- decoder-only: the joined text is tokenised once and cut where the input's tokens end, so
  no boundary token appears that the joined text would not have. The delimiter's tokens
  belong to the input when they tokenise the same in front of any target ("\\n" in
  byte-level BPE and SentencePiece), else to the target (" ", which BPE merges into the
  next word: " negative" is one token); `y` ends with EOS when `target_eos`.
- scoring (rank classification) uses these very ids; a decoder-only answer is scored on
  its own tokens, without the EOS training appends (as lm-evaluation-harness scores):
  an instruct LM's end-of-turn probability after a short answer says little about the
  answer (SmolLM2 on AG News, 50 examples x 2 templates: 56% without it, 24% with it;
  results/prompt_format/cpu/). Seq2seq choices keep their EOS, as T0 scores them.
A target whose joined tokens do not start with the input's tokens (a merge across the
boundary) is tokenised on its own after the input, so the input is the same for every
choice and training and scoring still agree.
"""
from __future__ import annotations

from dataclasses import dataclass

from ctr.core.adapter import BackboneAdapter, adapter_for, token_ids as _ids

DEFAULT_DELIMITER = "\n"


@dataclass(frozen=True)
class PromptFormat:
    """How an input and a target are joined (saved in every CTR checkpoint's config)."""

    delimiter: str = DEFAULT_DELIMITER
    target_eos: bool = True

    @classmethod
    def of(cls, config) -> "PromptFormat":
        """The format recorded in a `CTRConfig`."""
        return cls(config.target_delimiter, config.target_eos)


class PromptEncoder:
    """Token ids of inputs and (input, targets) pairs under one `PromptFormat`."""

    def __init__(self, tokenizer, fmt: PromptFormat, seq2seq: bool | BackboneAdapter):
        """`seq2seq`: the backbone's adapter (`CTRModel.adapter`), or the older flag."""
        if tokenizer is None:
            raise ValueError("text inputs need a tokenizer: the model has none (pass token ids)")
        self.tokenizer, self.fmt, self.adapter = tokenizer, fmt, adapter_for(seq2seq)
        self.seq2seq = self.adapter.seq2seq
        self.eos = tokenizer.eos_token_id
        # what the delimiter adds after the input and before each target (seq2seq: nothing)
        self.source_suffix, self.target_prefix = self.adapter.delimiter_split(tokenizer, fmt.delimiter)
        self.delimiter_in_source = not self.target_prefix  # the delimiter ends the input

    @classmethod
    def for_model(cls, model) -> "PromptEncoder":
        return cls(model.tokenizer, PromptFormat.of(model.config), model.adapter)

    # ---- texts ---------------------------------------------------------------------
    def source_text(self, source: str) -> str:
        return source.rstrip() + self.source_suffix

    def target_text(self, target: str) -> str:
        return self.target_prefix + target.lstrip()

    # ---- ids -----------------------------------------------------------------------
    def _truncate_source(self, ids: list[int], max_len: int | None) -> list[int]:
        """Keep the end of the input (the question sits there in most T0 prompts)."""
        return self.adapter.finish_source(ids, max_len, self.eos)

    def _finish_target(self, ids: list[int], max_len: int | None, scoring: bool = False) -> list[int]:
        return self.adapter.finish_target(ids, max_len, self.eos, self.fmt.target_eos, scoring)

    def sources(self, texts: list[str], max_len: int | None = None) -> list[list[int]]:
        """Input ids as training saw its inputs (what generation continues from)."""
        return [self._truncate_source(s, max_len) for s in _ids(self.tokenizer, [self.source_text(t) for t in texts])]

    def pairs(self, sources: list[str], targets: list[list[str]], max_source_len: int | None = None,
              max_target_len: int | None = None, scoring: bool = False
              ) -> list[tuple[list[int], list[list[int]]]]:
        """(input ids, [target ids]) for each input and its targets (one training target,
        or every answer choice). The input ids do not depend on the targets. `scoring`:
        the ids rank classification scores (a decoder-only target without its EOS)."""
        src_texts = [self.source_text(s) for s in sources]
        src_ids = _ids(self.tokenizer, src_texts)
        flat = [(i, self.target_text(t)) for i, ts in enumerate(targets) for t in ts]
        tgt_ids = self.adapter.target_ids(self.tokenizer, src_texts, src_ids, flat)
        out: list[tuple[list[int], list[list[int]]]] = [(self._truncate_source(s, max_source_len), [])
                                                        for s in src_ids]
        for (i, _), ids in zip(flat, tgt_ids):
            out[i][1].append(self._finish_target(ids, max_target_len, scoring))
        return out

    def pair(self, source: str, targets: list[str], max_source_len: int | None = None,
             max_target_len: int | None = None, scoring: bool = False
             ) -> tuple[list[int], list[list[int]]]:
        return self.pairs([source], [targets], max_source_len, max_target_len, scoring)[0]
