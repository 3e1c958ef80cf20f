"""Pickle-free, atomic storage: safetensors for tensors, JSON for everything else.

Every writer goes to a temporary file in the destination folder and is renamed into place (keeping the
umask's permissions), so an interrupted run never leaves a half-written file. Model directories are built
on these in `dcvit.files`.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".pkl", ".pickle", ".ckpt")


class ModelFileError(ValueError):
    """A model file that cannot be used (corrupt, mistyped, or not matching its weights): the user's to fix,
    reported in one line naming the file."""

    def __init__(self, message: str):
        super().__init__(" ".join(message.split()))  # names and values read from the file may hold newlines


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        # after writing: mkstemp makes 0600 files, and some writers (safetensors) replace the file we made
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


def read_json_object(path: str | os.PathLike, remedy: str) -> dict[str, Any]:
    """A JSON object this project wrote, or a one-line ValueError naming the file, what is wrong and `remedy`."""
    try:
        value = read_json(path)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON ({error}); {remedy}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path} holds a JSON {type(value).__name__}, not the object dcvit writes; {remedy}")
    return value


def write_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor]) -> None:
    # safetensors refuses shared or non-contiguous storage; clone so any state dict can be saved.
    flat = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(flat, str(tmp))


def refuse_pickle(path: Path) -> None:
    if path.suffix in PICKLE_SUFFIXES:
        raise ModelFileError(
            f"refusing to load {path.name}: pickle files (.pt/.pth/.bin/...) are never unpickled; "
            f"accepted: a directory written by dcvit.save (model.safetensors + spec.json)"
        )


def read_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    path = Path(path)
    refuse_pickle(path)
    try:
        return load_file(str(path))
    except SafetensorError as err:  # truncated, corrupt, or not safetensors at all (pickle bytes, say)
        raise ModelFileError(f"{path} is not a valid safetensors file ({one_line(err, 200)})") from None


def one_line(err: BaseException, limit: int = 1000) -> str:
    return " ".join(str(err).split())[:limit] or type(err).__name__


def short_path(path: object, limit: int = 120) -> str:
    """A path for a one-line message: long ones keep their start and end."""
    text = " ".join(os.fsdecode(path).split()) if isinstance(path, (str, bytes, os.PathLike)) else str(path)
    return text if len(text) <= limit else f"{text[: limit // 2 - 2]}...{text[-(limit // 2 - 2) :]}"


_OS_HINTS = {
    errno.ENOSPC: "the disk is full; free some space or choose an --out on another disk (files are written to a "
    "temporary name and renamed when complete, so nothing was half-written)",
    errno.EDQUOT: "the disk quota is exceeded; free some space or choose an --out elsewhere",
    errno.ENAMETOOLONG: "accepted: file and folder names of at most 255 bytes each, 4096 in all",
    errno.EROFS: "the file system is read-only; choose an --out elsewhere",
    errno.EACCES: "choose a path you may read and write",
    errno.ENOTDIR: "a part of the path is a file, not a folder; accepted: a path through folders",
}


def os_error_line(err: OSError) -> str:
    """An OSError (a full disk, a name too long, a part of a path that is a file) as one line naming the file
    and what would work; the CLI prints it instead of a traceback."""
    what = err.strerror or type(err).__name__
    files = [short_path(f) for f in (err.filename, err.filename2) if f is not None]
    where = f" ({' -> '.join(files)})" if files else ""
    hint = _OS_HINTS.get(err.errno or 0, "")
    return f"{what}{where}" + (f": {hint}" if hint else "")


def tensor_shapes(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor in a safetensors file, from its header alone (no tensor is read)."""
    return {k: shape for k, (_, shape) in tensor_header(path).items()}


# safetensors' dtype codes, named as torch names its dtypes (str(torch.float32) without "torch.")
_DTYPE_NAMES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64"}
_DTYPE_NAMES |= {"I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}


def tensor_header(path: str | os.PathLike) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Name -> (dtype, shape) of every tensor in a safetensors file, from its header alone (no tensor is read);
    dtypes named like torch's (float32, int8, bool, ...)."""
    try:
        with safe_open(str(path), "pt") as f:
            header = {k: (f.get_slice(k).get_dtype(), tuple(f.get_slice(k).get_shape())) for k in f.keys()}
    except SafetensorError as err:  # truncated, corrupt, or not safetensors at all (pickle bytes, say)
        raise ModelFileError(f"{path} is not a valid safetensors file ({one_line(err, 200)})") from None
    return {k: (_DTYPE_NAMES.get(code, code.lower()), shape) for k, (code, shape) in header.items()}


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer state dict into flat tensors (for safetensors) and JSON-able metadata."""
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, per_param in state["state"].items():
        for key, value in per_param.items():
            if torch.is_tensor(value):
                tensors[f"opt.{idx}.{key}"] = value
            else:
                scalars[f"{idx}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("opt."):
            _, idx, key = name.split(".", 2)
            state.setdefault(int(idx), {})[key] = value
    for name, value in meta["scalars"].items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
