"""Which class folder of `imagefolder:PATH` is which of the model's classes.

Folders are listed sorted (torchvision's order), so by count alone `Ankle_boot` became class 0 of a
Fashion-MNIST model whose class 0 is T-shirt/top (33.7% instead of 89.7%). Where the model records its class
names (timm's pretrained_cfg 'label_names', kept in dcvit's model files), folders are matched to them by name
(case, spaces and punctuation aside: `t-shirt_top` is "T-shirt/top"); folders named by numbers are those
classes; otherwise the sorted order stands. Either way one line says which folder is which class index: the
commands print it with their results (`dcvit eval`), or log it (a cascade study).
Only evaluation and calibration remap labels: shots are drawn without them, so their seeded draws stay.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from torch import nn
from torch.utils.data import Dataset, Subset

from .imagefolder import ImageFolder

SHOWN = 12  # folders named in the log line; the rest are counted


def label_names(model: nn.Module) -> tuple[str, ...] | None:
    """The class names the model records (pretrained_cfg 'label_names'), or None."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    names = cfg.get("label_names") if isinstance(cfg, dict) else None
    if not isinstance(names, (list, tuple)) or not names or not all(isinstance(n, str) for n in names):
        return None
    return tuple(names)


def _key(name: str) -> str:
    return re.sub(r"[^0-9a-z]", "", name.casefold())


def _by_name(folders: Sequence[str], names: Sequence[str], spec: str) -> dict[str, int] | None:
    """Folder -> index of the model's class of that name; None when no folder is named after one."""
    wanted = {}
    for i, name in enumerate(names):
        wanted.setdefault(_key(name), i)
    found = {f: wanted.get(_key(f)) for f in folders}
    if all(i is None for i in found.values()):
        return None
    missing = [f for f, i in found.items() if i is None]
    if missing:
        shown = ", ".join(repr(n) for n in names[:SHOWN]) + (", ..." if len(names) > SHOWN else "")
        raise ValueError(
            f"{spec}: class folder {missing[0]!r} is none of the model's classes ({shown}); name every class "
            f"folder after one of them, or number the folders 0 to {len(names) - 1}"
        )
    return found


def _by_number(folders: Sequence[str]) -> dict[str, int] | None:
    if all(f.isdigit() and f.isascii() for f in folders) and len({int(f) for f in folders}) == len(folders):
        return {f: int(f) for f in folders}
    return None


def align_classes(model: nn.Module, dataset: Dataset, spec: str, classes: int) -> str | None:
    """Relabel an image folder's samples with the model's class indices (in place, once); the match in one
    line ("class folders matched by name: a -> 3, ..."), or None for other datasets (their labels are
    canonical). `classes`: how many the model predicts."""
    base = dataset
    while isinstance(base, Subset):
        base = base.dataset
    if not isinstance(base, ImageFolder):
        return None
    if getattr(base, "aligned", None) is not None:
        return base.aligned
    folders = list(base.classes)
    names = label_names(model)
    mapping, how = (_by_name(folders, names, spec), "by name") if names else (None, "")
    if mapping is None:
        mapping, how = _by_number(folders), "by number"
    if mapping is None:
        mapping = {f: i for i, f in enumerate(folders)}
        how = (
            "in sorted order (no folder named after the model's classes)"
            if names
            else ("in sorted order (the model records no class names)")
        )
    wrong = next((f for f, i in mapping.items() if i >= classes), None)
    if wrong is not None:
        raise ValueError(f"{spec}: class folder {wrong!r} is class {mapping[wrong]}, but the model predicts {classes}")
    base.samples = [(path, mapping[folders[t]]) for path, t in base.samples]
    base.targets = [t for _, t in base.samples]
    base.class_to_idx = dict(mapping)
    pairs = [f"{f} -> {mapping[f]}" for f in folders]
    more = f", ... ({len(pairs) - SHOWN} more)" if len(pairs) > SHOWN else ""
    base.aligned = f"class folders matched {how}: {', '.join(pairs[:SHOWN])}{more}"
    return base.aligned
