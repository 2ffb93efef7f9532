"""CTRModel: a task code turned into a soft prompt in front of any HF language model.

task id -> task embedding -> per-position linear encoder -> shared-codebook quantizer
-> linear decoder -> L soft-prompt vectors prepended to the input embeddings.
A code (L integers) skips the first two steps and indexes the codebook directly.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ctr.core.adapter import BackboneAdapter, TargetLogits, adapter_for
from ctr.core.backbone import load_backbone
from ctr.core.code_init import encoder_onto, grouped_codes, spread_codes
from ctr.core.locate import CONFIG_FILE, require_model_dir
from ctr.core.lora import LORA_DIR, has_lora, load_lora, save_lora
from ctr.core.model_card import CardInfo, write_model_card
from ctr.core.outputs import CTROutput, target_output
from ctr.core.packing import PackedRows
from ctr.config import CODE_PLACING_INITS, CTRConfig
from ctr.fileio import atomic_dir, read_json, write_json
from ctr.core.quantizer import CodeQuantizer, seeded

WEIGHTS_FILE = "ctr_weights.safetensors"
CODE_TABLE_FILE = "code_table.json"
BACKBONE_DIR = "backbone"


def read_config(folder: str | Path) -> CTRConfig:
    """The CTRConfig of a saved CTR model folder (its ctr_config.json)."""
    return CTRConfig.from_dict(read_json(Path(folder) / CONFIG_FILE))


@dataclass
class PreparedInputs:
    embeds: torch.Tensor  # [B, P + T, H]
    mask: torch.Tensor  # [B, P + T]
    positions: torch.Tensor  # [B, P + T] position of each token among the real ones
    codes: torch.Tensor | None
    vq_loss: torch.Tensor
    order: torch.Tensor  # [B, T] caller column of each token (before the prompt is added)
    prompt_len: int


def right_pad_order(mask: torch.Tensor) -> torch.Tensor:
    """Column order that moves each row's real tokens first, keeping their order.

    Working on right-padded rows makes the prompt adjacent to the input and positions
    start at 0 whatever padding side the caller used (T5's relative positions and
    decoder-only absolute positions both depend on it).
    """
    return torch.argsort((mask == 0).to(torch.int8), dim=1, stable=True)


class CTRModel(nn.Module):
    def __init__(self, backbone: PreTrainedModel, config: CTRConfig,
                 tokenizer: PreTrainedTokenizerBase | None = None,
                 task_vectors: torch.Tensor | None = None, task_profiles: torch.Tensor | None = None):
        """`task_vectors` [T, E]: the task embeddings of task_init='description'.
        `task_profiles` [T, P]: what encoder_init='grouped' clusters the tasks by (the trainer
        passes their description vectors); without them (a model about to load its weights)
        the codes start spread."""
        super().__init__()
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.config = config
        self.adapter: BackboneAdapter = adapter_for(backbone)  # every seq2seq/decoder-only difference
        hidden = backbone.get_input_embeddings().embedding_dim
        config.code_dim = config.code_dim or hidden
        if task_vectors is not None:
            if config.task_init != "description":
                raise ValueError("task_vectors given but config.task_init is not 'description'")
            if task_vectors.shape[0] != config.num_tasks:
                raise ValueError(f"task_vectors has {task_vectors.shape[0]} rows for "
                                 f"{config.num_tasks} tasks")
            config.task_embed_dim = task_vectors.shape[1]
        config.task_embed_dim = config.task_embed_dim or config.code_dim
        if not config.backbone:
            config.backbone = str(getattr(backbone.config, "name_or_path", "") or "")
        self.backbone_frozen = False
        if not config.use_codes:
            return
        L, E, D = config.code_length, config.task_embed_dim, config.code_dim
        self.task_embedding = nn.Embedding(config.num_tasks, E)
        nn.init.normal_(self.task_embedding.weight, 0.0, 1.0)
        if task_vectors is not None:
            self.task_embedding.weight.data.copy_(task_vectors)
        self.encoder = nn.Parameter(torch.randn(L, E, D) * config.encoder_init_std)
        self.quantizer = CodeQuantizer(config, D)
        self.decoder = nn.Linear(D, hidden, bias=False)
        self._init_prompt_path(hidden, task_profiles)

    @torch.no_grad()
    def _init_prompt_path(self, hidden: int, task_profiles: torch.Tensor | None = None) -> None:
        """`codebook_init="vocab"`: code values start as K random token embeddings;
        `decoder_init="identity"`: the soft prompt is the codebook vectors themselves. Both
        put the prompt on the scale of the LM's own inputs (SmolLM2: row norm ~3, where the
        paper's init gives ~6 to 20 and the LM ignores it). `encoder_init` "spread"/"grouped":
        every task starts exactly on a code of `ctr.core.code_init`."""
        cfg = self.config
        if (cfg.codebook_init == "vocab" or cfg.decoder_init == "identity") and cfg.code_dim != hidden:
            raise ValueError(f"codebook_init='vocab' and decoder_init='identity' need code_dim = the "
                             f"backbone's hidden size {hidden}, got {cfg.code_dim}")
        if cfg.codebook_init == "vocab":
            emb = self.backbone.get_input_embeddings().weight
            rows = torch.randint(emb.shape[0], (cfg.codebook_size,))
            self.quantizer.set_codebook(emb[rows.to(emb.device)].float())
        if cfg.decoder_init == "identity":
            self.decoder.weight.copy_(torch.eye(hidden))
        if cfg.encoder_init in CODE_PLACING_INITS:
            T, L, K = cfg.num_tasks, cfg.code_length, cfg.codebook_size
            if task_profiles is not None and cfg.encoder_init == "grouped":
                if task_profiles.shape[0] != T:
                    raise ValueError(f"task_profiles has {task_profiles.shape[0]} rows for {T} tasks")
                codes = grouped_codes(task_profiles, L, K)
            else:
                codes = spread_codes(T, L, K)
            self.encoder.copy_(encoder_onto(self.task_embedding.weight, self.quantizer.centers, codes))

    # ---- codes ---------------------------------------------------------------------
    def encode_tasks(self, task_ids: torch.Tensor) -> torch.Tensor:
        """Continuous encodings z [B, L, D] of training tasks, in fp32 with autocast off
        (under bf16 autocast the einsum would round z and flip codes against the fp32 table)."""
        with torch.autocast(device_type=self.encoder.device.type, enabled=False):
            e = self.task_embedding(task_ids).float()
            return torch.einsum("be,led->bld", e, self.encoder.float())

    @torch.no_grad()
    def task_codes(self) -> torch.Tensor:
        """The code [num_tasks, L] of every training task."""
        self._require_codes()
        ids = torch.arange(self.config.num_tasks, device=self.encoder.device)
        return self.quantizer.nearest(self.encode_tasks(ids))

    def code_table(self) -> dict[str, list[int]]:
        if not self.config.use_codes or self.config.num_tasks == 0:
            return {}
        return {n: c.tolist() for n, c in zip(self.config.task_names, self.task_codes().cpu())}

    def check_codes(self, codes: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
        L, K = self.config.code_length, self.config.codebook_size
        if not isinstance(codes, torch.Tensor):
            codes = torch.as_tensor(codes)
        if codes.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise ValueError(f"codes must be an integer tensor, got dtype {codes.dtype}")
        if codes.dim() == 1:
            codes = codes.unsqueeze(0)
        if codes.dim() != 2 or codes.shape[1] != L:
            raise ValueError(f"codes must have shape [batch, {L}], got {list(codes.shape)}")
        if batch_size is not None and codes.shape[0] == 1 and batch_size > 1:
            codes = codes.expand(batch_size, L)
        if batch_size is not None and codes.shape[0] != batch_size:
            raise ValueError(f"codes has {codes.shape[0]} rows for a batch of {batch_size}")
        if codes.numel() and (codes.min() < 0 or codes.max() >= K):
            raise ValueError(f"code values must lie in [0, {K}), got min {int(codes.min())} "
                             f"max {int(codes.max())}")
        return codes.long().to(self.encoder.device)

    def soft_prompt(self, batch_size: int, task_ids: torch.Tensor | None = None,
                    codes: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
        """(prompt [B, L, H] or None, codes [B, L] or None, vq loss)."""
        device = self.backbone.device
        zero = torch.zeros((), device=device)
        if not self.config.use_codes:
            if task_ids is not None or codes is not None:
                raise ValueError("this model has no codes (use_codes=False): pass neither "
                                 "task_ids nor codes")
            return None, None, zero
        if (task_ids is None) == (codes is None):
            raise ValueError("pass exactly one of task_ids or codes")
        if task_ids is not None:
            task_ids = torch.as_tensor(task_ids, device=self.encoder.device).long().reshape(-1)
            if task_ids.shape[0] != batch_size:
                raise ValueError(f"task_ids has {task_ids.shape[0]} entries for a batch of {batch_size}")
            if task_ids.numel():  # checked on the device: a GPU does not wait for the host
                try:  # (raises here on the CPU; on a GPU as a device-side assert)
                    torch._assert_async((task_ids.min() >= 0) & (task_ids.max() < self.config.num_tasks),
                                        f"task_ids must lie in [0, {self.config.num_tasks})")
                except RuntimeError as e:
                    raise ValueError(str(e)) from None
            q, codes, vq_loss = self._quantize_tasks(task_ids)
        else:
            codes = self.check_codes(codes, batch_size)
            q, vq_loss = self.quantizer.lookup(codes), zero
        return self.decoder(q), codes, vq_loss

    def _quantize_tasks(self, task_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(quantized vectors [B, L, D], codes [B, L], VQ loss) of training tasks.

        In training with `quantize_all_tasks`, every task is encoded and quantised and the
        batch's rows are taken from that (the VQ loss is every task's). While the codebook
        warms up (the trainer sets `quantizer.quantizing` False) the encodings themselves
        are the prompt vectors, the codes are only reported, and the quantizer's parameters
        join the loss with a zero gradient (DDP expects every parameter in every pass)."""
        if not self.quantizer.quantizing:
            z = self.encode_tasks(task_ids)
            unused = sum((p.sum() * 0.0 for p in self.quantizer.parameters()), z.new_zeros(()))
            return z, self.quantizer.nearest(z), unused
        complete = self.config.quantize_all_tasks and self.training
        z = self.encode_tasks(torch.arange(self.config.num_tasks, device=task_ids.device)
                              if complete else task_ids)
        out = self.quantizer(z, complete=complete)
        q, codes = out.quantized, out.codes
        if complete:
            z, q, codes = z[task_ids], q[task_ids], codes[task_ids]
        if self.config.codebook_lm_grad:
            # forward: the codebook vectors; backward: the LM gradient reaches them and the
            # task encoding z (straight through, or rotated: `quantizer.through`). Paper: z only
            w = self.quantizer.lookup(codes)
            q = w - w.detach() + self.quantizer.through(z, w) if self.quantizer.rotation_trick \
                else w + (z - z.detach())
        return q, codes, out.loss

    def _require_codes(self) -> None:
        if not self.config.use_codes:
            raise ValueError("this model has no codes (use_codes=False)")

    # ---- forward -------------------------------------------------------------------
    def embed_inputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                     task_ids: torch.Tensor | None = None, codes: torch.Tensor | None = None,
                     pad_side: str = "right", prompt: torch.Tensor | None = None) -> PreparedInputs:
        """Input embeddings with the soft prompt right before each row's first real token.

        Whatever padding the caller used, rows come back padded on `pad_side` with
        contiguous real tokens: positions then depend on content only (T5's relative and
        decoder-only absolute positions alike). "left" suits continuing from a KV cache.
        """
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        B = input_ids.shape[0]
        if prompt is not None:  # a continuous prompt [P, H] (prompt tuning) instead of a code
            if task_ids is not None or codes is not None:
                raise ValueError("pass a prompt or a code/task id, not both")
            prompt, vq_loss = prompt.expand(B, *prompt.shape[-2:]), prompt.new_zeros(())
        else:
            prompt, codes, vq_loss = self.soft_prompt(B, task_ids, codes)
        order = right_pad_order(attention_mask)
        ids = input_ids.gather(1, order)
        mask = attention_mask.gather(1, order)
        embeds = self.backbone.get_input_embeddings()(ids)
        P = 0
        if prompt is not None:
            P = prompt.shape[1]
            embeds = torch.cat([prompt.to(embeds.device, embeds.dtype), embeds], 1)
            mask = torch.cat([mask.new_ones(B, P), mask], 1)
        if pad_side == "left":
            shift = torch.argsort((mask != 0).to(torch.int8), dim=1, stable=True)  # pads first
            embeds = embeds.gather(1, shift[..., None].expand_as(embeds))
            mask = mask.gather(1, shift)
        elif pad_side != "right":
            raise ValueError(f"pad_side must be 'left' or 'right', got {pad_side!r}")
        positions = (mask.long().cumsum(1) - 1).clamp(min=0)
        return PreparedInputs(embeds, mask, positions, codes, vq_loss, order, P)

    def embed_packed(self, input_ids: torch.Tensor, packed: PackedRows, task_ids: torch.Tensor | None = None,
                     codes: torch.Tensor | None = None, prompt: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """(embeds [1, S, H], codes, vq loss) of a packed pass: each row's soft prompt right
        before its first token, as `embed_inputs` puts it (`ctr.core.packing`)."""
        if not self.adapter.packs:
            raise ValueError(f"{type(self.adapter).__name__}: this backbone's rows are not packed")
        if prompt is not None and (task_ids is not None or codes is not None):
            raise ValueError("pass a prompt or a code/task id, not both")
        B = packed.rows
        prompt, codes, vq_loss = self.soft_prompt(B, task_ids, codes) if prompt is None else (
            prompt.expand(B, *prompt.shape[-2:]), None, prompt.new_zeros(()))
        tokens = self.backbone.get_input_embeddings()(input_ids.reshape(-1))  # [N, H]
        P = 0 if prompt is None else prompt.shape[1]
        if P != packed.prompt_len:
            raise ValueError(f"the packed layout has {packed.prompt_len} prompt positions per row, "
                             f"the model's prompt {P}")
        parts = [prompt.reshape(B * P, -1).to(tokens.dtype)] if P else []  # prompts, tokens, a zero
        parts += [tokens, tokens.new_zeros(1, tokens.shape[-1])]  # row that end padding reads
        return torch.cat(parts).index_select(0, packed.layout)[None], codes, vq_loss

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, task_ids: torch.Tensor | None = None,
                codes: torch.Tensor | None = None, return_logits: bool = False,
                target_only: bool = True, prompt: torch.Tensor | None = None,
                packed: PackedRows | None = None) -> CTROutput:
        """Loss of `labels` given `input_ids` under a task id or a code.

        seq2seq: `labels` are the decoder targets. Decoder-only: `input_ids` hold source and
        target tokens and `labels` is aligned with them (IGNORE on source and padding).
        With `target_only` the LM head runs on target positions only. `packed` (decoder-only,
        `collate_packed`): `input_ids` [N] are the rows' tokens back to back, the layout holds
        the rows and their targets, and no padding is computed.
        """
        if packed is not None:
            if attention_mask is not None or labels is not None or return_logits:
                raise ValueError("a packed pass takes no attention_mask, labels or return_logits")
            embeds, codes, vq_loss = self.embed_packed(input_ids, packed, task_ids, codes, prompt)
            out = self.adapter.forward_packed(self, embeds, packed, target_only)
        else:
            x = self.embed_inputs(input_ids, attention_mask, task_ids, codes, prompt=prompt)
            codes, vq_loss = x.codes, x.vq_loss
            out = self.adapter.forward(self, x, labels, return_logits, target_only)
        return self.target_output(out, vq_loss, codes)

    def target_output(self, out: TargetLogits, vq_loss: torch.Tensor,
                      codes: torch.Tensor | None) -> CTROutput:
        """Token and row losses from an adapter's target logits (`ctr.core.outputs`)."""
        return target_output(out, vq_loss, codes, self.config.vq_weight)

    @property
    def seq2seq(self) -> bool:
        """Read-only: whether the backbone is encoder-decoder (ask `self.adapter` instead)."""
        return self.adapter.seq2seq

    @property
    def body(self) -> nn.Module:
        """A decoder-only backbone without its LM head (returns hidden states)."""
        return getattr(self.backbone, self.backbone.base_model_prefix)

    def lm_logits(self, h: torch.Tensor) -> torch.Tensor:
        """The LM head on hidden states h [..., H] (only where logits are needed)."""
        logits = self.backbone.get_output_embeddings()(h)
        cap = getattr(self.backbone.config, "final_logit_softcapping", None)
        if cap:  # e.g. Gemma 2 caps its logits inside its forward
            logits = torch.tanh(logits / cap) * cap
        return logits

    # ---- training helpers ------------------------------------------------------------
    def freeze_backbone(self, frozen: bool = True) -> None:
        """Stage 1: the LM is a fixed function (no grads, no dropout)."""
        self.backbone_frozen = frozen
        self.backbone.requires_grad_(not frozen)
        self.train(self.training)

    def train(self, mode: bool = True) -> "CTRModel":
        super().train(mode)
        if self.backbone_frozen:
            self.backbone.eval()
        return self

    def ctr_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.state_dict().items() if not k.startswith("backbone.")}

    @torch.no_grad()
    def kmeans_init(self, seed: int | None = None) -> None:
        """Initialise the codebook by k-means over all task encodings (`seed`: the draw of
        the initial centroids, alike on every process; default: the global RNG)."""
        self._require_codes()
        ids = torch.arange(self.config.num_tasks, device=self.encoder.device)
        with seeded(seed, self.encoder.device):
            self.quantizer.init_from_encodings(self.encode_tasks(ids))

    # ---- save / load -----------------------------------------------------------------
    def save_pretrained(self, path: str | Path, save_backbone: bool | None = None,
                        card: CardInfo | None = None) -> None:
        """Config JSON + safetensors + code table + model card README.md (+ the backbone when
        it was trained). `card`: metrics, task types, stage for the card (ctr.core.model_card)."""
        if save_backbone is None:
            save_backbone = self.config.backbone_trained
        self.config.backbone_trained = bool(save_backbone)
        with atomic_dir(path) as tmp:
            write_json(tmp / CONFIG_FILE, self.config.to_dict())
            state = {k: v.detach().contiguous().cpu() for k, v in self.ctr_state_dict().items()}
            save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
            write_json(tmp / CODE_TABLE_FILE, self.code_table())
            if save_backbone:
                self.backbone.save_pretrained(tmp / BACKBONE_DIR)
                if self.tokenizer is not None:
                    self.tokenizer.save_pretrained(tmp / BACKBONE_DIR)
            if self.config.lora:  # the LoRA adapter alone, in PEFT's format (ctr.core.lora)
                save_lora(self.backbone, tmp / LORA_DIR)
            write_model_card(tmp, self, card, final=path)  # never fails the save

    @classmethod
    def from_pretrained(cls, path: str | Path, backbone: PreTrainedModel | None = None,
                        tokenizer: PreTrainedTokenizerBase | None = None,
                        dtype: torch.dtype = torch.float32) -> "CTRModel":
        """A CTR model folder, a run folder (its final model), a checkpoint or a release name,
        as every command takes them (ctr.core.locate; a release is checked against its sha256)."""
        path = require_model_dir(path, "CTRModel.from_pretrained:")
        config = read_config(path)
        if backbone is None:
            source = str(path / BACKBONE_DIR) if config.backbone_trained else config.backbone
            if not source:
                raise ValueError(f"{path / CONFIG_FILE}: no backbone recorded; pass backbone=")
            backbone, tokenizer = load_backbone(source, dtype=dtype)
        if config.lora and not has_lora(backbone):
            load_lora(backbone, path / LORA_DIR)
        model = cls(backbone, config, tokenizer)
        state = load_file(str(path / WEIGHTS_FILE))
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("backbone.")]
        if missing or unexpected:
            raise ValueError(f"{path / WEIGHTS_FILE}: missing {missing}, unexpected {unexpected}")
        return model

    @property
    def device(self) -> torch.device:
        return self.backbone.device
