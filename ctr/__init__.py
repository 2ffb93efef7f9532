"""Compositional Task Representations (ICLR 2023) on Hugging Face language models."""
from ctr.core.backbone import load_backbone
from ctr.config import CTRConfig, TrainConfig
from ctr.core.model import CTRModel, CTROutput
from ctr.train.trainer import train

__all__ = ["CTRConfig", "TrainConfig", "CTRModel", "CTROutput", "load_backbone", "train"]
__version__ = "0.1.0"
