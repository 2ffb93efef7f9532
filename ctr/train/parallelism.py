"""Which Accelerate setups `ctr train` runs under.

One process, or data parallel (DDP: `accelerate launch`, `torchrun`, GPUs or CPU with
gloo; configs/accelerate_ddp.yaml). The FSDP and DeepSpeed ZeRO configs in configs/ are
written for backbones that do not fit one GPU, but the trainer refuses them for now
(docs/scale.md, "The paper's run on 8 GPUs"), because it:
- reads whole parameters from the unwrapped model between steps (the code table, code
  usage, checkpoints and final/ are computed and saved by the main process alone), which
  FSDP and ZeRO-3 shard over the processes;
- saves and restores `optimizer.state_dict()` as one process's full state, which ZeRO and
  FSDP partition;
- accumulates micro-batches itself (`no_sync`) and steps optimizer and scheduler once per
  global batch, where DeepSpeed steps inside `backward` and needs its own
  gradient_accumulation_steps and micro-batch size.
Refusing at start beats a hang at the first checkpoint or a crash at the first log.
"""
from __future__ import annotations

import os

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType

SHARDED = {DistributedType.FSDP: "FSDP", DistributedType.DEEPSPEED: "DeepSpeed",
           DistributedType.MEGATRON_LM: "Megatron-LM"}


def refuse_sharding(acc: Accelerator) -> None:
    """Stop before training when Accelerate was launched with a sharding backend."""
    name = SHARDED.get(acc.distributed_type)
    if name is not None:
        raise NotImplementedError(
            f"ctr train runs on one device or data parallel (DDP), not under {name} yet: it "
            "reads and saves whole parameters and optimizer states from the main process and "
            "accumulates micro-batches itself (see ctr/train/parallelism.py). Launch with "
            "configs/accelerate_ddp.yaml; for a stage 2 that does not fit one GPU, train LoRA "
            "adapters (--lora)")


def make_accelerator(precision: str) -> Accelerator:
    """An Accelerator that is distributed whenever the launcher started several processes.

    `torchrun` on a machine without GPUs sets WORLD_SIZE but Accelerate stays single-process
    unless told to use the CPU (ACCELERATE_USE_CPU=1, `accelerate launch --cpu`): every
    process would then train its own copy into the same folder. Here the CPU is chosen for
    it; a state initialised earlier in the process that cannot be changed is an error."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    accel = getattr(torch, "accelerator", None)
    has_accelerator = accel.is_available() if accel is not None else torch.cuda.is_available()
    acc = Accelerator(mixed_precision=precision, cpu=world > 1 and not has_accelerator)
    refuse_sharding(acc)  # FSDP / DeepSpeed: not yet (ctr.train.parallelism)
    if world > 1 and acc.num_processes != world:
        raise RuntimeError(
            f"WORLD_SIZE={world} processes were launched but Accelerate set up "
            f"{acc.num_processes}: each would train its own copy into one folder. On CPU launch "
            "with `ACCELERATE_USE_CPU=1 torchrun --nproc_per_node N -m ctr.cli train ...` or "
            "`accelerate launch --cpu --num_processes N -m ctr.cli train ...`")
    return acc
