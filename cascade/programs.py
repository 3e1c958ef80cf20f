"""One member as a program file that torch alone runs: torch.export (pt2), TorchScript or ONNX (docs/method.md §9).

    save_program(member, example, "pt2", folder / "model.pt2")   # checked: read back, it answers as the member
    load_program(folder / "model.pt2")                           # an nn.Module taking a batch of inputs
    load_member(folder)                                          # cascade.load's default member reader

Every program takes a batch of any size (the rows reaching a later member vary from batch to batch). A written
program is read back and must give the member's logits on the example batch and on one row of it, else nothing
is kept. Reading: pt2 with torch.export.load, TorchScript with torch.jit.load, ONNX with onnxruntime (an optional
package, imported only for ONNX). torch.export.load unpickles some payloads (sample inputs, tensor subclasses,
opaque objects); a pt2 file is read only with torch.load forced to weights_only and is refused when it holds an
opaque object, so a hostile file cannot run code through pickle. Programs are still code: serve your own.
"""

from __future__ import annotations

import importlib.util
import json
import os
import warnings
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn
from torch.export import Dim

from .errors import CascadeFileError

# format -> the program's file name in its folder
PROGRAMS = {"pt2": "model.pt2", "torchscript": "model.ts", "onnx": "model.onnx"}
FORMATS = tuple(PROGRAMS)
ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")  # torch.onnx's exporter needs the first two, serving the last
DCVIT_FILES = ("spec.json", "member.json")  # dcvit's model files, read by dcvit's reader (below)
# Installed packages declare member readers here (name -> "module:function"); dcvit declares "dcvit".
READERS_GROUP = "cascade.member_readers"
RTOL, ATOL = 1e-4, 1e-4  # a program's logits against the eager member's (float32 reorderings, ONNX kernels)


# --- writing ---------------------------------------------------------------------------------------
def check_format(format: str) -> None:
    """A known format whose packages are installed, or a one-line ValueError saying what to install."""
    if format not in PROGRAMS:
        raise ValueError(f"unknown export format {format!r}; accepted: {', '.join(FORMATS)}")
    if format == "onnx":
        missing = [p for p in ONNX_PACKAGES if importlib.util.find_spec(p) is None]
        if missing:
            raise ValueError(
                f"the onnx format needs the packages {', '.join(ONNX_PACKAGES)} (missing: {', '.join(missing)}); "
                f"pip install {' '.join(ONNX_PACKAGES)}, or export to pt2 or torchscript"
            )


def save_program(module: nn.Module, example: torch.Tensor, format: str, file: Path) -> None:
    """Write `module` (in eval mode) as a `format` program to `file`, then read it back and check it answers as
    `module` on `example` (a batch of inputs) and on its first row; a mismatch removes the file, in one line."""
    check_format(format)
    if not isinstance(example, torch.Tensor) or example.ndim < 1 or example.shape[0] < 1:
        raise ValueError("example must be a non-empty batch of inputs (a tensor with the batch first)")
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            _WRITERS[format](module, _two_rows(example), Path(file))
            try:
                _check_answers(module, load_program(file), example, file)
            except BaseException:
                Path(file).unlink(missing_ok=True)
                raise
    finally:
        module.train(was_training)


def _two_rows(example: torch.Tensor) -> torch.Tensor:
    """A batch of at least 2: torch.export and ONNX would fix a batch of 1 as the constant 1."""
    return torch.cat([example, example]) if example.shape[0] == 1 else example


def _write_pt2(module: nn.Module, example: torch.Tensor, file: Path) -> None:
    program = torch.export.export(module, (example,), dynamic_shapes=({0: Dim("batch", min=1)},))
    torch.export.save(program, file)


def _write_torchscript(module: nn.Module, example: torch.Tensor, file: Path) -> None:
    with warnings.catch_warnings():  # torch flags torch.jit.script as deprecated; TorchScript is what was asked
        warnings.simplefilter("ignore", FutureWarning)
        try:
            scripted = torch.jit.script(module)
        except Exception as err:  # TorchScript's compiler fails with many error types on unsupported Python
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ValueError(
                f"{type(module).__name__} cannot be compiled by TorchScript ({first[:200]}); export it to pt2 instead"
            ) from None
        torch.jit.save(scripted, str(file))


def _write_onnx(module: nn.Module, example: torch.Tensor, file: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's notes on opsets and decompositions
        program = torch.onnx.export(
            module,
            (example,),
            dynamo=True,
            input_names=["images"],
            output_names=["logits"],
            dynamic_shapes=({0: Dim("batch", min=1)},),
            verbose=False,
        )
        program.save(str(file))


_WRITERS = {"pt2": _write_pt2, "torchscript": _write_torchscript, "onnx": _write_onnx}


def _check_answers(module: nn.Module, program: nn.Module, example: torch.Tensor, file: Path) -> None:
    for batch in (example, example[:1]):
        want, got = module(batch), program(batch)
        if not isinstance(got, torch.Tensor) or got.shape != want.shape:
            shape = list(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
            raise ValueError(f"{file} answers {shape} for a batch of {len(batch)}, the model {list(want.shape)}")
        if not torch.allclose(got.float(), want.float(), rtol=RTOL, atol=ATOL):
            diff = float((got.float() - want.float()).abs().max())
            raise ValueError(
                f"{file} does not answer as the model on the example (largest logit difference {diff:.3g}, "
                f"accepted up to {ATOL:g} + {RTOL:g} x |logit|); export to another format"
            )


# --- reading ---------------------------------------------------------------------------------------
def load_program(file: str | os.PathLike) -> nn.Module:
    """The program in `file` (model.pt2, model.ts or model.onnx, told by its suffix) as a module in eval mode."""
    file = Path(file)
    kind = next((f for f, name in PROGRAMS.items() if Path(name).suffix == file.suffix), None)
    if kind is None:
        raise CascadeFileError(f"{file} is not a program file (accepted: {', '.join(PROGRAMS.values())})")
    if kind == "onnx":
        return OnnxProgram(file)
    try:
        if kind == "pt2":
            return _read_pt2(file)
        with warnings.catch_warnings():  # torch flags torch.jit.load as deprecated; the file is TorchScript
            warnings.simplefilter("ignore", FutureWarning)
            return torch.jit.load(str(file), map_location="cpu").eval()
    except CascadeFileError:
        raise
    except Exception as err:  # a damaged archive fails anywhere in torch's readers, with any error type
        raise CascadeFileError(f"{file} is not a readable {kind} program ({_first_line(err)})") from None


def _read_pt2(file: Path) -> nn.Module:
    _refuse_opaque_objects(file)
    with _weights_only_loads():
        return ExportedMember(torch.export.load(file))


def _refuse_opaque_objects(file: Path) -> None:
    """torch.export.load unpickles an archive's opaque objects with plain pickle: refuse a file that has one."""
    with zipfile.ZipFile(file) as archive:
        for name in archive.namelist():
            if name.endswith("_constants_config.json"):
                config = json.loads(archive.read(name)).get("config", {})
                for fqn, meta in config.items():
                    path = str(meta.get("path_name", "")) if isinstance(meta, dict) else ""
                    if not path.startswith("tensor_"):
                        raise CascadeFileError(
                            f"{file}: constant {fqn!r:.60} is not a tensor ({path!r:.40}); accepted: programs "
                            f"whose constants are tensors (other objects are unpickled)"
                        )


@contextmanager
def _weights_only_loads() -> Iterator[None]:
    """Every torch.load in the block with weights_only=True, whatever its caller asks (torch reads the variable
    at each call). Process-wide while it lasts: read programs from one thread at a time."""
    key, before = "TORCH_FORCE_WEIGHTS_ONLY_LOAD", os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ[key] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before


class ExportedMember(nn.Module):
    """A torch.export program as a module. It runs as it was exported (in eval mode, whatever train() says):
    train() and eval() only set the flag, where the program's own module refuses to be called with them."""

    def __init__(self, program: torch.export.ExportedProgram):
        super().__init__()
        self.program = program.module()

    def train(self, mode: bool = True) -> ExportedMember:
        self.training = mode
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.program(x)


class OnnxProgram(nn.Module):
    """An ONNX program run by onnxruntime on CPU, as a module: a float tensor batch in, logits out."""

    def __init__(self, file: Path):
        super().__init__()
        if importlib.util.find_spec("onnxruntime") is None:
            raise CascadeFileError(f"{file} is an ONNX program: reading it needs onnxruntime (pip install onnxruntime)")
        import onnxruntime

        try:
            self.session = onnxruntime.InferenceSession(str(file), providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime's own exception types
            raise CascadeFileError(f"{file} is not a readable onnx program ({_first_line(err)})") from None
        self.input_name = self.session.get_inputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.session.run(None, {self.input_name: x.detach().cpu().contiguous().numpy()})[0]
        return torch.from_numpy(out).to(x.device)


def load_member(folder: str | os.PathLike) -> nn.Module:
    """cascade.load's default member reader: the one program in `folder` (torch only; ONNX with onnxruntime),
    or a dcvit model file read by the reader dcvit declares (entry point group READERS_GROUP), loaded only then:
    cascade itself never imports dcvit."""
    folder = Path(folder)
    found = [name for name in PROGRAMS.values() if (folder / name).is_file()]
    if len(found) > 1:
        raise CascadeFileError(f"{folder} holds {len(found)} programs ({', '.join(found)}); a member folder holds one")
    if found:
        return load_program(folder / found[0])
    if any((folder / name).is_file() for name in DCVIT_FILES):
        try:
            load_dcvit_member = _declared_reader("dcvit")
        except ImportError as err:
            raise CascadeFileError(
                f"{folder} holds a dcvit model file, which needs the dcvit package to read ({_first_line(err)}); "
                f"install dcvit, or load a folder written by `dcvit export` (torch only)"
            ) from None
        return load_dcvit_member(folder)
    raise CascadeFileError(
        f"{folder} holds no member cascade.load can read (accepted: one of {', '.join(PROGRAMS.values())}, or a "
        f"dcvit model file: {' or '.join(DCVIT_FILES)}); pass load_member to read another format"
    )


def _declared_reader(name: str) -> Callable[[Path], nn.Module]:
    """The member reader an installed package declared under `name`; ImportError when none is (or it fails)."""
    from importlib.metadata import entry_points

    for entry in entry_points(group=READERS_GROUP, name=name):
        return entry.load()
    raise ImportError(f"no package declares a {name!r} reader in the entry-point group {READERS_GROUP}")


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0][:200]}" if text else type(err).__name__
