"""Weights from a local file (`--checkpoint FILE`, `resolve_model(..., checkpoint=FILE)`): a safetensors file, or a
torch file read with `weights_only=True` (tensors and plain containers only: nothing is unpickled into code).

Training scripts wrap the weights in various ways; the usual ones are unwrapped: a dict holding them under
"state_dict", "model" or "module" (timm's, Lightning's and DDP's checkpoints, the EMA copy when that is all there
is), and key prefixes of DDP ("module.") and torch.compile ("_orig_mod."). Every other mismatch of names or shapes
with the model is a one-line ValueError: the file was made for another model or other --model-kwargs.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .progress import logger

WRAPPERS = ("state_dict", "model", "module", "state_dict_ema", "model_ema")  # where scripts put the weights
PREFIXES = ("module.", "_orig_mod.")  # DDP and torch.compile
ACCEPTED = "accepted: a .safetensors file, or a torch state dict (torch.save(model.state_dict(), FILE))"


def _short(names: list[str], limit: int = 3) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def _read(path: Path) -> Any:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(path, device="cpu")
        except Exception as err:  # safetensors' own error type for a damaged or foreign file
            raise ValueError(f"checkpoint {path.name} is not a readable safetensors file ({err}); {ACCEPTED}") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise ValueError(
            f"checkpoint {path.name} cannot be read with weights_only=True ({first}); {ACCEPTED}"
        ) from None


def _is_weights(value: Any) -> bool:
    return isinstance(value, dict) and bool(value) and all(torch.is_tensor(v) for v in value.values())


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors in `path` by name, unwrapped and without DDP / torch.compile prefixes."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} {'is not a file' if path.exists() else 'does not exist'}")
    content = _read(path)
    if not _is_weights(content) and isinstance(content, dict):
        content = next((content[k] for k in WRAPPERS if _is_weights(content.get(k))), content)
    if not _is_weights(content):
        raise ValueError(f"checkpoint {path.name} holds no weights by name (a dict of tensors); {ACCEPTED}")
    weights = {}
    for name, tensor in content.items():
        while name.startswith(PREFIXES):
            name = next(name[len(p) :] for p in PREFIXES if name.startswith(p))
        weights[name] = tensor
    return weights


def _fit_names(weights: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A model whose every name has one extra leading part (dcvit's wrapper of a transformers model: "hf.") takes
    a file of the bare model's names."""
    heads = {name.split(".", 1)[0] for name in expected}
    if len(heads) == 1 and "." in next(iter(expected)) and not set(weights) & set(expected):
        prefix = f"{heads.pop()}."
        return {prefix + name: t for name, t in weights.items()}
    return weights


def _classifier_extras(model: nn.Module, names: list[str]) -> list[str]:
    """The file's classifier weights a headless model (num_classes=0) has no place for: left out, as timm does."""
    from .arch import is_headless

    classifier = (getattr(model, "pretrained_cfg", None) or {}).get("classifier")
    if not classifier or not is_headless(model):
        return []
    parts = [classifier] if isinstance(classifier, str) else list(classifier)
    return [n for n in names if any(n == p or n.startswith(f"{p}.") for p in parts)]


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """`model` with the weights of `path` (in place; returned), or a one-line ValueError naming what does not
    fit: missing names, unexpected names, or shapes (the first few of each)."""
    weights = read_weights(path)
    expected = model.state_dict()
    weights = _fit_names(weights, expected)
    dropped = _classifier_extras(model, sorted(set(weights) - set(expected)))
    if dropped:
        logger.info(f"checkpoint {Path(path).name}: headless model, classifier weights left out ({_short(dropped)})")
        weights = {n: t for n, t in weights.items() if n not in dropped}
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    shapes = [
        f"{n} {tuple(weights[n].shape)} vs {tuple(expected[n].shape)}"
        for n in expected
        if n in weights and weights[n].shape != expected[n].shape
    ]
    problems = [
        f"{len(missing)} missing ({_short(missing)})" if missing else "",
        f"{len(unexpected)} unexpected ({_short(unexpected)})" if unexpected else "",
        f"{len(shapes)} of another shape (file vs model: {_short(shapes, 2)})" if shapes else "",
    ]
    if any(problems):
        raise ValueError(
            f"checkpoint {Path(path).name} does not fit the model: {'; '.join(p for p in problems if p)}; "
            f"accepted: weights of this architecture with these settings (see --model-kwargs)"
        )
    model.load_state_dict(weights)
    return model
