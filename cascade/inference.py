"""Preparing models for fast cascade inference on CPU (and GPU) without changing what they answer.

A cascade saves what its cheap first model does not spend, so that model must actually be fast, not only
low in MACs. Small CNNs are the usual savers and run far below their MACs on CPU when used as trained:
every BatchNorm is an extra pass over the activations, and oneDNN's convolutions are much faster in
channels-last layout than in the default NCHW one. `prepare_for_inference` fixes both, generically, and
keeps a change only if the prepared model still gives the original's outputs on an example batch.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def prepare_for_inference(
    model: nn.Module, example: torch.Tensor, channels_last: bool = True, rtol: float = 1e-3, atol: float = 1e-4
) -> nn.Module:
    """An eval-mode copy of `model` that computes the same outputs on `example` (within rtol/atol), faster.

    Tried in order, each kept only if the outputs on `example` still match the original's:
    1. BatchNorm folded into the preceding layer (torch.fx traces the model; the result is an fx
       GraphModule, so attributes such as `pretrained_cfg` are not carried over) and channels-last
       convolution weights, so activations flow in the layout oneDNN and cuDNN are fastest with;
    2. BatchNorm folding only; 3. channels-last only; 4. the unchanged eval-mode copy, with a warning
       naming what failed.
    Some models break under these rewrites (a `.view` on a channels-last activation, a layer shared by two
    BatchNorms, a Linear + BatchNorm1d pair on 3-D input); the check on `example` is what catches that.
    Inputs need no change. The given model is left as it was (mode included).
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"prepare_for_inference takes a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(example, torch.Tensor):
        raise ValueError(f"example must be a batch of inputs (a tensor), got {type(example).__name__}")
    reference = copy.deepcopy(model).eval()
    with torch.no_grad():
        expected = reference(example)
    has_bn = any(isinstance(m, _BATCH_NORMS) for m in reference.modules())
    has_conv = channels_last and any(isinstance(m, nn.Conv2d) for m in reference.modules())
    attempts = [(fold, cl) for fold, cl in ((has_bn, has_conv), (has_bn, False), (False, has_conv)) if fold or cl]
    failures = []
    for fold, cl in dict.fromkeys(attempts):  # drop a repeated attempt, keep the order
        try:
            candidate = _rewrite(copy.deepcopy(reference), fold, cl)
            with torch.no_grad():
                got = candidate(example)
            torch.testing.assert_close(got, expected, rtol=rtol, atol=atol)  # tensors, tuples or dicts of them
            return candidate
        except Exception as err:  # any failure means "this rewrite does not suit this model": try the next
            what = " + ".join(n for n, on in (("BatchNorm folding", fold), ("channels-last", cl)) if on)
            failures.append(f"{what}: {type(err).__name__}")
    if failures:
        warnings.warn(
            f"{type(model).__name__} is left as it was for inference ({'; '.join(failures)})",
            RuntimeWarning,
            stacklevel=2,
        )
    return reference


def _rewrite(model: nn.Module, fold_batch_norms: bool, channels_last: bool) -> nn.Module:
    if fold_batch_norms:
        from torch.fx.experimental.optimization import fuse  # lazily: fx is heavy and rarely needed

        model = fuse(model, inplace=True)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model
