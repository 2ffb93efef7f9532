"""What PEFT, transformers and lm-evaluation-harness call each backbone family.

ctr decides seq2seq vs decoder-only once, in its backbone adapter (`ctr.core.adapter`);
this table maps the adapter to the other libraries' names and habits, so that the
exporters never branch on the architecture themselves.
"""
from __future__ import annotations

from dataclasses import dataclass

from ctr.core.adapter import BackboneAdapter, DecoderOnlyAdapter, Seq2SeqAdapter


@dataclass(frozen=True)
class Family:
    peft_task_type: str  # peft.TaskType of a prompt-tuning adapter
    auto_class: str  # the transformers Auto class that loads the base model
    lm_eval_backend: str  # lm-eval TemplateLM.backend (how it splits context / continuation)
    continuation_in_window: bool  # a scored continuation shares the input's positions
    inputs: str  # how inputs must be written for the code, in words ({suffix}, {prefix})
    peft_generate_args: str  # what PEFT's generate() needs here (README of an export)
    peft_notes: str  # where PEFT differs from ctr for this family (README of an export)


FAMILIES: dict[type[BackboneAdapter], Family] = {
    Seq2SeqAdapter: Family(
        peft_task_type="SEQ_2_SEQ_LM", auto_class="AutoModelForSeq2SeqLM", lm_eval_backend="seq2seq",
        continuation_in_window=False,
        inputs="Seq2seq: the input is encoded on its own and ends with EOS; the target goes to "
               "the decoder.",
        peft_generate_args="",
        peft_notes="Right-pad the inputs (tokenizers do by default): batches of any size then "
                   "give ctr's logits and tokens."),
    DecoderOnlyAdapter: Family(
        peft_task_type="CAUSAL_LM", auto_class="AutoModelForCausalLM", lm_eval_backend="causal",
        continuation_in_window=True,
        inputs="Decoder-only: tokenize without special tokens (no BOS). The input's trailing "
               "whitespace is dropped and {suffix!r} ends it; the target follows{prefix}.",
        peft_generate_args=", use_cache=False",
        peft_notes="`use_cache=False`: with transformers 5.x, PEFT's cached generation inserts the "
                   "virtual tokens again at every step (see ctr/interop/export.py). Left-padded "
                   "batches: PEFT puts the prompt before the padding and ignores position ids, so "
                   "padded rows differ slightly from ctr; one row, and right-padded batches when "
                   "scoring, are exact."),
}


def family_of(adapter: BackboneAdapter) -> Family:
    for cls, family in FAMILIES.items():
        if isinstance(adapter, cls):
            return family
    raise ValueError(f"no PEFT / lm-eval mapping for backbone adapter {type(adapter).__name__}")
