"""Compositional Task Representations (ICLR 2023) on Hugging Face language models."""
from .backbone import load_backbone
from .config import CTRConfig, TrainConfig
from .modeling import CTRModel, CTROutput
from .trainer import train

__all__ = ["CTRConfig", "TrainConfig", "CTRModel", "CTROutput", "load_backbone", "train"]
__version__ = "0.1.0"
