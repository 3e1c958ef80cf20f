"""A cache of synthetic metric sets (Eq. 4-5): one set per teacher and synthesis settings, shared between runs.

Synthesis is deterministic for a seed, so two runs on the same teacher with the same settings (the demo's auto
and dcvit families, a rerun, a dense family on another day) would optimise the same images again. The cache
keys a set by a sha256 over everything that determines it:
- the teacher's weights (dcvit.engine.tensor_sha256) and its spec (dcvit.files.model_spec) and module text;
- every argument synth.synthesize gets (count, iterations, jitter, seed, image size, mean, std);
- the generator's own source (synth/*.py), torch's version, the device type and, on CPU, the thread count
  (kernels may sum in another order with other threads): a cached set is the one this run would make.

Where (`resolve`): an explicit folder; else $DCVIT_METRIC_CACHE; else $XDG_CACHE_HOME/dcvit/metric-sets
(~/.cache/dcvit/metric-sets). "off" (argument or environment) or False turns it off. `dcvit demo` keeps its
own under --out (checkpoints/metric-sets).

An entry is a folder KEY/ holding the set (tensors.safetensors + meta.json) and entry.json (the key's fields
and the tensors file's sha256). It is written in a temp folder and renamed into place, so a killed write
leaves no entry; an entry whose fields or checksum do not match is ignored with a log line and replaced.
The cache is an optimisation: a failure to read or write it never fails a run.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

import synth
from synth.synthetic_set import TENSORS_FILE

from .progress import logger
from .storage import one_line

ENV = "DCVIT_METRIC_CACHE"
OFF = ("off", "none", "0", "false", "no")
FORMAT = 1
ENTRY = "entry.json"


def default_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "dcvit" / "metric-sets"


def resolve(where: str | os.PathLike | bool | None) -> Path | None:
    """The cache folder in force, or None when the cache is off (see the module docstring)."""
    if where is False:
        return None
    if where is None or where is True:
        where = os.environ.get(ENV) or default_root()
    if str(where).strip().lower() in OFF:
        return None
    return Path(where)


def _generator_source() -> str:
    """sha256 of synth's source: a changed generator makes other images, so its entries no longer count."""
    digest = hashlib.sha256()
    for path in sorted(Path(synth.__file__).parent.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _spec(teacher: nn.Module) -> Any:
    from .files import model_spec

    try:
        return model_spec(teacher)
    except Exception as err:  # a model without a spec (a hand-built adapter) is still keyed by its text
        return f"no spec: {type(err).__name__}"


def key_fields(teacher: nn.Module, teacher_sha256: str, settings: dict[str, Any], device: torch.device) -> dict:
    """Everything the synthesized set follows from, as JSON (settings: synth.synthesize's arguments)."""
    fields = {
        "format": FORMAT,
        "teacher_sha256": teacher_sha256,
        "teacher_spec": _spec(teacher),
        "teacher_module": hashlib.sha256(str(teacher).encode()).hexdigest(),
        "synthesis": settings,
        "generator_sha256": _generator_source(),
        "torch": torch.__version__,
        "device": device.type,
        "threads": torch.get_num_threads() if device.type == "cpu" else None,
    }
    return json.loads(json.dumps(fields, sort_keys=True, default=list))  # tuples as lists: what a reader sees


def digest(fields: dict) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:32]


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class MetricSetCache:
    def __init__(self, root: Path):
        self.root = Path(root)

    def get(self, fields: dict) -> synth.SyntheticSet | None:
        """The cached set for `fields`, or None (missing; or unusable, said in a log line)."""
        folder = self.root / digest(fields)
        if not (folder / ENTRY).is_file():
            return None
        try:
            entry = json.loads((folder / ENTRY).read_text())
            if entry.get("fields") != fields:
                raise ValueError("its recorded settings differ from this run's")
            if _file_sha256(folder / TENSORS_FILE) != entry.get("tensors_sha256"):
                raise ValueError("its tensors do not match their recorded checksum")
            made = synth.load(folder)
            wanted = fields["synthesis"]
            if len(made) != wanted["num_images"] or list(made.images.shape[1:]) != list(wanted["image_size"]):
                raise ValueError(f"it holds {len(made)} images of {list(made.images.shape[1:])}")
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as err:
            logger.info(f"metric-set cache: ignoring {folder} ({one_line(err, 200)}); synthesizing anew")
            return None
        return made

    def put(self, fields: dict, made: synth.SyntheticSet) -> Path | None:
        """Store `made` under `fields` (replacing an unusable entry); None when it could not be written."""
        folder = self.root / digest(fields)
        tmp = None
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=self.root))
            made.save(tmp)
            entry = {"fields": fields, "tensors_sha256": _file_sha256(tmp / TENSORS_FILE)}
            (tmp / ENTRY).write_text(json.dumps(entry, indent=2, sort_keys=True) + "\n")
            os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp's 0700 would hide the cache from the folder's other users
            if folder.exists():  # an unusable entry (get() said so): moved aside first, a rename cannot overwrite it
                os.replace(folder, Path(tempfile.mkdtemp(prefix=".old.", dir=self.root)) / "entry")
            os.replace(tmp, folder)
            tmp = None
        except OSError as err:
            logger.info(f"metric-set cache: could not write {folder} ({one_line(err, 200)}); continuing without")
            return None
        finally:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
            for old in self.root.glob(".old.*"):
                shutil.rmtree(old, ignore_errors=True)
        return folder


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask
