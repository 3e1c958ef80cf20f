"""Adapter for Hugging Face transformers' DeiT: DeiTForImageClassification, DeiTForImageClassificationWithTeacher
(logits: the mean of the class-token and distillation-token heads) and DeiTModel.

DeiT's blocks, config fields and attention are ViT's (`DeiTLayer` is `ViTLayer`), so this is the ViT adapter
with DeiT's classes; the embeddings add a distillation token after the class token, which the blocks treat as
any other token. Without an image processor the statistics are DeiTImageProcessor's defaults (bicubic, 0.875 crop).
"""

from __future__ import annotations

from . import register_adapter
from .hf_common import DEIT_PROCESSOR
from .hf_vit import HFViTAdapter


@register_adapter
class HFDeiTAdapter(HFViTAdapter):
    name = "transformers-deit"
    family = "transformers DeiT"
    classes = ("DeiTForImageClassification", "DeiTForImageClassificationWithTeacher", "DeiTModel")
    config_class = "DeiTConfig"
    processor = DEIT_PROCESSOR
