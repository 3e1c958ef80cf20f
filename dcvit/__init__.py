"""dcvit: few-shot compression of vision transformers (DC-ViT) with cascade integration."""
from . import models  # noqa: F401  registers the shipped models in timm
