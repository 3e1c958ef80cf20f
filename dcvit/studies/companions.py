"""Compressed models as little companions (docs/method.md §9): record a pool once, pick the saver by ΔC on the
calibration split, calibrate thresholds there, report on the test split, and time the real cascade.

The calibration split is a seeded held-out part of the *training* set; the test set never drives a choice.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.data import Subset

import cascade

from ..data import CALIBRATION_SIZE, calibration_indices, eval_transform, load_dataset
from ..evaluation import check_classes, eval_batches
from ..macs import count_macs, default_input_size
from ..progress import progress as progress_bar
from .cascades import first_images, time_cascades


@dataclass(frozen=True)
class CascadeStudy:
    big: str
    costs: dict[str, int]  # MACs per image of every model
    accuracy: dict[str, float]  # test top-1 of every model alone
    ranking: list[tuple[str, float, float]]  # (saver, ΔC, r_match) on the calibration split, best first
    test_ranking: list[tuple[str, float, float]]  # the same on the test split (only to check the choice)
    calibrations: dict[str, cascade.Calibration]  # per saver, thresholds chosen on the calibration split
    tables: dict[str, list[dict]]  # TinySaver-style rows per saver (test split)
    curves: dict[str, cascade.SweepResult] = field(repr=False, default_factory=dict)
    speed: dict = field(default_factory=dict)  # realised vs predicted speed-up of the chosen cascade
    records: dict = field(repr=False, default_factory=dict)  # {"calibration"|"test": {name: cascade.Recorded}}
    choice: cascade.Choice | None = None  # the shipped cascade, chosen and certified (cascade.choose_cascade)

    @property
    def saver(self) -> str:
        return self.choice.members[0] if self.choice is not None else self.ranking[0][0]

    @property
    def chosen(self) -> cascade.Calibration:
        """The shipped cascade's calibration: certified on the part of the calibration split that did not choose it."""
        return self.choice.calibration if self.choice is not None else self.calibrations[self.saver]


def check_saver(name: str, model: nn.Module, big: nn.Module) -> None:
    """Fail in one line if a saver cannot stand in for the big model: the cascade feeds both the same
    batch, so the saver must take the big model's input and predict the same classes."""
    device = next(big.parameters(), torch.zeros(())).device
    x = torch.zeros(1, *default_input_size(big), device=device)
    with torch.no_grad():
        classes = big.eval()(x).shape[-1]
        try:
            out = model.eval()(x)
        except Exception as err:  # any failure here means "wrong input", whatever the model raises
            raise ValueError(
                f"saver {name} does not accept the big model's input {tuple(x.shape[1:])} ({type(err).__name__})"
            ) from None
    if not isinstance(out, torch.Tensor):
        raise ValueError(f"saver {name} returns {type(out).__name__}; a cascade needs a B x classes logits tensor")
    if out.shape != (1, classes):
        raise ValueError(f"saver {name} predicts {out.shape[-1]} classes; the big model predicts {classes}")
    cfgs = [getattr(m, "pretrained_cfg", None) or {} for m in (model, big)]
    norm = [tuple(cfg.get(k) or ()) for cfg in cfgs for k in ("mean", "std")]
    if norm[:2] != norm[2:]:  # e.g. DeiT (ImageNet statistics) next to an augreg ViT (0.5, 0.5)
        warnings.warn(
            f"saver {name} expects mean/std {norm[:2]}, but the study normalises with the big model's "
            f"{norm[2:]}; its accuracy may suffer",
            RuntimeWarning,
            stacklevel=2,
        )


def cascade_splits(
    big: nn.Module,
    data: str = "fashion-mnist",
    calibration_size: int = CALIBRATION_SIZE,
    seed: int = 0,
    test_limit: int | None = None,
):
    """(calibration, test) datasets in the big model's eval transform: the calibration split is the seeded
    held-out part of the training set (never among the shots), the test split optionally a fixed prefix."""
    transform = eval_transform(big)
    train = load_dataset(data, train=True, transform=transform)
    calib = Subset(train, calibration_indices(len(train), calibration_size, seed))
    test = load_dataset(data, train=False, transform=transform)
    if test_limit is not None and test_limit < len(test):
        test = Subset(test, range(test_limit))  # a fixed prefix, for quick runs
    return calib, test


def record_split(models: Mapping[str, nn.Module], dataset, batch_size: int = 256, progress: bool = True):
    """{name: Recorded(probs, labels)}: each model runs once over the split (decoded once, dcvit.evaluation.eval_batches)."""
    loader = eval_batches(dataset, batch_size)
    return {  # dcvit's progress (a bar on a terminal, log lines elsewhere) instead of cascade.record's tqdm
        name: cascade.record(model.eval(), progress_bar(loader, f"record {name}", enabled=progress), progress=False)
        for name, model in models.items()
    }


def measure_speedup(
    saver: nn.Module,
    big: nn.Module,
    thresholds,
    images: torch.Tensor,
    batch_size: int,
    costs: tuple[float, float],
    repeats: int = 7,
    prepare: bool = True,
    committee: tuple[bool, ...] | None = None,
) -> dict:
    """Wall-clock time of the saver -> big cascade, of the big model alone and of the saver alone over `images`
    (CPU), interleaved (dcvit.studies.cascades.time_cascades: every model prepared for inference the same way,
    so the cascade is compared with the big model at its best; prepare=False times them as given).
    saver_speed_ratio = big time / saver time, the measured counterpart of the MACs ratio; exit_ratio is the
    share of these images the saver answered; predicted_speedup = C_B / (C_S + (1 - exit_ratio) * C_B).
    """
    models, names = {"saver": saver, "big": big}, ["saver", "big"]
    out = time_cascades(
        models,
        {"c": (names, thresholds, committee)},
        images,
        batch_size,
        dict(zip(names, costs)),
        repeats,
        prepare,
        ["saver"],
    )["c"]
    seconds = out.pop("alone_seconds")
    return out | {
        "saver_seconds": seconds["saver"],
        "saver_speed_ratio": seconds["big"] / seconds["saver"],
        "exit_ratio": out["exit_ratios"][0],
        "macs_ratio": costs[1] / costs[0],
    }


def time_cascade(
    saver: nn.Module,
    big: nn.Module,
    thresholds,
    test,
    costs: tuple[float, float],
    *,
    images: int = 2000,
    batch_sizes=(256, 1),
    repeats: int | None = None,
    prepare: bool = True,
    committee: tuple[bool, ...] | None = None,
) -> dict[str, dict]:
    """measure_speedup on the first `images` test images at each batch size, keyed "batch{size}". Batch 1
    is timed on a quarter of them and, by default, fewer passes (3 instead of 7): one forward per image is
    slow, and the ratio is what matters."""
    device = next(big.parameters(), torch.zeros(())).device  # timed where the models are
    stacked = first_images(test, images).to(device)
    return {
        f"batch{bs}": measure_speedup(
            saver,
            big,
            thresholds,
            stacked if bs > 1 else stacked[: max(1, len(stacked) // 4)],
            bs,
            costs,
            repeats=repeats or (7 if bs > 1 else 3),
            prepare=prepare,
            committee=committee,
        )
        for bs in batch_sizes
    }


def cascade_study(
    big_name: str,
    models: Mapping[str, nn.Module],
    data: str = "fashion-mnist",
    *,
    calibration_size: int = CALIBRATION_SIZE,
    seed: int = 0,
    max_acc_drop: float = 0.0,
    delta: float = 0.05,
    committee: bool | str = "auto",
    speed_images: int = 2000,
    speed_batches=(256, 1),
    test_limit: int | None = None,
    progress: bool = True,
) -> CascadeStudy:
    """Record every model on the calibration and test splits, rank savers, calibrate and time the best.

    max_acc_drop / delta: the guarantee (cascade.certify): with probability >= 1 - delta over the calibration
    draw, the cascade's top-1 on the population is >= the big model's - max_acc_drop. Each saver's row is
    certified on the whole calibration split; the shipped saver is chosen on one half and certified on the
    other (cascade.choose_cascade), so the choice among savers keeps the promise. committee: the committee
    exit ("auto": on where the calibration data certifies it, see cascade.certify).
    """
    if big_name not in models or len(models) < 2:
        raise ValueError("give the big model and at least one saver")
    big = models[big_name]
    for name, model in models.items():
        if name != big_name:
            check_saver(name, model, big)
    calib, test = cascade_splits(big, data, calibration_size, seed, test_limit)
    for split in (calib, test):  # before any recording: a bigger label set would make every number meaningless
        matched = check_classes(big, split, data, big_name)
        if matched:
            logging.getLogger("dcvit").info(f"{data}: {matched}")
    rec_calib, rec_test = record_split(models, calib, progress=progress), record_split(models, test, progress=progress)
    costs = {name: count_macs(m, default_input_size(big)) for name, m in models.items()}  # what they are fed
    savers = [n for n in models if n != big_name]

    def ranking(rec):
        pool = {n: (rec[n].probs, costs[n]) for n in savers}
        return [
            tuple(r) for r in cascade.select_saver(pool, (rec[big_name].probs, costs[big_name]), rec[big_name].labels)
        ]

    calibrations, tables, curves = {}, {}, {}
    for n in savers:
        stage = [rec_calib[n].probs, rec_calib[big_name].probs]
        calibrations[n] = cascade.certify(
            stage,
            rec_calib[big_name].labels,
            [costs[n], costs[big_name]],
            max_acc_drop,
            delta,
            committee=committee,
            test_probs=[rec_test[n].probs, rec_test[big_name].probs],
            test_labels=rec_test[big_name].labels,
        )
        test_stage = [rec_test[n].probs, rec_test[big_name].probs]
        tables[n] = cascade.report_table(test_stage, rec_test[big_name].labels, [costs[n], costs[big_name]])
        curves[n] = cascade.sweep(test_stage, rec_test[big_name].labels, [costs[n], costs[big_name]])
    accuracy = {n: (r.probs.argmax(1) == r.labels).float().mean().item() for n, r in rec_test.items()}
    rank_calib = ranking(rec_calib)
    choice = cascade.choose_cascade(
        {n: r.probs for n, r in rec_calib.items()},
        rec_calib[big_name].labels,
        costs,
        [(n, big_name) for n in savers],
        max_acc_drop,
        delta,
        committee=committee,
        seed=seed,
        test_probs={n: r.probs for n, r in rec_test.items()},
        test_labels=rec_test[big_name].labels,
    )
    best, chosen = choice.members[0], choice.calibration
    speed = {}
    if speed_batches:
        speed = time_cascade(
            models[best],
            big,
            chosen.thresholds,
            test,
            (costs[best], costs[big_name]),
            images=speed_images,
            batch_sizes=speed_batches,
            committee=chosen.committee,
        )
    records = {"calibration": rec_calib, "test": rec_test}
    return CascadeStudy(
        big_name, costs, accuracy, rank_calib, ranking(rec_test), calibrations, tables, curves, speed, records, choice
    )
