"""`dcvit export`: a model or a cascade folder as programs that torch alone serves (cascade.load_exported)."""

from __future__ import annotations

import argparse

from .common import Command, emit, model_argument


def _export_arguments(p: argparse.ArgumentParser) -> None:
    from ..exporting import FORMATS

    model_argument(p, input_size=False)
    p.add_argument(
        "--format",
        choices=FORMATS,
        default="pt2",
        help="pt2 (torch.export, default), torchscript, or onnx (needs onnx, onnxscript and onnxruntime)",
    )
    p.add_argument(
        "--out",
        required=True,
        help="the exported folder: a new or empty folder, or one an earlier `dcvit export` wrote. A cascade "
        "folder gives cascade.json and one program per member; a model gives its program and export.json",
    )


def run_export(args) -> None:
    import cascade

    from ..exporting import export
    from ..outdir import check_out, input_paths, marker

    out = check_out(args.out, "export", input_paths(models=[args.model]))
    path = export(args.model, out, args.format)
    (path / marker("export")).touch()  # after the folder is whole: a later `dcvit export` may replace it
    programs = sorted(str(p.relative_to(path)) for p in path.rglob(cascade.programs.PROGRAMS[args.format]))
    kind = "cascade" if cascade.is_cascade_dir(path) else "model"
    emit(
        args,
        {"model": args.model, "format": args.format, "out": str(path), "kind": kind, "programs": programs},
        f"{args.model} exported to {path} as {args.format} ({kind}: {', '.join(programs)}); each program answers "
        f"as its model on a check batch. Serve it with torch only: cascade.load_exported({str(path)!r})",
    )


COMMANDS = [
    Command(
        "export",
        "a model or a cascade folder as pt2, TorchScript or ONNX programs for serving with torch only "
        "(a cascade keeps its routing file, cascade.json)",
        _export_arguments,
        run_export,
    ),
]
