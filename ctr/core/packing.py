"""Padding-free (packed) training passes for decoder-only backbones.

The rows of a forward pass become one sequence of S positions: row i is its L soft-prompt
vectors, then its source and target tokens; position ids restart at 0 with every row, and
attention never crosses rows. The sequence is padded at its end to a multiple of a few
positions (fewer distinct shapes for `--compile` and the kernels' autotuning).

Row boundaries reach the attention function the way transformers 5.x carries them for
padding-free training (`DataCollatorWithFlattening(return_flash_attn_kwargs=True)`): the
kwargs `cu_seq_lens_q/k` and `max_length_q/k`, which every transformers model passes down
to its attention function. transformers reads them only in its flash-attention paths,
which need the flash-attn package (neither our GPU image nor a CPU has it), and its
position-id route builds a dense [S, S] mask and reads a tensor on the host to detect the
packing. So this module registers its own attention implementation, `ctr_packed`:
- with those kwargs, on CUDA in half precision: PyTorch's own variable-length flash
  attention (`torch.nn.attention.varlen`), one kernel over all rows;
- with those kwargs elsewhere (CPU, fp32): q/k/v are laid out per row [rows, longest row]
  for one causal SDPA call and the real positions are taken back; the linear layers, norms
  and the LM head still see no padding, only the attention scores are per row;
- without them (every unpacked call: scoring, generation, padded batches): transformers'
  SDPA with SDPA's masks, so the backbone behaves exactly as under "sdpa".
"""
from __future__ import annotations

import dataclasses
import inspect
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from transformers import PreTrainedModel

try:  # transformers' attention and mask registries (4.53 on); without them nothing is packed
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
    _NO_REGISTRY = None
except ImportError as e:
    _NO_REGISTRY = f"this transformers has no attention registry to extend ({e})"

PACKED_ATTENTION = "ctr_packed"


@dataclass
class PackedRows:
    """The layout of one packed pass, built on the host (`pack_rows`) so that the forward
    pass reads no tensor back: S packed positions, B rows, N tokens, T predicted targets."""

    layout: torch.Tensor  # [S] source of each position in cat(prompts [B*L], tokens [N], a zero row)
    position_ids: torch.Tensor  # [S] position inside its row
    cu_seq_lens: torch.Tensor  # [B + 1] int32 row starts, + 1 entry when S has end padding
    max_length: int  # longest row (end padding included)
    predict_at: torch.Tensor  # [T] position whose hidden state predicts each target token
    targets: torch.Tensor  # [T] the target token ids
    target_rows: torch.Tensor  # [T] row of each target token
    rows: int  # B
    prompt_len: int  # L soft-prompt positions in front of each row

    def _map(self, fn) -> "PackedRows":
        return dataclasses.replace(self, **{f.name: fn(getattr(self, f.name)) for f in dataclasses.fields(self)
                                            if isinstance(getattr(self, f.name), torch.Tensor)})

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "PackedRows":
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> "PackedRows":
        return self._map(lambda t: t.pin_memory())


def packed_positions(lengths: list[int], prompt_len: int, multiple: int = 1) -> int:
    """Positions a packed pass of rows of these token counts takes, the prompts left out
    (as `padded_tokens` counts them): the tokens plus the end padding to `multiple`."""
    real = sum(lengths) + prompt_len * len(lengths)
    return -(-real // max(1, multiple)) * max(1, multiple) - prompt_len * len(lengths)


def pack_rows(sources: list[list[int]], targets: list[list[int]], prompt_len: int,
              multiple: int = 1) -> tuple[torch.Tensor, PackedRows]:
    """(token ids [N], layout) of rows `source + target`, each after `prompt_len` prompt slots.

    Target token j of a row is predicted by the position before it, as in the padded pass
    (a row's very first position predicts nothing: with no prompt and no source its first
    target token is not scored, there as here)."""
    B, P = len(sources), prompt_len
    tok_len = np.array([len(s) + len(t) for s, t in zip(sources, targets)], dtype=np.int64)
    seg = tok_len + P  # positions of each row
    real = int(seg.sum())
    S = -(-real // max(1, multiple)) * max(1, multiple)
    pad = S - real
    starts = np.concatenate([[0], np.cumsum(seg)[:-1]])  # first position of each row
    tok_starts = np.concatenate([[0], np.cumsum(tok_len)[:-1]])  # first token of each row in [N]
    N = int(tok_len.sum())
    # what each position reads: row i's prompt slots i*P.., then its tokens B*P + tok_starts[i]..
    within = np.arange(real) - np.repeat(starts, seg)  # offset inside the row
    row_of = np.repeat(np.arange(B), seg)
    layout = np.where(within < P, row_of * P + within, B * P + np.repeat(tok_starts, seg) + within - P)
    layout = np.concatenate([layout, np.full(pad, B * P + N)])  # end padding reads the zero row
    positions = np.concatenate([within, np.arange(pad)])
    cu = np.concatenate([[0], np.cumsum(seg), [S] if pad else []]).astype(np.int32)
    # target j of row i sits at starts[i] + P + len(source_i) + j
    t_len = np.array([len(t) for t in targets], dtype=np.int64)
    t_row = np.repeat(np.arange(B), t_len)
    t_off = np.arange(int(t_len.sum())) - np.repeat(np.concatenate([[0], np.cumsum(t_len)[:-1]]), t_len)
    at = np.repeat(starts + P + np.array([len(s) for s in sources], dtype=np.int64), t_len) + t_off
    keep = at > np.repeat(starts, t_len)  # the row's first position is predicted by nothing
    ids = [x for s, t in zip(sources, targets) for x in (*s, *t)]
    flat_targets = np.array([x for t in targets for x in t], dtype=np.int64)
    packed = PackedRows(
        layout=torch.from_numpy(layout), position_ids=torch.from_numpy(positions),
        cu_seq_lens=torch.from_numpy(cu), max_length=int(max(seg.max(initial=0), pad)),
        predict_at=torch.from_numpy(at[keep] - 1), targets=torch.from_numpy(flat_targets[keep]),
        target_rows=torch.from_numpy(t_row[keep]), rows=B, prompt_len=P)
    return torch.tensor(ids, dtype=torch.long), packed


# ---- attention -------------------------------------------------------------------------
def _varlen():
    """PyTorch's variable-length flash attention and how to ask it for causal attention
    (`is_causal=True` in torch 2.10, `window_size=(-1, 0)` from 2.11 on), or None."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    params = inspect.signature(varlen_attn).parameters
    causal = {"window_size": (-1, 0)} if "window_size" in params else {"is_causal": True}
    return varlen_attn, causal, "scale" in params, "enable_gqa" in params


_VARLEN = _varlen()
_VARLEN_FAILED: list[str] = []  # the first failure of the kernel (then rows are laid out instead)


def attention_kernel(device: torch.device, dtype: torch.dtype) -> str:
    """Which packed attention runs on this device and dtype (what the trainer reports)."""
    if device.type == "cuda" and dtype in (torch.float16, torch.bfloat16) and _VARLEN and not _VARLEN_FAILED:
        return "PyTorch varlen flash attention"
    return "causal SDPA per row (rows laid out for attention only)"


def _varlen_attention(module, query, key, value, cu, max_len, scaling):
    fn, causal, has_scale, has_gqa = _VARLEN
    q, k, v = (x[0].transpose(0, 1) for x in (query, key, value))  # [S, H, D]
    kwargs = dict(causal)
    if has_scale:
        kwargs["scale"] = scaling
    elif scaling is not None and abs(scaling - q.shape[-1] ** -0.5) > 1e-12:
        return None
    if k.shape[1] != q.shape[1]:
        if has_gqa:
            kwargs["enable_gqa"] = True
        else:  # each key/value head serves q.shape[1] // k.shape[1] query heads in a row
            k, v = (x.repeat_interleave(q.shape[1] // x.shape[1], dim=1) for x in (k, v))
    return fn(q, k, v, cu, cu, max_len, max_len, **kwargs)  # [S, H, D]


def _per_row_attention(module, query, key, value, cu, max_len, scaling, dropout):
    """Causal SDPA with the rows laid out as a batch [B, H, max_len, D], read back packed."""
    S, B = query.shape[2], cu.shape[0] - 1
    starts = cu[:-1].long()
    offs = torch.arange(max_len, device=query.device)
    index = torch.where(offs < (cu[1:].long() - starts)[:, None], starts[:, None] + offs, S).reshape(-1)

    def by_row(x):  # [1, H, S, D] -> [B, H, max_len, D]; slots past a row's end read zeros
        x = torch.cat([x[0], x.new_zeros(x.shape[1], 1, x.shape[3])], 1)
        return x.index_select(1, index).unflatten(1, (B, max_len)).transpose(0, 1)
    out, _ = sdpa_attention_forward(module, by_row(query), by_row(key), by_row(value), None,
                                    dropout=dropout, scaling=scaling, is_causal=True)  # [B, max_len, H, D]
    pos = torch.arange(S, device=query.device)
    row = torch.searchsorted(cu[1:].long(), pos, right=True)
    return out[row, pos - starts[row]]  # [S, H, D]


def packed_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers attention function (query [1, Hq, S, D], key/value [1, Hk, S, D] ->
    ([1, S, Hq, D], None)): packed rows with `cu_seq_lens_q`, transformers' SDPA without."""
    cu = kwargs.get("cu_seq_lens_q")
    if cu is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    max_len = kwargs["max_length_q"]
    out = None
    if attention_kernel(query.device, query.dtype).startswith("PyTorch") and not dropout:
        try:
            out = _varlen_attention(module, query, key, value, cu, max_len, scaling)
        except (RuntimeError, NotImplementedError) as e:  # e.g. a GPU its kernel was not built for
            _VARLEN_FAILED.append(str(e))
            warnings.warn(f"varlen flash attention failed ({e}); packed rows use per-row SDPA")
    if out is None:
        out = _per_row_attention(module, query, key, value, cu, max_len, scaling, dropout)
    return out[None], None


if _NO_REGISTRY is None:
    AttentionInterface.register(PACKED_ATTENTION, packed_attention)
    # unpacked calls get SDPA's masks; packed calls pass `skip_mask` and build none
    AttentionMaskInterface.register(PACKED_ATTENTION, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])


def skip_mask(device: torch.device) -> torch.Tensor:
    """A stand-in 4D attention mask for packed calls: transformers returns a 4D mask as it is
    instead of building one (the packed attention reads the row boundaries instead)."""
    return torch.ones(1, 1, 1, 1, dtype=torch.bool, device=device)


def packing_problem(backbone: PreTrainedModel) -> str | None:
    """Why packed passes would not be exact for this backbone (None when they are)."""
    cfg = backbone.config
    if getattr(cfg, "is_encoder_decoder", False):
        return "an encoder-decoder backbone (its padded batches are kept)"
    if _NO_REGISTRY:
        return _NO_REGISTRY
    impl = getattr(cfg, "_attn_implementation", None)
    if impl not in ("sdpa", PACKED_ATTENTION):
        return f"attention implementation {impl!r} (packing replaces 'sdpa' only)"
    if getattr(cfg, "sliding_window", None) and getattr(cfg, "use_sliding_window", True):
        return "sliding-window attention"
    if any(t != "full_attention" for t in getattr(cfg, "layer_types", None) or []):
        return "layers other than full attention"
    if getattr(cfg, "attn_logit_softcapping", None):
        return "attention logit soft-capping"
    return None


def use_packed_attention(backbone: PreTrainedModel) -> None:
    """Switch the backbone to `ctr_packed` (the same as SDPA for every unpacked call)."""
    if getattr(backbone.config, "_attn_implementation", None) == PACKED_ATTENTION:
        return
    problem = packing_problem(backbone)
    if problem:
        raise ValueError(f"packed passes are not exact for this backbone: {problem}; "
                         "train with --packing no")
    backbone.config._attn_implementation = PACKED_ATTENTION
