"""Preparing models for fast cascade inference on CPU (and GPU) without changing what they answer.

A cascade saves what its cheap first model does not spend, so that model must actually be fast, not only
low in MACs. Small CNNs are the usual savers and run far below their MACs on CPU when used as trained:
every BatchNorm is an extra pass over the activations, and oneDNN's convolutions are much faster in
channels-last layout than in the default NCHW one. `prepare_for_inference` fixes both, generically.
"""
from __future__ import annotations

import copy
import warnings

from torch import nn
import torch

_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def prepare_for_inference(model: nn.Module, channels_last: bool = True) -> nn.Module:
    """An eval-mode copy of `model` that computes the same outputs (up to float rounding), faster.

    - BatchNorm layers that follow a convolution are folded into it (torch.fx traces the model; a model
      fx cannot trace keeps its BatchNorm layers, with a warning).
    - With channels_last, 2-D convolution weights move to channels-last memory, so activations flow in
      the layout oneDNN and cuDNN are fastest with. Inputs need no change.
    The given model is left as it was (mode included).
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"prepare_for_inference takes a torch.nn.Module, got {type(model).__name__}")
    prepared = copy.deepcopy(model).eval()
    if any(isinstance(m, _BATCH_NORMS) for m in prepared.modules()):
        prepared = _fold_batch_norms(prepared)
    if channels_last and any(isinstance(m, nn.Conv2d) for m in prepared.modules()):
        prepared = prepared.to(memory_format=torch.channels_last)
    return prepared


def _fold_batch_norms(model: nn.Module) -> nn.Module:
    from torch.fx.experimental.optimization import fuse  # imported lazily: fx is heavy and rarely needed

    try:
        return fuse(model, inplace=True)
    except Exception as err:  # symbolic tracing fails on data-dependent control flow; the model stays correct
        warnings.warn(f"{type(model).__name__}: torch.fx could not trace it ({type(err).__name__}), "
                      f"so its BatchNorm layers stay unfolded", stacklevel=3)
        return model
