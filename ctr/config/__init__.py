"""Configuration dataclasses: the single source of truth for options.

`CTRConfig` (`model`) describes the model, saved with every checkpoint; `TrainConfig`
(`train`) describes a training run and holds the CTRConfig of the module it builds
(`TrainConfig.ctr`); `MixtureOptions` (`mixture`) are the training-mixture options every
training command shares. The CLI is generated from the fields and their `help` metadata
(`ctr.cli`), so an option is added once. A TrainConfig is what its user asked for;
`resolved()` returns a copy with what the preset and the codebook recipe decide filled in,
and a run writes both (train_config.json, resolved_config.json).
"""
from ctr.config.fields import check_choice, from_known_keys, opt, parse_delimiter
from ctr.config.mixture import MixtureOptions
from ctr.config.model import CODE_PLACING_INITS, TRAIN_MODULE_OPTIONS, CTRConfig
from ctr.config.train import (RESOLVED_CONFIG_FILE, SPREAD_ENCODER_LR_SCALE, TRAIN_CONFIG_FILE,
                              TrainConfig, read_run_config)

__all__ = ["CODE_PLACING_INITS", "CTRConfig", "MixtureOptions", "RESOLVED_CONFIG_FILE",
           "SPREAD_ENCODER_LR_SCALE", "TRAIN_CONFIG_FILE", "TRAIN_MODULE_OPTIONS", "TrainConfig", "check_choice",
           "from_known_keys", "opt", "parse_delimiter", "read_run_config"]
