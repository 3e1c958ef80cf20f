"""Feature mimicking (docs/method.md §6, Eq. 3): fine-tune a student to reproduce the teacher's output tokens.

Loss: MSE (mean) between all output tokens after the final norm, before pooling and head (or the class
token only, an ablation). Trainable: everything before the blocks (patch/position embeddings, class token)
and the blocks up to and including the one right after the last compressed block; later blocks and the
tail (final norm, head) are frozen. AdamW, cosine schedule, loss warm-up, gradient clipping applied.
Accelerate places tensors and handles mixed precision: autocast for the forward pass, and the optimizer goes
through `accelerator.prepare`, so with fp16 the loss is scaled, the gradients are unscaled before clipping
(`accelerator.clip_grad_norm_`) and a step with inf/NaN gradients is skipped. The model is placed on the
device but not prepared: under `accelerate launch` each process fine-tunes its own candidate, so a
DistributedDataParallel wrapper (which averages gradients across processes) would mix different models.
"""

from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from .accel import make_accelerator
from .arch import get_adapter
from .config import CompressConfig
from .data import eval_transform, train_transform
from .progress import interactive
from .rebuild import restored_modes
from .recovery import Best, Outputs, TailAverage, block_loss, logit_kl, model_outputs
from .views import get_view


class FewShotImages:
    """The few-shot set as model inputs: a fixed tensor (eval transform) and, when augmenting, fresh views."""

    def __init__(self, dataset: Dataset, model: nn.Module, augment: bool):
        items = [dataset[i][0] for i in range(len(dataset))]
        self.is_pil = not torch.is_tensor(items[0])
        if augment and not self.is_pil:
            raise ValueError(
                "augmentation needs PIL images; pass a dataset without a transform (e.g. dcvit.data.few_shot_subset)"
            )
        self.raw = items
        self.augment = augment
        to_tensor = eval_transform(model) if self.is_pil else (lambda t: t)
        self.fixed = torch.stack([to_tensor(item) for item in items])
        self.train_view = train_transform(model) if augment else None

    def __len__(self) -> int:
        return len(self.raw)

    def joined(self, extra: torch.Tensor) -> FewShotImages:
        """These images and `extra` (model-input tensors, e.g. the synthetic metric set) as one fixed set."""
        if self.augment:
            raise ValueError("extra tensor inputs cannot join augmented (PIL) shots")
        out = copy.copy(self)
        out.fixed = torch.cat([self.fixed, extra.to(self.fixed.dtype).cpu()])
        out.raw = [*self.raw, *out.fixed[len(self.raw) :]]
        return out

    def epoch(self, gen: torch.Generator, batch_size: int):
        """(indices, images) batches for one epoch, shuffled; augmented views when augmenting."""
        order = torch.randperm(len(self), generator=gen)
        for start in range(0, len(self), batch_size):
            idx = order[start : start + batch_size]
            if self.augment:
                yield idx, torch.stack([self.train_view(self.raw[i]) for i in idx.tolist()])
            else:
                yield idx, self.fixed[idx]


@dataclass(frozen=True)
class MimicResult:
    final_loss: float  # mean loss of the last epoch (the "few-shot training loss")
    losses: tuple[float, ...]  # per epoch
    seconds: float
    images_per_second: float
    selected_epoch: int | None = None  # with a `select` score: the epoch whose weights were kept (0: the start)


def seed_everything(seed: int) -> torch.Generator:
    """Seed every RNG augmentation may touch (timm's RandAugment uses `random`), for exact reruns."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def trainable_parameters(model: nn.Module, upto: int | None) -> list[nn.Parameter]:
    """Embeddings and blocks 0..upto (all blocks if upto is None); never the tail (final norm, head)."""
    adapter = get_adapter(model)
    frozen = {id(p) for m in adapter.tail_modules(model) for p in m.parameters()}
    if upto is not None:
        frozen |= {id(p) for b in adapter.blocks(model)[upto + 1 :] for p in b.parameters()}
    return [p for p in model.parameters() if id(p) not in frozen]


def mimic_loss(student: Outputs, teacher: Outputs, config: CompressConfig, cls_index: int | None) -> torch.Tensor:
    """Eq. 3, plus the logit KL and the block outputs' MSE when the config weighs them."""
    loss = token_loss(student.tokens, teacher.tokens, config.mimic_tokens, cls_index)
    if config.mimic_logits:
        loss = loss + config.mimic_logits * logit_kl(student.logits, teacher.logits)
    if config.mimic_blocks:
        loss = loss + config.mimic_blocks * block_loss(student.blocks, teacher.blocks)
    return loss


def token_loss(student: torch.Tensor, teacher: torch.Tensor, tokens: str, cls_index: int | None) -> torch.Tensor:
    if tokens == "cls":
        if cls_index is None:
            raise ValueError("CLS-only mimicking needs a model with a class token")
        return F.mse_loss(student[:, cls_index], teacher[:, cls_index])
    return F.mse_loss(student, teacher)


class BadTeacherError(ValueError):
    """The teacher's weights or outputs are not finite: no student can mimic it (not a learning-rate problem)."""


class TeacherTokens:
    """The teacher's Outputs (tokens; logits and block outputs when `config` weighs them); computed once for the
    fixed images and reused when the inputs are the same every epoch (no augmentation, no random view)."""

    CHUNK = 1024  # images per teacher pass when caching: a large refinement set must not be one batch

    def __init__(self, teacher: nn.Module, images: FewShotImages, accelerator, config: CompressConfig | None = None):
        self.teacher, self.adapter, self.accelerator = teacher.eval(), get_adapter(teacher), accelerator
        self.logits = bool(config and config.mimic_logits)
        self.blocks = bool(config and config.mimic_blocks)
        check_teacher(teacher)
        x = images.fixed
        fresh = images.augment or bool(config and get_view(config.mimic_views).random)
        self.cached = (
            None if fresh else _cat([self.compute(x[i : i + self.CHUNK]) for i in range(0, len(x), self.CHUNK)])
        )

    def serves(self, config: CompressConfig, images: FewShotImages) -> bool:
        """Whether these targets hold what `config`'s loss reads, for `images`' inputs."""
        fresh = images.augment or get_view(config.mimic_views).random
        return (
            (self.logits or not config.mimic_logits)
            and (self.blocks or not config.mimic_blocks)
            and not (fresh and self.cached is not None)
        )

    @torch.no_grad()
    def compute(self, x: torch.Tensor) -> Outputs:
        with self.accelerator.autocast():
            out = model_outputs(self.adapter, self.teacher, x.to(self.accelerator.device), self.logits, self.blocks)
        tokens = out.tokens
        if not torch.isfinite(tokens).all():  # e.g. finite weights overflowing in half precision
            raise BadTeacherError(
                "the teacher's output tokens are not finite (NaN or inf) on the few-shot images: it cannot be "
                "mimicked; check the teacher model (or run without --mixed-precision fp16)"
            )
        return out

    def __call__(self, idx: torch.Tensor, x: torch.Tensor) -> Outputs:
        return self.cached[idx] if self.cached is not None else self.compute(x)


def _cat(parts: list[Outputs]) -> Outputs:
    blocks = None if parts[0].blocks is None else tuple(torch.cat(b) for b in zip(*(p.blocks for p in parts)))
    logits = None if parts[0].logits is None else torch.cat([p.logits for p in parts])
    return Outputs(torch.cat([p.tokens for p in parts]), logits, blocks)


def check_teacher(teacher: nn.Module) -> None:
    """A teacher with NaN/inf weights is a bad file or a broken training run, not a fine-tune to retune: say so
    before the student's loss turns NaN and reads as divergence."""
    tensors = [*teacher.named_parameters(), *teacher.named_buffers()]
    bad = [name for name, t in tensors if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise BadTeacherError(
            f"the teacher is a bad model: its weights hold NaN or inf ({', '.join(bad[:3])}"
            f"{' ...' if len(bad) > 3 else ''}, {len(bad)} tensors); no student can mimic it: check the teacher "
            f"file or the run that trained it"
        )


# A fine-tune ends below its starting loss. Measured on fmnist_vit12 (4 blocks compressed, 128 shots, 5 epochs,
# Probe's loss): 0.64x the start at lr 3e-4 (the default) and 0.60x at lr 0.01; 2.2x at lr 0.03, 3.5x at 0.1 and
# 4.8x at 1, where every weight stays finite (the frozen final norm keeps a wrecked student's tokens bounded).
DIVERGED_RATIO = 2.0
# ... and above this share of the targets' mean square (a student answering zeros sits at 1.0): a student that
# starts as the teacher starts at a loss of about 0, which any noise multiplies. A random-init torchvision Swin V2
# fine-tuned on 4 noise images at the default lr ends at 0.30 of it (12x its start) and is no divergence; lr 10
# on fmnist_vit12 ends at 0.94, against a mean square of 0.54 (floor 0.27), and is.
DIVERGED_FLOOR = 0.5


class Probe:
    """The loss on the first batch of fixed images (no augmentation, eval mode: no randomness drawn), before and
    after a fine-tune: the same images both times, and the last update counts (a 1-step run included)."""

    def __init__(self, student: nn.Module, targets: TeacherTokens, images: FewShotImages, config, trainer):
        self.student, self.config, self.trainer = student, config, trainer
        self.adapter, self.cls_index = get_adapter(student), get_adapter(student).class_token_index(student)
        self.x = images.fixed[: config.batch_size]
        self.target = targets(torch.arange(len(self.x)), self.x).tokens
        self.scale = self._loss(torch.zeros_like(self.target))  # the targets' mean square
        self.start = self.loss()

    @torch.no_grad()
    def loss(self) -> float:
        with restored_modes(self.student):
            self.student.eval()
            with self.trainer.autocast():
                feats = self.adapter.features(self.student, self.x.to(self.trainer.device)).float()
        return self._loss(feats)

    def _loss(self, feats: torch.Tensor) -> float:
        return token_loss(feats, self.target, self.config.mimic_tokens, self.cls_index).item()


def check_converged(final: float, start: float, scale: float, lr: float) -> None:
    """Refuse a fine-tune that ended far above where it started (Probe's loss): the weights it leaves are no
    mimic of the teacher (lr 10 on fmnist_vit12 left a 9% top-1 model, every weight finite)."""
    if not math.isfinite(final) or final > max(DIVERGED_RATIO * start, DIVERGED_FLOOR * scale):
        raise ValueError(
            f"mimicking diverged: the loss ended at {final:.4g}, {final / max(start, 1e-30):.3g}x its starting "
            f"{start:.4g} (more than {DIVERGED_RATIO:g}x): lower --lr (now {lr:g}; CompressConfig.lr in Python)"
        )


def check_finite(epoch: int, loss: float, params: list[nn.Parameter] | None, lr: float) -> None:
    """Stop a diverged fine-tune: its NaN model would otherwise be scored, checkpointed and saved."""
    # the largest |weight| of every tensor in one foreach kernel (NaN and inf propagate), then one sync
    weights_ok = not params or bool(torch.isfinite(torch.stack(torch._foreach_norm(params, math.inf))).all())
    if not math.isfinite(loss) or not weights_ok:
        what = "" if weights_ok else ", non-finite weights"
        raise ValueError(
            f"mimicking diverged at epoch {epoch} (loss {loss:.4g}{what}): lower --lr "
            f"(now {lr:g}; CompressConfig.lr in Python)"
        )


def make_trainer(accelerator):
    """A new Accelerator sharing `accelerator`'s process state and precision (see dcvit.accel.make_accelerator)."""

    return make_accelerator(accelerator.mixed_precision)


def mimic(
    student: nn.Module,
    targets: TeacherTokens,
    images: FewShotImages,
    config: CompressConfig,
    *,
    epochs: int,
    upto: int | None,
    seed: int,
    accelerator,
    desc: str = "mimicking",
    select: Callable[[nn.Module], float] | None = None,
    average: int = 0,
) -> MimicResult:
    """Fine-tune `student` in place by Eq. 3; deterministic for a seed on CPU. With `select` (a label-free
    score, lower is better: the synthetic-set KL), the student ends with the weights of its best-scoring epoch,
    the start included; with `average`, with the mean of its weights after each of its last `average` epochs."""
    if select and average:
        raise ValueError("mimic: select keeps one epoch's weights and average the mean of several: pass one")
    if not targets.serves(config, images):
        raise ValueError("the teacher's targets were made for another config (logits, block outputs or views)")
    gen = seed_everything(seed)
    view = get_view(config.mimic_views)
    adapter = get_adapter(student)
    params = trainable_parameters(student, None if config.train_scope == "all" else upto)
    trainable = {id(p) for p in params}
    for p in student.parameters():
        p.requires_grad_(id(p) in trainable)
    student.to(accelerator.device).train()
    # A fresh Accelerator on the same state for each fine-tune: its loss scaler starts anew (a resumed run
    # repeats the uninterrupted one) and the prepared optimizer is released with it (nothing accumulates).
    trainer = make_trainer(accelerator)
    # foreach: one kernel per update step over all the tensors instead of a Python loop (the default on CPU);
    # the same arithmetic, so the same weights (tests/test_mimic.py checks it against the loop)
    adamw = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, foreach=True)
    optimizer = trainer.prepare(adamw)
    steps_per_epoch = math.ceil(len(images) / config.batch_size)
    total_steps = epochs * steps_per_epoch
    warmup_epochs = config.loss_warmup * epochs
    cls_index = adapter.class_token_index(student)
    losses, start, step = [], time.perf_counter(), 0
    probe = Probe(student, targets, images, config, trainer)  # the loss before any update
    keeper = TailAverage(epochs, min(average, epochs)) if average else Best(student, select)
    # A bar per fine-tune on a terminal only: in a log, the run's own progress lines say enough.
    shown = config.progress and trainer.is_main_process and interactive()
    bar = tqdm(range(epochs), desc=desc, leave=False, disable=not shown)
    for epoch in bar:
        loss_scale = min((epoch + 1) / warmup_epochs, 1.0) if warmup_epochs > 0 else 1.0
        running = 0.0
        for idx, x in images.epoch(gen, config.batch_size):
            for group in optimizer.param_groups:  # cosine schedule over the run, per step
                group["lr"] = 0.5 * config.lr * (1 + math.cos(math.pi * step / total_steps))
            x = view(x, gen)  # the same view for teacher and student
            target = targets(idx, x)
            with trainer.autocast():
                out = model_outputs(
                    adapter, student, x.to(trainer.device), target.logits is not None, bool(target.blocks)
                )
            loss = mimic_loss(out, target, config, cls_index)
            optimizer.zero_grad(set_to_none=True)
            trainer.backward(loss * loss_scale)
            trainer.clip_grad_norm_(params, config.clip_grad)  # unscales fp16 gradients first
            optimizer.step()  # skipped by the loss scaler when the fp16 gradients overflowed
            value = loss.item()
            check_finite(epoch + 1, value, None, config.lr)  # the weights: once per epoch, below
            running += value * len(idx)
            step += 1
        losses.append(running / len(images))
        check_finite(epoch + 1, losses[-1], params, config.lr)
        bar.set_postfix(loss=f"{losses[-1]:.4g}")
        keeper.update(student, epoch + 1)
    keeper.restore(student)
    student.eval().requires_grad_(False)
    check_converged(probe.loss(), probe.start, probe.scale, config.lr)
    seconds = time.perf_counter() - start
    return MimicResult(
        losses[-1],
        tuple(losses),
        seconds,
        epochs * len(images) / max(seconds, 1e-9),
        keeper.epoch,  # the kept epoch (select), else None
    )


def refine(
    student: nn.Module,
    teacher: nn.Module,
    data: Dataset,
    config: CompressConfig = CompressConfig(),
    *,
    epochs: int = 5,
    seed: int | None = None,
) -> MimicResult:
    """Eq. 3 once more, on more unlabeled images, for a compressed model that will serve as a cascade's
    saver (docs/method.md §9): every block learns (never the tail), `epochs` passes over `data`, in place.

    Compression stays few-shot; this is a separate, optional stage for when the deployment has more
    unlabeled images than the shots. Keep `data` disjoint from the calibration split (dcvit.data.unlabeled_subset).
    Memory: the images as one tensor and, without augmentation, the teacher's output tokens for all of them
    (images x tokens x width floats); with augmentation the tokens are recomputed for every batch.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1; got {epochs}")
    if len(data) == 0:
        raise ValueError("the refinement set is empty; give at least one image")
    accelerator = make_accelerator(config.mixed_precision)
    images = FewShotImages(data, teacher, config.augment)
    teacher = copy.deepcopy(teacher).eval().requires_grad_(False).to(accelerator.device)
    targets = TeacherTokens(teacher, images, accelerator, config)
    scope = config.replace(train_scope="all")
    seed = config.seed if seed is None else seed
    return mimic(
        student, targets, images, scope, epochs=epochs, upto=None, seed=seed, accelerator=accelerator, desc="refine"
    )
