"""The main job on the embedded default (`make demo`): compress the shipped Fashion-MNIST teacher with
100 unlabeled shots into dense families of three structures side by side (auto: the structure search;
dcvit: the paper; drop: block dropping) at equal MACs, pick a saver for a lossless cascade on a held-out
calibration split, and write report.md, report.json and PNG plots.
"""

from __future__ import annotations

import copy
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from scipy.stats import spearmanr

from ..cascade_files import save_cascade
from ..config import BLOCK_DROP, CompressConfig
from ..data import CALIBRATION_SIZE, eval_transform, few_shot_subset, load_dataset, unlabeled_subset
from ..driver import compress_family
from ..evaluation import eval_batches, evaluate
from ..factory import resolve_model
from ..macs import count_macs
from ..mimic import refine
from ..planning import block_drop_macs
from ..storage import atomic_path, write_json
from ..structure_registry import BASELINE_STRUCTURE, DEFAULT_STRUCTURE, PAPER_STRUCTURE
from ..workspace import Workspace
from .cascades import compare_cascades, first_images, time_cascades
from .companions import cascade_study
from .demo_report import REFINED, markdown, summary_table
from .guaranteed import best, guaranteed_cascades, save_records, timing_chains, with_speed
from .plots import accuracy_vs_macs, cascade_curves, metric_vs_error

TEACHER = "fmnist_vit12"
COMPANIONS = ("fmnist_vit_tiny", "fmnist_cnn")
# The three structures side by side (registry names; checkpoint folders and report.json keys use them too)
AUTO, DCVIT, DROP = DEFAULT_STRUCTURE, PAPER_STRUCTURE, BASELINE_STRUCTURE


@dataclass(frozen=True)
class DemoSettings:
    shots: int = 100
    drops: tuple[int, ...] = (1, 3, 5)  # every structure runs at the MACs of dropping k blocks
    extra_targets: tuple[float, ...] = (0.4, 0.3)  # and at these fractions: the accuracy-vs-MACs curve's deep end
    calibration_size: int = CALIBRATION_SIZE
    candidate_eval_images: int = 2000  # test images for the metric-vs-error figure
    test_limit: int | None = None  # evaluate on the first N test images only (--fast)
    speed_images: int = 2000  # test images the cascades are timed on
    speed_repeats: int = 7  # interleaved passes per timing (the median is reported)
    # Savers: auto members below this share of the teacher's MACs are also entered refined on `saver_images`
    # more unlabeled training images (disjoint from shots and calibration) for `saver_epochs` (0: none)
    saver_below: float = 0.5
    saver_images: int = 2000
    saver_epochs: int = 5
    config: CompressConfig = CompressConfig()
    seed: int = 0
    # One synthetic metric set for the three families (same teacher and settings), kept in
    # OUT/checkpoints/metric-sets across reruns (dcvit.metric_cache); False: each family synthesizes its own.
    metric_cache: bool = True

    @classmethod
    def fast(cls) -> DemoSettings:
        return cls(
            shots=50,
            drops=(1, 2),
            extra_targets=(),
            calibration_size=1000,
            candidate_eval_images=500,
            test_limit=2000,
            speed_images=500,
            speed_repeats=3,
            saver_below=0.9,  # the 83% member: --fast has no deep ones
            saver_images=200,
            saver_epochs=2,
            config=CompressConfig(epochs=8, trial_epochs=2, synth_images=20, synth_iterations=40, search_steps=2),
        )


def _log(message: str) -> None:
    # a status line on stderr through logging (`dcvit: ...` from the CLI, silenced by --quiet), not stdout
    logging.getLogger("dcvit").info(message)


def run_demo(out: str | Path = "runs/demo", settings: DemoSettings = DemoSettings(), progress: bool = True) -> dict:
    start = time.perf_counter()
    out = Path(out)
    config = settings.config.replace(seed=settings.seed, progress=progress)
    teacher = resolve_model(TEACHER, weights="pretrained")
    shots = few_shot_subset("fashion-mnist", settings.shots, settings.seed, settings.calibration_size)
    teacher_macs = count_macs(teacher)
    targets = [block_drop_macs(teacher, k) for k in settings.drops] + [
        int(f * teacher_macs) for f in settings.extra_targets
    ]
    checkpoints = fresh_checkpoints(out)
    cache = checkpoints / "metric-sets" if settings.metric_cache else False
    _log(
        f"structure search (auto) at {[round(t / teacher_macs, 3) for t in targets]} of the teacher's MACs, "
        f"{settings.shots} shots"
    )
    auto = compress_family(
        teacher, targets, shots, config.replace(structure=AUTO), workdir=checkpoints / AUTO, metric_cache=cache
    )
    _log("DC-ViT (the paper's structure) at the same MACs")
    family = compress_family(
        teacher, targets, shots, config.replace(structure=DCVIT), workdir=checkpoints / DCVIT, metric_cache=cache
    )
    test = load_dataset("fashion-mnist", train=False, transform=eval_transform(teacher))
    candidate_figure = _candidate_study(family[0], checkpoints / DCVIT, test, out, settings.candidate_eval_images)
    _log("block-dropping baseline (PRACTISE-style selection, same fine-tune budget)")
    # One family: every drop target ranks the same single-block trials, so they run once.
    drops = compress_family(
        teacher, targets, shots, config.replace(**BLOCK_DROP), workdir=checkpoints / DROP, metric_cache=cache
    )

    models = {
        TEACHER: teacher,
        **{family_name(AUTO, r, teacher_macs): r.model for r in auto},
        **{family_name(DCVIT, r, teacher_macs): r.model for r in family},
    }
    models.update(refined_savers(teacher, auto, teacher_macs, settings, config))
    models.update({name: resolve_model(name, weights="pretrained") for name in COMPANIONS})
    _log("recording the pool on the calibration and test splits; calibrating a lossless cascade")
    study = cascade_study(
        TEACHER,
        models,
        "fashion-mnist",
        calibration_size=settings.calibration_size,
        seed=settings.seed,
        max_acc_drop=0.0,
        progress=progress,
        speed_batches=(),  # the cascades compared below are timed instead, the chosen one among them
        test_limit=settings.test_limit,
    )
    _log("certifying two- and three-stage cascades of the teacher, its compressed models and the companions")
    kinds = {name: _kind(name) for name in models}
    records = study.records
    save_records(out / "records.safetensors", records, study.costs, kinds)  # for tools/bench_guarantee.py
    options = compare_cascades(kinds, study.costs, records["calibration"], records["test"], study.ranking)
    guaranteed = guaranteed_cascades(
        kinds, study.costs, records["calibration"], records["test"], study.ranking, seed=settings.seed
    )
    timed = time_cascades(
        models,
        timing_chains(guaranteed),
        first_images(test, settings.speed_images),
        256,
        study.costs,
        settings.speed_repeats,
    )
    guaranteed = with_speed(guaranteed, timed)
    chosen = best(guaranteed)
    cal = chosen.choice.calibration
    shipped = save_cascade(
        out / "cascade",
        [models[n] for n in chosen.members],
        () if cal.fallback else cal.thresholds,
        [study.costs[n] for n in chosen.members],
        list(chosen.members),
        info={"chosen_by": "cheapest certified cascade, any scope, eps 0", "report": chosen.as_json()},
        kinds=list(chosen.kinds[-1:] if cal.fallback else chosen.kinds),
        committee=None if cal.fallback else cal.committee,
        exit_fractions=None if cal.fallback else cal.test_exit_ratios,  # on the test split (info: report)
    )
    _log(f"chosen cascade {' -> '.join(chosen.members)} written to {shipped} (`dcvit eval --model {shipped}`)")
    test_batches = eval_batches(test, limit=settings.test_limit)  # decoded once for the five models
    drop_top1 = [evaluate(r.model, test_batches, progress=progress)["top1"] for r in drops]

    test_images = min(settings.test_limit or len(test), len(test))
    report = _report_json(
        study,
        options,
        guaranteed,
        {AUTO: auto, DCVIT: family},
        drops,
        drop_top1,
        settings,
        teacher_macs,
        test_images,
        time.perf_counter() - start,
    )
    report["figures"] = _figures(out, study, chosen, report, teacher_macs) + [candidate_figure["path"]]
    report["candidates"] = candidate_figure
    write_json(out / "report.json", report)
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text(markdown(report, study))
    _log(f"done in {report['seconds']:.0f} s -> {out}/report.md")
    print(summary_table(report))
    return report


def fresh_checkpoints(out: Path) -> Path:
    """The demo's checkpoint folder, emptied. A non-empty --out that an earlier demo did not make is refused,
    so the demo never deletes what it did not create."""
    marker = out / ".dcvit-demo"
    if out.is_file() or (out.is_dir() and any(out.iterdir()) and not marker.is_file()):
        raise ValueError(f"{out} is not empty and was not made by `dcvit demo`; choose a new or empty --out")
    root = out / "checkpoints"
    for structure in (AUTO, DCVIT, DROP):
        shutil.rmtree(root / structure, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    marker.touch()
    return root


def refined_savers(teacher, results, teacher_macs: int, settings: DemoSettings, config: CompressConfig) -> dict:
    """{name: copy refined on more unlabeled images} for the deep members (docs/method.md §9): a saver is
    useful when it agrees with the teacher on the images it is sure of (r_match), and 100 shots leave the
    deepest members far from it; the few-shot members stay in the pool beside these."""
    deep = [r for r in results if r.macs < settings.saver_below * teacher_macs]
    if not deep or not settings.saver_epochs:
        return {}
    extra = unlabeled_subset(
        "fashion-mnist", settings.saver_images, settings.seed, settings.calibration_size, settings.shots
    )
    _log(f"refining {len(deep)} deep auto members as savers on {len(extra)} more unlabeled images")
    refined = {}
    for r in deep:
        model = copy.deepcopy(r.model)
        refine(model, teacher, extra, config, epochs=settings.saver_epochs)
        refined[family_name(AUTO, r, teacher_macs) + REFINED] = model
    return refined


def family_name(structure: str, result, teacher_macs: int) -> str:
    return f"{structure}-{100 * result.macs / teacher_macs:.1f}%"


def _candidate_study(result, root: Path, test, out: Path, images: int) -> dict:
    """Fig. 4 at our scale: do the trial's synthetic-set scores track the candidates' real test error?"""
    test_batches = eval_batches(test, limit=images)
    blocks = list(result.trials)  # candidate order
    scores = [result.trials[b].score for b in blocks]
    losses = [result.trials[b].train_loss for b in blocks]
    trials = Workspace.existing(root)
    errors = [
        1 - evaluate(trials.load(Workspace.trial_key(DCVIT, result.plan, b)), test_batches, progress=False)["top1"]
        for b in blocks
    ]
    rho_metric = float(spearmanr(scores, errors).statistic)
    rho_loss = float(spearmanr(losses, errors).statistic)
    path = metric_vs_error(scores, errors, losses, blocks, out / "metric_vs_error.png", rho_metric, rho_loss)
    return {
        "blocks": blocks,
        "kl_scores": scores,
        "train_losses": losses,
        "test_errors": errors,
        "test_images": min(images, len(test)),
        "spearman_metric": rho_metric,
        "spearman_train_loss": rho_loss,
        "path": str(path),
    }


def _report_json(
    study, options, guaranteed, families: dict, drops, drop_top1, settings, teacher_macs, test_images, seconds
) -> dict:
    rows = {
        structure: [
            {
                "target": round(r.plan.macs_target / teacher_macs, 4),
                "macs": r.macs,
                "top1": study.accuracy[family_name(structure, r, teacher_macs)],
                "blocks": list(r.blocks),
                "mlp_hidden": r.plan.record().get("mlp_hidden"),  # a search plan records the full width
                "structure": [b["edit"] for b in r.structure],
            }
            for r in results
        ]
        for structure, results in families.items()
    }
    return {
        "teacher": {"name": TEACHER, "top1": study.accuracy[TEACHER], "macs": teacher_macs},
        **rows,
        "block_drop": [
            {
                "dropped": list(r.blocks),
                "macs": r.macs,
                "top1": top1,
                "target": round(r.plan.macs_target / teacher_macs, 4),
            }
            for r, top1 in zip(drops, drop_top1)
        ],
        "companions": {n: {"macs": study.costs[n], "top1": study.accuracy[n]} for n in COMPANIONS},
        # every cascade compared, each certified on the whole calibration split (eps 0), certified ones first
        "cascades": [o.as_json() for o in options],
        # per scope and tolerance, the cascade chosen on half the calibration split and certified on the other
        "guaranteed": [o.as_json() for o in guaranteed],
        "cascade": best(guaranteed).as_json() | {"best_saver_on_test": study.test_ranking[0][0]},
        "savers": [
            {
                "name": n,
                "kind": _kind(n),
                "delta_c": dc,
                "r_match": r,
                "top1": study.accuracy[n],
                "macs": study.costs[n],
                "refined_images": settings.saver_images if n.endswith(REFINED) else 0,
            }
            for n, dc, r in study.ranking
        ],
        "settings": {
            "test_images": test_images,
            "shots": settings.shots,
            "seed": settings.seed,
            "calibration_size": settings.calibration_size,
            "saver_images": settings.saver_images,
            "saver_epochs": settings.saver_epochs,
            "config": settings.config.as_dict(),
        },
        "seconds": round(seconds, 1),
    }


def _kind(name: str) -> str:
    return "companion" if name in COMPANIONS else "teacher" if name == TEACHER else "compressed"


def _figures(out: Path, study, chosen, report: dict, teacher_macs: int) -> list[str]:
    series = {
        "auto (structure search)": [(r["macs"], r["top1"]) for r in report[AUTO]],
        "DC-ViT": [(r["macs"], r["top1"]) for r in report[DCVIT]],
        "block dropping": [(r["macs"], r["top1"]) for r in report["block_drop"]],
    }
    for name, c in report["companions"].items():
        series[name] = [(c["macs"], c["top1"])]
    series["shipped cascade (certified, eps 0)"] = [(report["cascade"]["macs_per_sample"], report["cascade"]["top1"])]
    a = accuracy_vs_macs(
        series,
        (teacher_macs, report["teacher"]["top1"]),
        out / "accuracy_vs_macs.png",
        "Fashion-MNIST test set, fmnist_vit12 compressed with few unlabeled shots",
    )
    certified = not chosen.choice.calibration.fallback
    b = cascade_curves(
        study,
        out / "cascade_curves.png",
        list(chosen.choice.members) if certified else None,
        chosen.choice.calibration if certified else None,
    )
    return [str(a), str(b)]
