"""Synthetic "metric set" generation by model inversion (docs/method.md §4, Eq. 4-5).

DeepInversion/DeepDream-style: optimise Gaussian noise so a trained classifier
assigns it chosen labels, under total-variation and L2 image priors, with random
jitter and flips. Depends on torch only (safetensors and PIL are imported lazily
when saving files; tqdm is used for the progress bar when installed).

    import synth
    s = synth.synthesize(model, 100)        # shape/mean/std from model.pretrained_cfg
    s.save("runs/metric_set")               # directory: tensors.safetensors + meta.json
    s.save_grid("runs/metric_set.png")
    s = synth.load("runs/metric_set")
    model(s.images)                         # images are in the normalised input space

Modules: ``deepinversion`` (the optimisation loop), ``regularizers`` (TV and L2
priors), ``augment`` (jitter/flip), ``model_inputs`` (shape, mean/std and class
count from the model), ``synthetic_set`` (the result and its file format).
"""

from .deepinversion import synthesize
from .synthetic_set import SyntheticSet, load

__all__ = ["synthesize", "SyntheticSet", "load"]
