"""Model-agnostic little/big cascades: batched N-pass inference, threshold calibration, TinySaver saver
selection, reports, cascade folders (save / load), per-member export and serving (docs/method.md §9).

Depends on torch only (tqdm for record's progress bar, matplotlib inside plot_curves, both imported lazily).
Costs are plain numbers (MACs per sample) given by the caller; confidence = max softmax, and a sample
exits at a stage when confidence >= that stage's threshold. `certify` picks thresholds (and the committee exit)
with a guarantee over the calibration draw (cascade.guarantee; needs scipy); `calibrate` is the nominal rule.
"""

from .calibration import Calibration, SweepResult, calibrate, certify, sweep
from .choose import Choice, choose_cascade
from .export import ExportedCascade, export_stages
from .files import CascadeFileError, CascadeSpec, Member, is_cascade_dir, load, read_spec, save
from .guarantee import committee_probs
from .inference import prepare_for_inference
from .programs import load_program, save_program
from .record import Recorded, record
from .report import format_table, plot_curves, report_table
from .routing import Cascade, CascadeStats
from .saver import SaverRow, delta_cost, match_ratio, select_saver
from .serve import Served, load_exported, save_exported, save_exported_model
from .staged import predict_staged

__all__ = [
    "Calibration",
    "Cascade",
    "Choice",
    "CascadeFileError",
    "CascadeSpec",
    "CascadeStats",
    "ExportedCascade",
    "Member",
    "Recorded",
    "SaverRow",
    "Served",
    "SweepResult",
    "calibrate",
    "certify",
    "choose_cascade",
    "committee_probs",
    "delta_cost",
    "export_stages",
    "format_table",
    "is_cascade_dir",
    "load",
    "load_exported",
    "load_program",
    "match_ratio",
    "plot_curves",
    "predict_staged",
    "prepare_for_inference",
    "read_spec",
    "record",
    "report_table",
    "save",
    "save_exported",
    "save_exported_model",
    "save_program",
    "select_saver",
    "sweep",
]
