"""Everything one compression run shares: teacher, few-shot images and their teacher tokens, the synthetic
metric set, the Accelerate state, the checkpoint workspace, and the surgery/fine-tune/score steps
configured by CompressConfig (so the driver and the trial read as the paper's Algorithm 1).
"""

from __future__ import annotations

import copy
import hashlib
import math
import time
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

import synth

from .accel import make_accelerator
from .arch import get_adapter
from .config import CompressConfig
from .metric_cache import MetricSetCache, digest, key_fields
from .metric_cache import resolve as resolve_cache
from .metrics import get_metric
from .mimic import FewShotImages, MimicResult, TeacherTokens, mimic
from .progress import bar, logger, progress
from .scoring import Trial, kl_score
from .structures.registry import get_structure
from .workspace import FORMAT, Workspace


def derived_seed(seed: int, key: str) -> int:
    """A seed per fine-tune, from the run seed and the step's name: reruns and resumes repeat it exactly."""
    return (seed * 1_000_003 + zlib.crc32(key.encode())) % 2**31


def tensor_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over names, dtypes, shapes and raw bytes in sorted name order: equal only for equal weights."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def metric_set_inputs(model: nn.Module) -> dict:
    """synth.synthesize's image_size / mean / std for `model`: the input size its adapter reports (a custom
    architecture has no timm data config) and the normalisation the few-shot images get (dcvit.data), so
    synthetic and real images live in the same input space."""
    from .data import data_config

    cfg = data_config(model)
    size = tuple(cfg["input_size"])
    inputs = {"image_size": size}
    for key in ("mean", "std"):
        value = tuple(cfg.get(key) or ())
        # a 3-value default for a 1-channel model: let synth broadcast or reject it with its own message
        if len(value) == size[0] or (value and len(set(value)) == 1):
            inputs[key] = value
    return inputs


class Engine:
    def __init__(
        self,
        teacher: nn.Module,
        data: Dataset,
        config: CompressConfig,
        workdir: Path | None = None,
        resume: bool = False,
        metric_set: synth.SyntheticSet | None = None,
        metric_cache: str | Path | bool | None = None,
    ):
        if len(data) == 0:
            raise ValueError("the few-shot set is empty; give at least one image")
        if not math.isfinite(config.lr):  # CompressConfig checks lr > 0 only; inf trains a NaN model
            raise ValueError(f"lr must be a finite number; got {config.lr}")
        self.config = config
        self.structure = get_structure(config.structure)  # its build() is every trial's and step's surgery
        self.metric = get_metric(config.metric)
        self.accelerator = make_accelerator(config.mixed_precision)
        if self.accelerator.is_main_process:
            logger.info(
                f"compressing on {self.accelerator.device}, {self.accelerator.num_processes} process(es), "
                f"mixed precision {self.accelerator.mixed_precision}"
            )
        self.timings: dict[str, float] = {}
        self.metric_cache = resolve_cache(metric_cache)  # None: off
        start = time.perf_counter()
        self.images = FewShotImages(data, teacher, config.augment)
        self.workspace = self._workspace(workdir, self._settings(teacher, len(data), metric_set), resume)
        try:
            self._prepare(teacher, metric_set)
        except BaseException:  # a failed set-up must not leave a folder that refuses the rerun
            self.workspace.cleanup()
            raise
        self.timings["setup_and_synth"] = time.perf_counter() - start

    def _settings(self, teacher: nn.Module, shots: int, metric_set) -> dict:
        """Everything that determines the result, so a resume never mixes checkpoints of different runs
        (a synthesized metric set follows from the teacher and the config; a given one is hashed)."""
        given = None if metric_set is None else tensor_sha256({"images": metric_set.images})
        self.teacher_sha256 = tensor_sha256(teacher.state_dict())
        return {
            "format": FORMAT,
            # the precision in force (None follows the environment), so a resume under another one is refused
            "config": {
                **{k: v for k, v in self.config.as_dict().items() if k != "progress"},
                "mixed_precision": self.accelerator.mixed_precision,
            },
            "shots": shots,
            "teacher_macs_blocks": len(get_adapter(teacher).blocks(teacher)),
            "teacher_sha256": self.teacher_sha256,
            "few_shot_sha256": tensor_sha256({"fixed": self.images.fixed}),
            "metric_set_sha256": given,
        }

    def _prepare(self, teacher: nn.Module, metric_set: synth.SyntheticSet | None) -> None:
        """Teacher on the accelerator, its tokens for the few shots, and the synthetic metric set."""
        self.teacher = copy.deepcopy(teacher).eval().requires_grad_(False).to(self.accelerator.device)
        self.adapter = get_adapter(teacher)
        self.targets = TeacherTokens(self.teacher, self.images, self.accelerator)
        # A ranking by few-shot loss (the baseline) needs no synthetic set; a given set is reused as is.
        self.metric_set = metric_set or (self._metric_set() if self.metric.needs_metric_set else None)
        if self.metric_set is not None:
            with torch.no_grad():
                self.metric_images = self.metric_set.images.to(self.accelerator.device)
                self.metric_logits = self.teacher(self.metric_images).float()
                # Output tokens are only needed by the MSE-metric ablation: skip that teacher pass otherwise.
                self.metric_features = (
                    self.adapter.features(self.teacher, self.metric_images).float()
                    if self.metric.needs_features
                    else None
                )

    def _workspace(self, workdir: Path | None, settings: dict, resume: bool) -> Workspace:
        """The main process creates (or checks) the run folder first; the others join it afterwards."""
        acc = self.accelerator
        if acc.num_processes > 1 and workdir is None:
            raise ValueError("a multi-process run needs a shared workdir (--out) for its candidates")
        workspace = Workspace(workdir, settings, resume) if acc.is_main_process else None
        acc.wait_for_everyone()
        return workspace or Workspace(workdir, settings, resume=True, is_main=False)

    def _metric_set(self) -> synth.SyntheticSet:
        """The synthetic metric set (Eq. 4-5): made once by the main process (or taken from the metric-set
        cache, dcvit.metric_cache), shared through the workspace."""
        path = self.workspace.root / "metric_set"
        if self.accelerator.is_main_process and not (path / "meta.json").is_file():
            self._cached_or_synthesized().save(path)
        self.accelerator.wait_for_everyone()
        return synth.load(path)

    def _cached_or_synthesized(self) -> synth.SyntheticSet:
        settings = {
            "num_images": self.config.synth_images,
            "iterations": self.config.synth_iterations,
            "jitter": self.config.synth_jitter,
            "seed": self.config.seed,
            **metric_set_inputs(self.teacher),
        }
        cache = None if self.metric_cache is None else MetricSetCache(self.metric_cache)
        fields = None
        if cache is not None:
            fields = key_fields(self.teacher, self.teacher_sha256, settings, self.accelerator.device)
            cached = cache.get(fields)
            if cached is not None:
                logger.info(f"metric set taken from the cache {cache.root / digest(fields)} (no synthesis)")
                return cached
        start = time.perf_counter()
        # log lines, not \r, in a redirected log
        made = synth.synthesize(self.teacher, progress=bar if self.config.progress else False, **settings)
        self.timings["synth"] = time.perf_counter() - start
        if cache is not None and fields is not None:
            cache.put(fields, made)
        return made

    def progress(self, items: Iterable, desc: str):
        return progress(list(items), desc, enabled=self.config.progress and self.accelerator.is_main_process)

    # --- the three steps of every trial and progressive step ------------------------------------
    def build(self, base: nn.Module, plan, blocks: Sequence[int]) -> nn.Module:
        """Surgery on `base`: `blocks` edited as the configured structure does it (Structure.build)."""
        return self.structure.build(self, base, plan, blocks)

    def build_and_tune(
        self, key: str, base: nn.Module, plan, new_blocks: Sequence[int], trained_blocks: Sequence[int], epochs: int
    ) -> tuple[nn.Module, MimicResult, float]:
        """Surgery on new_blocks, then Eq. 3 fine-tuning for trained_blocks; returns (model, fit, seconds)."""
        start = time.perf_counter()
        model = self.build(base, plan, new_blocks)
        fit = self.fine_tune(model, trained_blocks, epochs, key)
        return model, fit, time.perf_counter() - start

    def fine_tune(self, model: nn.Module, compressed: Sequence[int], epochs: int, key: str) -> MimicResult:
        """Eq. 3, training the blocks up to the one right after the last compressed block."""
        last = len(self.adapter.blocks(model)) - 1
        upto = min(max(compressed) + 1, last)
        return mimic(
            model,
            self.targets,
            self.images,
            self.config,
            epochs=epochs,
            upto=upto,
            seed=derived_seed(self.config.seed, key),
            accelerator=self.accelerator,
            desc=key,
        )

    def score(self, model: nn.Module, block: int, train_loss: float, seconds: float, process: int = 0) -> Trial:
        if self.metric_set is None:
            return Trial(
                block=block, score=train_loss, kl=float("nan"), train_loss=train_loss, seconds=seconds, process=process
            )
        x = self.metric_images
        kl = kl_score(self.metric_logits, model, x)
        score = self.metric.score(self, model, x, kl, train_loss)
        if not (math.isfinite(kl) and math.isfinite(score)):  # a blown-up candidate would corrupt the ranking
            raise ValueError(
                f"mimicking diverged: the candidate for block {block} scores {score:.4g} (kl {kl:.4g}) "
                f"on the synthetic set: lower --lr (now {self.config.lr:g})"
            )
        return Trial(block=block, score=score, kl=kl, train_loss=train_loss, seconds=seconds, process=process)
