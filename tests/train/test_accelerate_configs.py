"""configs/accelerate_*.yaml: each parses with Accelerate's own loader and launcher checks
into the mode it names; the trainer refuses the sharding backends it does not support yet.

What needs GPUs is not run here: FSDP's plugin refuses to build without an accelerator
device (Accelerate 1.x), DeepSpeed is not installed, and no launch uses a config on CUDA.
"""
from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import pytest
from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
from accelerate.utils import DistributedType

from ctr.train.parallelism import refuse_sharding

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = {
    "accelerate_ddp.yaml": DistributedType.MULTI_GPU,
    "accelerate_fsdp.yaml": DistributedType.FSDP,
    "accelerate_deepspeed_zero2.yaml": DistributedType.DEEPSPEED,
    "accelerate_deepspeed_zero3.yaml": DistributedType.DEEPSPEED,
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_each_config_parses_with_accelerates_loader(name):
    config = load_config_from_file(str(ROOT / "configs" / name))
    assert isinstance(config, ClusterConfig)
    assert config.distributed_type == CONFIGS[name]
    assert (config.num_processes, config.num_machines, config.mixed_precision) == (8, 1, "bf16")
    if name.startswith("accelerate_deepspeed"):
        assert config.deepspeed_config["zero_stage"] == int(name[-6])
    if name == "accelerate_fsdp.yaml":
        assert config.fsdp_config["fsdp_transformer_layer_cls_to_wrap"] == "T5Block"


def launch_args(name: str):
    """`accelerate launch --config_file configs/NAME -m ctr.cli train`, as the launcher reads it."""
    launch = pytest.importorskip("accelerate.commands.launch")
    if not hasattr(launch, "_validate_launch_command"):
        pytest.skip("this Accelerate has no _validate_launch_command")
    args = launch.launch_command_parser().parse_args(
        ["--config_file", str(ROOT / "configs" / name), "-m", "ctr.cli", "train"])
    return launch._validate_launch_command(args)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_the_launcher_reads_each_config_into_its_mode(name):
    args, defaults, _ = launch_args(name)
    mode = (args.multi_gpu, args.use_fsdp, args.use_deepspeed)
    assert mode == {DistributedType.MULTI_GPU: (True, False, False),
                    DistributedType.FSDP: (False, True, False),
                    DistributedType.DEEPSPEED: (False, False, True)}[CONFIGS[name]]
    assert args.num_processes == 8 and args.mixed_precision == "bf16"


@pytest.mark.parametrize("name", ["accelerate_deepspeed_zero2.yaml", "accelerate_deepspeed_zero3.yaml"])
def test_deepspeed_configs_build_their_plugin(name):
    """The environment the launcher passes on builds Accelerate's DeepSpeedPlugin (which
    does not import deepspeed itself)."""
    from accelerate.utils import DeepSpeedPlugin, prepare_deepspeed_cmd_env
    args, defaults, _ = launch_args(name)
    args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)
    _, env = prepare_deepspeed_cmd_env(args)
    with mock.patch.dict(os.environ, env):
        plugin = DeepSpeedPlugin()
    ds = plugin.deepspeed_config
    assert ds["zero_optimization"]["stage"] == int(name[-6]) and ds["gradient_clipping"] == 1.0


@pytest.mark.parametrize("kind", [DistributedType.FSDP, DistributedType.DEEPSPEED])
def test_the_trainer_refuses_sharding_backends(kind):
    with pytest.raises(NotImplementedError, match="accelerate_ddp.yaml"):
        refuse_sharding(SimpleNamespace(distributed_type=kind))
    for ok in (DistributedType.NO, DistributedType.MULTI_GPU, DistributedType.MULTI_CPU):
        refuse_sharding(SimpleNamespace(distributed_type=ok))
