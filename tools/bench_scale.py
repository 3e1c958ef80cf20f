#!/usr/bin/env python
"""Cost at scale (BENCHMARKS.md, "Cost at scale"): `dcvit.compress` of 224-px timm ViTs, per phase, with peak
memory, and how each phase grows with the model's MACs and the shots (log-log slopes).

Each cell (model, MACs fraction, shots) runs in a process of its own (its peak resident memory is its own) on a
random-init teacher (torch seed 0, 10 classes) and Fashion-MNIST shots resized to 224 and made 3-channel by the
model's transforms; the result is saved as `dcvit compress` saves it. Finished cells are appended to --out (JSON)
and skipped on a rerun with the same settings, so a killed sweep goes on where it stopped (the cell it was in is
redone). Phases (exclusive wall time): synthesis (Eq. 4-5), edit scoring (zero-shot scores and unit importance),
trials (block-wise trial fine-tunes and their scores), fine-tuning (progressive steps), saving (checkpoints and
the result), macs (fvcore traces), other (set-up, teacher tokens, plans).

    python tools/bench_scale.py --out runs/bench_scale.json            # the sweep, smallest model first
    python tools/bench_scale.py --out runs/bench_scale.json --table    # the table and the slopes
    python tools/bench_scale.py --out runs/bench_scale.json --project  # ViT-B, 500 shots, the paper's schedule
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from datetime import date
from pathlib import Path

MODELS = ("deit_tiny_patch16_224", "deit_small_patch16_224", "vit_base_patch16_224")
PHASES = ("synthesis", "edit scoring", "trials", "fine-tuning", "saving", "macs", "other")
SCHEDULE = {"epochs": 2, "trial_epochs": 1, "synth_images": 16, "synth_iterations": 20, "batch_size": 32, "lr": 1e-5}
SCHEDULE["final_epochs"] = 0  # no final recovery: the table was measured before it became a default
# lr: a random-init teacher's weights are tiny (std 0.02), and one Adam step at the default 3e-4 moves them far: a
# deit_small trial ended at 93x its starting loss and was refused as diverged. The cost does not depend on lr.
# The paper's schedule (CompressConfig.paper(), docs/method.md §4, §6) for --project: fine-tunes of 2000 epochs
# (trials too), synthesis of 2000 iterations on the default 50 images.
PAPER = {"epochs": 2000, "trial_epochs": 2000, "synth_images": 50, "synth_iterations": 2000}


class Phases:
    """Exclusive wall time per phase: time goes to the innermost phase entered; work counted per phase."""

    def __init__(self):
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self.cpu_seconds = dict.fromkeys(PHASES, 0.0)  # the process's CPU time, all threads: steadier under load
        self.work = dict.fromkeys(PHASES, 0)
        self.stack, self.mark = ["other"], (time.perf_counter(), time.process_time())

    def _charge(self, name: str) -> None:
        now = (time.perf_counter(), time.process_time())
        self.seconds[name] += now[0] - self.mark[0]
        self.cpu_seconds[name] += now[1] - self.mark[1]
        self.mark = now

    @contextmanager
    def enter(self, name: str, work: int = 0):
        self._charge(self.stack[-1])
        self.stack.append(name)
        self.work[name] += work
        try:
            yield
        finally:
            self._charge(self.stack.pop())

    def close(self) -> None:
        self._charge(self.stack[-1])


def _wrap(owner, attr: str, phases: Phases, name, work=lambda *a, **k: 0) -> None:
    """Time owner.attr as phase `name` (a str, or a function of the phase stack giving one)."""
    real = getattr(owner, attr)

    def timed(*args, **kwargs):
        label = name(phases.stack) if callable(name) else name
        with phases.enter(label, work(*args, **kwargs)):
            return real(*args, **kwargs)

    setattr(owner, attr, timed)


def instrument(phases: Phases) -> None:
    """Wrap the functions each phase runs in (where they live after the structure registry: issue 22)."""
    import dcvit.driver
    import dcvit.engine
    import dcvit.files
    import dcvit.macs
    import dcvit.planning
    import dcvit.result
    import dcvit.search
    import dcvit.structures.dcvit
    import dcvit.workspace
    import synth

    _wrap(synth, "synthesize", phases, "synthesis", lambda *a, **k: k["num_images"] * k["iterations"])
    _wrap(dcvit.search.Search, "zero_shot", phases, "edit scoring")
    _wrap(dcvit.search.Search, "importance", phases, "edit scoring")
    _wrap(dcvit.search.Search, "confirm", phases, "trials")
    _wrap(dcvit.structures.dcvit, "run_trials", phases, "trials")

    def tune_work(engine, model, compressed, epochs, key, **_):
        return epochs * len(engine.images.fixed)

    _wrap(dcvit.engine.Engine, "fine_tune", phases, lambda s: "trials" if "trials" in s else "fine-tuning", tune_work)
    _wrap(dcvit.workspace.Workspace, "save", phases, "saving")
    _wrap(dcvit.workspace.Workspace, "load", phases, "saving")
    _wrap(dcvit.files, "save", phases, "saving")
    # each imported them by name
    for module in (dcvit.macs, dcvit.search, dcvit.driver, dcvit.planning, dcvit.result):
        for attr in ("count_macs", "macs_profile"):
            if hasattr(module, attr):
                _wrap(module, attr, phases, "macs")


def run_cell(model_name: str, fraction: float, shots: int, schedule: dict, device: str, threads: int) -> dict:
    """One compression, timed per phase; the JSON row."""
    import torch

    torch.set_num_threads(threads)
    import dcvit
    from dcvit.data import few_shot_subset

    load_before = os.getloadavg()
    phases = Phases()
    instrument(phases)
    torch.manual_seed(0)
    teacher = dcvit.create_model(model_name, pretrained=False, num_classes=10).eval()
    data = few_shot_subset("fashion-mnist", shots, seed=0, calibration_size=0)
    if device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device is visible to torch here; accepted: cpu, or cuda on a GPU machine")
    config = dcvit.CompressConfig(progress=False, **schedule)
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as work:
        start, cpu = time.perf_counter(), time.process_time()
        result = dcvit.compress(teacher, fraction, data, config, workdir=Path(work) / "checkpoints", metric_cache=False)
        result.save(Path(work) / "result")
        total, cpu = time.perf_counter() - start, time.process_time() - cpu
    phases.close()
    row = {
        "model": model_name,
        "fraction": fraction,
        "shots": shots,
        "schedule": schedule,
        "macs_teacher": result.plan.macs_original,
        "macs_result": result.macs,
        "steps": len(result.history),
        "seconds": {k: round(v, 2) for k, v in phases.seconds.items()},
        "cpu_seconds": {k: round(v, 2) for k, v in phases.cpu_seconds.items()},
        "work": phases.work,
        "total_seconds": round(total, 2),
        "total_cpu_seconds": round(cpu, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "device": device,
        "device_name": _device_name(device),
        "threads": threads,
        "torch": torch.__version__,
        "date": date.today().isoformat(),
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in os.getloadavg()],
    }
    if device.startswith("cuda"):
        row["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return row


def _device_name(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name()
    try:
        names = [line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")]
        return f"{names[0]} x{len(names)}"
    except (OSError, IndexError):
        return platform.processor() or "cpu"


def _same_cell(row: dict, model: str, fraction: float, shots: int, args) -> bool:
    return (row["model"], row["fraction"], row["shots"], row["schedule"], row["device"], row["threads"]) == (
        model,
        fraction,
        shots,
        _schedule(args),
        args.device,
        args.threads,
    )


def _schedule(args) -> dict:
    return {k: getattr(args, k) for k in SCHEDULE}


def _read(path: Path) -> list[dict]:
    return json.loads(path.read_text()) if path.is_file() else []


def _append(path: Path, row: dict) -> None:
    rows = _read(path) + [row]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(rows, indent=1) + "\n")
    os.replace(tmp, path)


def sweep(args) -> None:
    out, failed = Path(args.out), 0
    for model in args.models:
        for shots in args.shots:
            for fraction in args.fractions:
                if any(_same_cell(r, model, fraction, shots, args) for r in _read(out)):
                    continue
                cell = [sys.executable, __file__, "--cell", f"{model}:{fraction}:{shots}", "--out", str(out)]
                cell += [f"--{k.replace('_', '-')}={v}" for k, v in _schedule(args).items()]
                cell += ["--device", args.device, "--threads", str(args.threads)]
                print(f"cell {model} {fraction} {shots} ...", flush=True)
                env = dict(os.environ, **({"CUDA_VISIBLE_DEVICES": ""} if args.device == "cpu" else {}))
                done = subprocess.run(cell, stdout=subprocess.PIPE, text=True, env=env)
                if done.returncode != 0:  # the others still run; the sweep's exit says one failed
                    print(f"  failed (exit {done.returncode}); its error is above", flush=True)
                    failed += 1
                    continue
                row = json.loads(done.stdout.strip().splitlines()[-1])
                _append(out, row)
                print(f"  {row['total_seconds']:.0f} s, peak {row['peak_rss_mb']:.0f} MB", flush=True)
    if failed:
        sys.exit(f"{failed} cell(s) failed; rerun the same command to retry them (finished cells are kept)")


def _fit(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of log y on log x (None for fewer than two distinct x)."""
    pts = [(math.log(x), math.log(y)) for x, y in points if x > 0 and y > 0]
    if len({x for x, _ in pts}) < 2:
        return None
    mx, my = sum(x for x, _ in pts) / len(pts), sum(y for _, y in pts) / len(pts)
    return sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts)


def _phase(r: dict, phase: str, basis: str) -> float:
    """A row's seconds (basis "seconds": wall; "cpu_seconds": CPU time of all threads) in `phase` or in total."""
    return r[f"total_{basis}"] if phase == "total" else r[basis][phase]


def slopes(rows: list[dict], phase: str, basis: str = "cpu_seconds") -> tuple[float | None, float | None]:
    """(growth with teacher MACs at fixed fraction and shots, growth with shots at fixed model and fraction),
    each the mean of the per-group log-log slopes."""

    def mean_slope(key, x):
        groups: dict = {}
        for r in rows:
            groups.setdefault(key(r), []).append((x(r), _phase(r, phase, basis)))
        found = [s for s in (_fit(g) for g in groups.values()) if s is not None]
        return sum(found) / len(found) if found else None

    by_macs = mean_slope(lambda r: (r["fraction"], r["shots"]), lambda r: r["macs_teacher"])
    by_shots = mean_slope(lambda r: (r["model"], r["fraction"]), lambda r: r["shots"])
    return by_macs, by_shots


def table(rows: list[dict]) -> str:
    """Per cell and phase: wall seconds / CPU seconds (all threads); then the slopes of the CPU seconds."""
    rows = [r for r in rows if "cpu_seconds" in r]
    head = "| model | GMACs | MACs kept | shots | steps | " + " | ".join(PHASES) + " | total | peak RSS GB | load |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        cells = [f"{r['seconds'][p]:.0f} / {r['cpu_seconds'][p]:.0f}" for p in PHASES]
        load = f"{r['load_before'][0]:.1f}-{r['load_after'][0]:.1f}"
        lines.append(
            f"| {r['model']} | {r['macs_teacher'] / 1e9:.2f} | {100 * r['macs_result'] / r['macs_teacher']:.1f}% "
            f"| {r['shots']} | {r['steps']} | " + " | ".join(cells) + f" | {r['total_seconds']:.0f} / "
            f"{r['total_cpu_seconds']:.0f} | {r['peak_rss_mb'] / 1024:.2f} | {load} |"
        )
    lines += ["", "| phase | CPU s slope with MACs | CPU s slope with shots |", "|---|---|---|"]
    for p in (*PHASES, "total"):
        a, b = slopes(rows, p)
        lines.append(f"| {p} | {'-' if a is None else f'{a:.2f}'} | {'-' if b is None else f'{b:.2f}'} |")
    return "\n".join(lines)


def project(rows: list[dict], macs: float, shots: int, fraction: float) -> str:
    """CPU seconds per unit of work (synthesis: image x iteration; trials, fine-tuning: shot x epoch), taken
    to `macs` with the fitted MACs slope (1 where one model was run: cost in proportion to MACs) and to the
    paper's schedule; the other phases scaled by MACs and shots with their slopes (1 and 0 where unmeasured).
    A projection: no cell of this size was run. CPU seconds on 2 cores are at least twice the wall time."""
    rows = [r for r in rows if "cpu_seconds" in r]
    near = [r for r in rows if r["fraction"] == fraction] or rows
    lines, total = [], 0.0
    for phase in ("synthesis", "trials", "fine-tuning"):
        measured = [r for r in near if r["work"][phase]]
        per_unit = [(r["macs_teacher"], r["cpu_seconds"][phase] / r["work"][phase]) for r in measured]
        slope = _fit(per_unit) or 1.0
        ref = max(measured, key=lambda r: (r["macs_teacher"], r["shots"]))
        rate = ref["cpu_seconds"][phase] / ref["work"][phase] * (macs / ref["macs_teacher"]) ** slope
        if phase == "synthesis":
            units = PAPER["synth_images"] * PAPER["synth_iterations"]
        else:  # as many fine-tunes as measured, each shots x the paper's epochs
            units = ref["work"][phase] / (ref["shots"] * ref["schedule"][_epoch_key(phase)])
            units *= shots * PAPER[_epoch_key(phase)]
        total += rate * units
        lines.append(f"| {phase} | {rate:.3g} (MACs slope {slope:.2f}) | {units:.3g} | {rate * units / 3600:.1f} h |")
    ref = max(near, key=lambda r: (r["macs_teacher"], r["shots"]))
    rest = 0.0
    for phase in ("edit scoring", "saving", "macs", "other"):
        a, b = slopes(rows, phase)
        scale = (macs / ref["macs_teacher"]) ** (a or 1.0) * (shots / ref["shots"]) ** (b or 0.0)
        if phase == "edit scoring":  # one pass of the metric set per edit: in proportion to its images
            scale *= PAPER["synth_images"] / ref["schedule"]["synth_images"]
        rest += ref["cpu_seconds"][phase] * scale
    total += rest
    lines.append(f"| edit scoring, saving, macs, other | scaled by the slopes | - | {rest / 3600:.1f} h |")
    lines.append(f"| **total CPU time (projected)** | | | **{total / 3600:.0f} h** |")
    lines.append(
        f"| **wall on 2 cores, at best (projected)** | | | **{total / 7200:.0f} h ({total / 7200 / 24:.1f} days)** |"
    )
    return "\n".join(["| phase | CPU s per unit | units | projected |", "|---|---|---|---|", *lines])


def _epoch_key(phase: str) -> str:
    return "trial_epochs" if phase == "trials" else "epochs"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/bench_scale.json", help="the JSON file cells are appended to")
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--fractions", nargs="+", type=float, default=[0.75, 0.5])
    p.add_argument("--shots", nargs="+", type=int, default=[16, 64])
    for k, v in SCHEDULE.items():
        p.add_argument(f"--{k.replace('_', '-')}", type=type(v), default=v, help=f"default {v}")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where the compression runs (Accelerate)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads (default: all cores)")
    p.add_argument("--cell", help=argparse.SUPPRESS)  # MODEL:FRACTION:SHOTS, run in this process
    p.add_argument("--table", action="store_true", help="print the table and slopes of --out and exit")
    p.add_argument("--project", action="store_true", help="project ViT-B/16 at 224, 500 shots, the paper's schedule")
    args = p.parse_args()
    if args.cell:
        model, fraction, shots = args.cell.split(":")
        print(json.dumps(run_cell(model, float(fraction), int(shots), _schedule(args), args.device, args.threads)))
    elif args.table or args.project:
        rows = _read(Path(args.out))
        if not rows:
            sys.exit(f"{args.out} holds no cells yet; run the sweep first")
        print(table(rows) if args.table else project(rows, 17.58e9, 500, 0.75))
    else:
        sweep(args)


if __name__ == "__main__":
    main()
