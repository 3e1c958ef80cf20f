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

from .accel import announce, make_accelerator
from .arch import get_adapter, is_headless
from .config import CompressConfig
from .metric_cache import MetricSetCache, digest, key_fields
from .metric_cache import resolve as resolve_cache
from .metrics import get_metric
from .mimic import FewShotImages, MimicResult, TeacherTokens, mimic
from .progress import RunClock, bar, logger, progress
from .scoring import Trial, kl_score
from .structure_registry import get_structure
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


def metric_for(model: nn.Module, config: CompressConfig, tell: bool = True) -> CompressConfig:
    """`config` with its selection metric decided: None is kl, or mse for a headless model (num_classes=0: its
    outputs are features, whose softmax means nothing), said in the log; kl asked for on a headless model is
    kept, with a warning."""
    headless = is_headless(model)
    if config.metric is None:
        metric = "mse" if headless else "kl"
        if headless and tell:
            logger.info(
                "headless model (num_classes=0: it outputs features, not class scores): candidates are ranked "
                "by feature MSE to the teacher (metric mse)"
            )
        return config.replace(metric=metric)
    if headless and config.metric == "kl" and tell:
        logger.warning(
            "metric kl on a headless model (num_classes=0) compares softmaxes of its features, which are no class "
            "scores; mse, the default for such models, compares the features themselves"
        )
    return config


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
        start = time.perf_counter()
        self.accelerator = make_accelerator(config.mixed_precision, config.device)
        announce("compressing", self.accelerator)  # device, processes, precision: the first line
        self.headless = is_headless(teacher)
        self.config = config = metric_for(teacher, config, tell=self.accelerator.is_main_process)
        self.structure = get_structure(config.structure)  # its build() is every trial's and step's surgery
        self.metric = get_metric(config.metric)
        self.clock = RunClock(start, enabled=config.progress and self.accelerator.is_main_process)
        self.timings: dict[str, float] = {}
        # Results a family's targets share within this run, by key (e.g. the search's scores of its first step,
        # which starts from the teacher whatever the target): computed by the first target that needs them.
        self.memo: dict = {}
        self.metric_cache = resolve_cache(metric_cache)  # None: off
        self.images = FewShotImages(data, teacher, config.augment)
        settings = self._settings(teacher, len(data), metric_set)
        self.workspace = Workspace.shared(workdir, settings, resume, self.accelerator)
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
            # (not the device: a run may resume elsewhere, as the progress setting may change)
            "config": {
                **{k: v for k, v in self.config.as_dict().items() if k not in ("progress", "device")},
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
        # A ranking by few-shot loss (the baseline) needs no synthetic set, unless a recovery lever reads it; a
        # given set is reused as is.
        wanted = self.metric.needs_metric_set or self.config.needs_synthetic_inputs
        self.metric_set = metric_set or (self._metric_set() if wanted else None)
        # What the fine-tunes mimic on: the shots, and the synthetic images when they join them (unit importance
        # and the other structure decisions still read the shots alone, self.images).
        self.inputs = self.images.joined(self.metric_set.images) if self.config.mimic_synthetic else self.images
        self.targets = TeacherTokens(self.teacher, self.inputs, self.accelerator, self.config)
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

    def _metric_set(self) -> synth.SyntheticSet:
        """The synthetic metric set (Eq. 4-5): made once by the main process (or taken from the metric-set
        cache, dcvit.metric_cache), shared through the workspace."""
        path = self.workspace.root / "metric_set"
        self.workspace.main_only(lambda: self._synthesize(path))
        return synth.load(path)

    def _synthesize(self, path: Path) -> None:
        if (path / "meta.json").is_file():  # a resumed run's
            return
        self._cached_or_synthesized().save(path)

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

    def fine_tune(
        self,
        model: nn.Module,
        compressed: Sequence[int],
        epochs: int,
        key: str,
        select=None,
        average: int = 0,
        config: CompressConfig | None = None,
    ) -> MimicResult:
        """Eq. 3, training the blocks up to the one right after the last compressed block (`select`, `average`:
        see mimic), with `config`'s views and batch size (the run's config by default)."""
        config = config or self.config
        last = len(self.adapter.blocks(model)) - 1
        upto = min(max(compressed) + 1, last)
        fit = mimic(
            model,
            self.targets_for(config),
            self.inputs,
            config,
            epochs=epochs,
            upto=upto,
            seed=derived_seed(self.config.seed, key),
            accelerator=self.accelerator,
            desc=key,
            select=select,
            average=average,
        )
        self.clock.advance(epochs)
        return fit

    def targets_for(self, config: CompressConfig) -> TeacherTokens:
        """The teacher's targets for a fine-tune under `config`: the run's cached ones, or fresh ones per step where
        `config`'s views are random and the run's are not (the final recovery's own views)."""
        if self.targets.serves(config, self.inputs):
            return self.targets
        return TeacherTokens(self.teacher, self.inputs, self.accelerator, config)

    def skip(self, epochs: int) -> None:
        """Fine-tuning epochs the run planned but will not spend here (a checkpoint has them, or another
        process of an Accelerate run does them): the whole-run estimate leaves them out."""
        self.clock.skip(epochs)

    @torch.no_grad()
    def fidelity(self, model: nn.Module) -> dict[str, float]:
        """How closely `model` answers as the teacher on the shots (as the teacher saw them): the share whose
        top-1 class agrees, or for a headless model the mean squared difference of the outputs."""
        model = model.eval().to(self.accelerator.device)
        agree, squared, n = 0.0, 0.0, len(self.images)
        for i in range(0, n, self.config.batch_size):
            x = self.images.fixed[i : i + self.config.batch_size].to(self.accelerator.device)
            student, teacher = model(x).float(), self.teacher(x).float()
            agree += (student.argmax(1) == teacher.argmax(1)).sum().item()
            squared += (student - teacher).pow(2).flatten(1).mean(1).sum().item()
        if self.headless:
            return {"shots": n, "output_mse": squared / n}
        return {"shots": n, "top1_agreement": agree / n}

    def synthetic_kl(self, model: nn.Module) -> float:
        """Eq. 6's KL of `model` on the synthetic metric set (label-free), e.g. to choose among a fine-tune's epochs."""
        return kl_score(self.metric_logits, model, self.metric_images)

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
