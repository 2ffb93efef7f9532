"""Backbone adapters: the one place that knows seq2seq from decoder-only.

`adapter_for(backbone)` decides once, from the backbone's config, and every other module
asks its adapter (`CTRModel.adapter`) instead of branching on the architecture:

  concern             Seq2SeqAdapter (T5, T0)                DecoderOnlyAdapter (Llama, SmolLM2)
  prompt-format ids   input and target apart, each + EOS     one joined text, cut after the input
  collate             encoder input; labels = decoder input  input + target in one row, labels aligned
  loss (forward)      encoder-decoder pass on the labels     one pass; LM head on target positions
  packed passes       no (padded batches)                    all rows in one sequence (ctr.core.packing)
  scoring             one encoder pass, decoder per choice   input KV cache, choices continue from it
  generation          right padded; drop the start token     left padded, explicit position ids

The soft prompt itself goes in front of each row's real tokens in both
(`CTRModel.embed_inputs`, `CTRModel.embed_packed`); the adapter says which side the padding
goes to. A training pass returns its target logits (`TargetLogits`), from which `CTRModel`
builds its output.
"""
from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch
from transformers import PreTrainedModel

from ctr.core.backbone import is_encoder_decoder
from ctr.core.packing import PackedRows, pack_rows, skip_mask, use_packed_attention

# ctr.core.model builds on this module, so its classes are named here, not imported:
# CTRModel (passed in), PreparedInputs (its embed_inputs)
CTRModel = PreparedInputs = Any
IGNORE = -100  # label of a position that is not a target
# Input/target pairs that probe whether a delimiter tokenises the same in front of any target.
_PROBES = (("Is it good?", "negative"), ("Answer: 12", "Yes"), ("x", "1"), ("a b", "The end."))


@dataclass
class TargetLogits:
    """What a training pass gives back to `CTRModel`, which turns it into its output."""

    logits: torch.Tensor | None  # [N, V] logits that predict each target token (None: no labels)
    targets: torch.Tensor | None  # [N] the target tokens
    rows: torch.Tensor | None  # [N] the row of each target token
    batch_size: int  # rows in the pass
    caller_logits: torch.Tensor | None = None  # [B, T, V] in the caller's columns, when asked


def token_ids(tokenizer, texts: list[str]) -> list[list[int]]:
    """Ids of each text, without special tokens."""
    return [list(x) for x in tokenizer(texts, add_special_tokens=False).input_ids] if texts else []


@lru_cache(maxsize=32)
def _delimiter_in_source(tokenizer, delimiter: str) -> bool:
    if not delimiter:
        return True
    for x, y in _PROBES:
        src, whole = token_ids(tokenizer, [x + delimiter, x + delimiter + y])
        if whole[:len(src)] != src:
            return False
    return True


def pad(seqs: list[list[int]], value: int, side: str) -> torch.Tensor:
    """[B, max len] from ragged rows, `value` filling on `side` ("left" or "right")."""
    width = max(len(s) for s in seqs)
    fill = [[value] * (width - len(s)) for s in seqs]
    return torch.tensor([f + s if side == "left" else s + f for s, f in zip(seqs, fill)])


def cache_kwarg(body: torch.nn.Module, cache) -> dict:
    """transformers renamed `past_key_values` to `cache` (5.x); pass whichever it takes."""
    params = inspect.signature(body.forward).parameters
    return {"cache": cache} if "cache" in params else {"past_key_values": cache}


class BackboneAdapter(ABC):
    """Every difference between backbone families, as small methods."""

    seq2seq: bool
    # padding side of inputs that new tokens follow (scoring's choices, generation)
    pad_side: str

    # ---- prompt format (`ctr.core.prompt_format`) ------------------------------------
    @abstractmethod
    def delimiter_split(self, tokenizer, delimiter: str) -> tuple[str, str]:
        """(text after the input, text before each target) that the delimiter becomes."""

    @abstractmethod
    def sequence_delimiter(self, delimiter: str) -> str:
        """The delimiter as text between input and target tokens ('' when they are apart)."""

    @abstractmethod
    def finish_source(self, ids: list[int], max_len: int | None, eos: int) -> list[int]:
        """Input ids cut to `max_len`, keeping their end (the question sits there)."""

    @abstractmethod
    def target_has_eos(self, target_eos: bool, scoring: bool) -> bool:
        """Whether a target (scoring: an answer choice) ends with EOS."""

    def finish_target(self, ids: list[int], max_len: int | None, eos: int, target_eos: bool,
                      scoring: bool = False) -> list[int]:
        """Target ids cut to `max_len`, keeping their start, with EOS when it belongs."""
        if not self.target_has_eos(target_eos, scoring):
            return ids[:max_len] if max_len else ids
        return (ids[:max_len - 1] if max_len else ids) + [eos]

    @abstractmethod
    def target_ids(self, tokenizer, src_texts: list[str], src_ids: list[list[int]],
                   flat: list[tuple[int, str]]) -> list[list[int]]:
        """Ids of each (input index, target text) in `flat`, before EOS and truncation."""

    # ---- training batches ------------------------------------------------------------
    @abstractmethod
    def collate(self, sources: list[list[int]], targets: list[list[int]], pad_id: int,
                padding_side: str = "right") -> dict[str, torch.Tensor]:
        """input_ids, attention_mask and labels for `CTRModel.forward`."""

    @abstractmethod
    def padded_tokens(self, lengths: list[tuple[int, int]], packed: bool = False) -> int:
        """Positions `collate` (or, `packed`, `collate_packed`) lays rows of these (source,
        target) lengths out on, all rows together, soft prompts and end padding left out."""

    # whether rows can be packed into one sequence: then the adapter has `collate_packed`
    # (input_ids [N] and the `packed` layout, ctr.core.packing) and `forward_packed`
    packs: bool = False

    def training_flops(self, backbone: PreTrainedModel, lengths: list[tuple[int, int]], prompt_len: int,
                       frozen: bool) -> float | None:
        """Model FLOPs of a training pass over rows of these (source, target) lengths with a
        soft prompt of `prompt_len` positions (formula: `ctr.bench.throughput`); None where
        no formula is kept (seq2seq)."""
        return None

    @abstractmethod
    def trunk(self, model: CTRModel) -> torch.nn.Module:
        """The module a training pass spends its time in (what `--compile` compiles)."""

    @abstractmethod
    def forward(self, model: CTRModel, x: PreparedInputs, labels: torch.Tensor | None,
                return_logits: bool, target_only: bool) -> TargetLogits:
        """The logits of `labels` from prepared inputs (see `CTRModel.forward`)."""

    # ---- inference -------------------------------------------------------------------
    @abstractmethod
    def choice_logits(self, model: CTRModel, x: PreparedInputs, cids: torch.Tensor,
                      cmask: torch.Tensor, pair_row: torch.Tensor) -> torch.Tensor:
        """Logits [N, V] that predict each real choice token (cids[cmask], N of them).

        x: inputs padded on `pad_side` [B, P + T]; cids [C, W] choice ids (IGNORE-padded);
        cmask [C, W] real choice tokens; pair_row [C] the input of each choice."""

    @abstractmethod
    def position_kwargs(self, x: PreparedInputs) -> dict[str, torch.Tensor]:
        """Position ids to pass with `x` (empty where the backbone derives them)."""

    @abstractmethod
    def generation_options(self, backbone: PreTrainedModel) -> dict[str, Any]:
        """Extra `GenerationConfig` fields the backbone needs."""

    @abstractmethod
    def new_tokens(self, seqs: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
        """The generated tokens [B, <= max_new_tokens] of `generate`'s output."""

    @abstractmethod
    def reference_choice_logits(self, backbone: PreTrainedModel, input_ids: list[int],
                                choice: list[int]) -> torch.Tensor:
        """Logits [len(choice), V] of one plain backbone pass (a naive scorer's reference)."""


class Seq2SeqAdapter(BackboneAdapter):
    """Encoder-decoder backbones: the input goes to the encoder, the target to the decoder."""

    seq2seq = True
    pad_side = "right"  # as the encoder saw inputs in training

    def delimiter_split(self, tokenizer, delimiter: str) -> tuple[str, str]:
        return "", ""  # separate sequences: the delimiter plays no part

    def sequence_delimiter(self, delimiter: str) -> str:
        return ""

    def finish_source(self, ids: list[int], max_len: int | None, eos: int) -> list[int]:
        return (ids[max(0, len(ids) - max_len + 1):] if max_len else ids) + [eos]

    def target_has_eos(self, target_eos: bool, scoring: bool) -> bool:
        return target_eos  # choices keep their EOS, as T0 scores them

    def target_ids(self, tokenizer, src_texts: list[str], src_ids: list[list[int]],
                   flat: list[tuple[int, str]]) -> list[list[int]]:
        return token_ids(tokenizer, [t for _, t in flat])

    def collate(self, sources: list[list[int]], targets: list[list[int]], pad_id: int,
                padding_side: str = "right") -> dict[str, torch.Tensor]:
        ids = pad(sources, pad_id, padding_side)  # [B, S] encoder input
        mask = pad([[1] * len(s) for s in sources], 0, padding_side)  # [B, S]
        labels = pad(targets, IGNORE, "right")  # [B, T] decoder targets start at 0
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    def padded_tokens(self, lengths: list[tuple[int, int]], packed: bool = False) -> int:
        # encoder rows pad to the longest source, decoder rows to the longest target
        return len(lengths) * (max(s for s, _ in lengths) + max(t for _, t in lengths)) if lengths else 0

    def trunk(self, model: CTRModel) -> torch.nn.Module:
        return model.backbone  # training calls the whole encoder-decoder

    def forward(self, model: CTRModel, x: PreparedInputs, labels: torch.Tensor | None,
                return_logits: bool, target_only: bool) -> TargetLogits:
        if labels is None:
            raise ValueError("seq2seq backbones need labels (the decoder targets)")
        dec_in = model.backbone.prepare_decoder_input_ids_from_labels(labels=labels)  # [B, T]
        # the decoder positions are the targets and their padding: the LM head runs on them
        logits = model.backbone(inputs_embeds=x.embeds, attention_mask=x.mask,
                                decoder_input_ids=dec_in, use_cache=False).logits  # [B, T, V]
        sel = labels != IGNORE
        return TargetLogits(logits[sel], labels[sel], sel.nonzero()[:, 0], labels.shape[0],
                            logits if return_logits else None)

    def choice_logits(self, model: CTRModel, x: PreparedInputs, cids: torch.Tensor,
                      cmask: torch.Tensor, pair_row: torch.Tensor) -> torch.Tensor:
        # one encoder pass per input; the decoder reads its states once per choice
        enc = model.backbone.get_encoder()(inputs_embeds=x.embeds, attention_mask=x.mask
                                           ).last_hidden_state  # [B, P + T, H]
        dec_in = model.backbone.prepare_decoder_input_ids_from_labels(labels=cids)  # [C, W]
        logits = model.backbone(encoder_outputs=(enc[pair_row],), attention_mask=x.mask[pair_row],
                                decoder_input_ids=dec_in, use_cache=False).logits  # [C, W, V]
        return logits[cmask]

    def position_kwargs(self, x: PreparedInputs) -> dict[str, torch.Tensor]:
        return {}  # relative positions

    def generation_options(self, backbone: PreTrainedModel) -> dict[str, Any]:
        start = backbone.generation_config.decoder_start_token_id
        return {"decoder_start_token_id": start if start is not None
                else backbone.config.decoder_start_token_id}

    def new_tokens(self, seqs: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
        return seqs[:, 1:]  # [B, N]: without the decoder start token

    def reference_choice_logits(self, backbone: PreTrainedModel, input_ids: list[int],
                                choice: list[int]) -> torch.Tensor:
        return backbone(input_ids=torch.tensor([input_ids]), labels=torch.tensor([choice])).logits[0]


class DecoderOnlyAdapter(BackboneAdapter):
    """Causal LMs: input and target are one sequence; the target continues the input."""

    seq2seq = False
    pad_side = "left"  # new tokens must follow each row's last real token

    def delimiter_split(self, tokenizer, delimiter: str) -> tuple[str, str]:
        # the delimiter ends the input when it tokenises the same in front of any target
        if _delimiter_in_source(tokenizer, delimiter):
            return delimiter, ""
        return "", delimiter

    def sequence_delimiter(self, delimiter: str) -> str:
        return delimiter

    def finish_source(self, ids: list[int], max_len: int | None, eos: int) -> list[int]:
        return ids[-max_len:] if max_len else ids

    def target_has_eos(self, target_eos: bool, scoring: bool) -> bool:
        return target_eos and not scoring  # a choice is scored on its own tokens

    def target_ids(self, tokenizer, src_texts: list[str], src_ids: list[list[int]],
                   flat: list[tuple[int, str]]) -> list[list[int]]:
        # the joined text, cut where the input's tokens end; a target whose joined tokens do
        # not start with the input's is tokenised on its own
        whole = token_ids(tokenizer, [src_texts[i] + t for i, t in flat])
        out = [w[len(src_ids[i]):] if w[:len(src_ids[i])] == src_ids[i] else None
               for (i, _), w in zip(flat, whole)]
        alone = [k for k, t in enumerate(out) if t is None]
        for k, ids in zip(alone, token_ids(tokenizer, [flat[k][1] for k in alone])):
            out[k] = ids
        return out  # type: ignore[return-value]

    def collate(self, sources: list[list[int]], targets: list[list[int]], pad_id: int,
                padding_side: str = "right") -> dict[str, torch.Tensor]:
        rows = [s + t for s, t in zip(sources, targets)]
        ids = pad(rows, pad_id, padding_side)  # [B, S + T]
        mask = pad([[1] * len(r) for r in rows], 0, padding_side)  # [B, S + T]
        labels = pad([[IGNORE] * len(s) + t for s, t in zip(sources, targets)], IGNORE,
                     padding_side)  # [B, S + T] aligned with input_ids
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    def padded_tokens(self, lengths: list[tuple[int, int]], packed: bool = False) -> int:
        if packed:
            return sum(s + t for s, t in lengths)  # one sequence for all rows
        return len(lengths) * max(s + t for s, t in lengths) if lengths else 0  # one sequence per row

    packs = True

    def collate_packed(self, sources: list[list[int]], targets: list[list[int]], prompt_len: int,
                       multiple: int = 1) -> dict[str, Any]:
        """input_ids [N] and the `packed` layout for `CTRModel.forward`."""
        ids, packed = pack_rows(sources, targets, prompt_len, multiple)
        return {"input_ids": ids, "packed": packed}

    def forward_packed(self, model: CTRModel, embeds: torch.Tensor, packed: PackedRows,
                       target_only: bool) -> TargetLogits:
        """The target logits of a packed pass (embeds [1, S, H], `CTRModel.embed_packed`)."""
        use_packed_attention(model.backbone)  # row boundaries as transformers' flash kwargs
        cu, longest = packed.cu_seq_lens, packed.max_length
        hidden = model.body(inputs_embeds=embeds, position_ids=packed.position_ids[None],
                            attention_mask=skip_mask(embeds.device), use_cache=False,
                            cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=longest,
                            max_length_k=longest).last_hidden_state[0]  # [S, H]
        if target_only:
            logits = model.lm_logits(hidden.index_select(0, packed.predict_at))  # [T, V]
        else:
            logits = model.lm_logits(hidden).index_select(0, packed.predict_at)
        return TargetLogits(logits, packed.targets, packed.target_rows, packed.rows)

    def trunk(self, model: CTRModel) -> torch.nn.Module:
        return model.body  # target-only training calls the body; the LM head runs on targets only

    def training_flops(self, backbone: PreTrainedModel, lengths: list[tuple[int, int]], prompt_len: int,
                       frozen: bool) -> float | None:
        cfg = backbone.config
        ends = {id(p) for m in (backbone.get_input_embeddings(), backbone.get_output_embeddings())
                if m is not None for p in m.parameters()}
        n = sum(p.numel() for p in backbone.parameters() if id(p) not in ends)  # the body
        k = 2 if frozen else 3  # forward + input gradients (+ weight gradients when trained)
        d, layers = cfg.hidden_size, cfg.num_hidden_layers
        positions = [(prompt_len + s + t, t) for s, t in lengths]  # (P, T) per row
        return float(sum(k * (2 * n * P + 4 * layers * d * P ** 2 + 2 * d * cfg.vocab_size * T)
                         for P, T in positions))

    def forward(self, model: CTRModel, x: PreparedInputs, labels: torch.Tensor | None,
                return_logits: bool, target_only: bool) -> TargetLogits:
        B, P = x.order.shape[0], x.prompt_len
        hidden = model.body(inputs_embeds=x.embeds, attention_mask=x.mask,
                            use_cache=False).last_hidden_state  # [B, P + T, H]
        caller_logits = None
        if return_logits or not target_only or labels is None:
            full = model.lm_logits(hidden[:, P:])  # [B, T, V] in right-padded order
            inverse = torch.argsort(x.order, dim=1)
            caller_logits = full.gather(1, inverse[..., None].expand_as(full))  # caller's columns
        if labels is None:
            return TargetLogits(None, None, None, B, caller_logits)
        lab = labels.gather(1, x.order)
        if P:
            lab = torch.cat([lab.new_full((B, P), IGNORE), lab], 1)  # [B, P + T]
        h, targets = hidden[:, :-1], lab[:, 1:]  # position t predicts token t + 1
        sel = targets != IGNORE
        logits = model.lm_logits(h[sel]) if target_only else model.lm_logits(h)[sel]  # [N, V]
        return TargetLogits(logits, targets[sel], sel.nonzero()[:, 0], B, caller_logits)

    def choice_logits(self, model: CTRModel, x: PreparedInputs, cids: torch.Tensor,
                      cmask: torch.Tensor, pair_row: torch.Tensor) -> torch.Tensor:
        out = model.body(inputs_embeds=x.embeds, attention_mask=x.mask, use_cache=True,
                         **self.position_kwargs(x))
        cache = out.cache if "cache" in out else out.past_key_values
        if len(cids) != len(x.mask):  # one choice each (a loss objective): no copy
            cache.reorder_cache(pair_row)  # each input's cache, once per choice
        pmask = x.mask[pair_row]  # [C, P + T]
        start = pmask.sum(1, keepdim=True)  # [C, 1] first position of each choice
        steps = torch.arange(cids.shape[1], device=cids.device)
        h = model.body(input_ids=cids.clamp(min=0), attention_mask=torch.cat([pmask, cmask.long()], 1),
                       position_ids=start + steps, use_cache=True, **cache_kwarg(model.body, cache)
                       ).last_hidden_state  # [C, W, H]
        # choice token t is predicted by the hidden state before it: the input's last
        # state for t = 0, the choice's own state t - 1 after that
        pred = torch.cat([out.last_hidden_state[pair_row, -1:], h[:, :-1]], 1)  # [C, W, H]
        return model.lm_logits(pred[cmask])

    def position_kwargs(self, x: PreparedInputs) -> dict[str, torch.Tensor]:
        return {"position_ids": x.positions}  # [B, P + T]: left padding must not shift them

    def generation_options(self, backbone: PreTrainedModel) -> dict[str, Any]:
        return {}

    def new_tokens(self, seqs: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
        if seqs.shape[1] > max_new_tokens:
            # transformers returns only the new tokens when given embeddings alone; if that ever
            # changes the prompt would leak into the output, so fail loudly instead
            raise RuntimeError(f"generate returned {seqs.shape[1]} tokens for max_new_tokens="
                               f"{max_new_tokens}: it echoed the prompt (transformers changed?)")
        return seqs

    def reference_choice_logits(self, backbone: PreTrainedModel, input_ids: list[int],
                                choice: list[int]) -> torch.Tensor:
        logits = backbone(input_ids=torch.tensor([input_ids + choice])).logits  # [1, T + C, V]
        return logits[0, len(input_ids) - 1:-1]


_ADAPTERS: dict[bool, BackboneAdapter] = {True: Seq2SeqAdapter(), False: DecoderOnlyAdapter()}


def adapter_for(backbone: PreTrainedModel | BackboneAdapter | bool) -> BackboneAdapter:
    """The adapter of a backbone; an adapter is returned as is, and a bool is read as the
    older `seq2seq` flag (so `collate(rows, pad, seq2seq)` call sites keep working)."""
    if isinstance(backbone, BackboneAdapter):
        return backbone
    return _ADAPTERS[backbone if isinstance(backbone, bool) else is_encoder_decoder(backbone)]
