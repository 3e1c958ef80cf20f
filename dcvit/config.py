"""One frozen dataclass holds every setting of a compression run (Algorithm 1), ablations included.

Defaults are the ones measured for the shipped Fashion-MNIST teacher (BENCHMARKS.md); the paper's
ImageNet settings are `CompressConfig.paper()` (2000 epochs, lr 3e-5, batch 64, RandAugment).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

from . import checks
from .accel import device_form
from .metrics import metric_names
from .structure_registry import BASELINE_STRUCTURE, DEFAULT_STRUCTURE, get_structure, structure_names
from .views import view_names

TOKENS = ("all", "cls")
UNIT_CHOICES = ("random", "activation")
SCOPES = ("front", "all")
PRECISIONS = ("no", "bf16", "fp16")
MAX_COUNT = 10**9  # epochs, batch sizes, image and step counts: any real run is far below


def _unit(v: float) -> bool:
    return 0 <= v < 1


def _warmup(v: float) -> bool:
    return 0 <= v <= 1


def _blocks(value) -> tuple[int, ...] | None:
    """candidate_blocks as a tuple of distinct block indices >= 0, or None (the structure's default)."""
    what = "CompressConfig.candidate_blocks must be None or distinct block indices >= 0"
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise ValueError(f"{what}; got {value!r}")
    blocks = tuple(value)
    if not blocks or not all(checks.is_integer(b) and b >= 0 for b in blocks) or len(set(blocks)) != len(blocks):
        raise ValueError(f"{what}; got {list(blocks)!r}")
    return tuple(int(b) for b in blocks)


@dataclass(frozen=True)
class CompressConfig:
    # Feature mimicking (Eq. 3)
    epochs: int = 20  # per progressive step; one epoch = one pass over the few-shot set
    trial_epochs: int | None = 5  # per block-wise trial candidate (None: same as epochs)
    batch_size: int = 64
    lr: float = 3e-4
    weight_decay: float = 1e-4
    loss_warmup: float = 0.01  # loss x min(epoch / (loss_warmup * epochs), 1); the reference: 20 of 2000 epochs
    clip_grad: float = 1.0
    augment: bool = False  # RandomResizedCrop + flip + RandAugment on the few-shot images
    mixed_precision: str | None = None  # Accelerate: no | bf16 | fp16; None: what Accelerate's environment
    # says (`accelerate launch --mixed_precision`, ACCELERATE_MIXED_PRECISION, or the precision this process's
    # Accelerate state already has), else no. One precision per process: Accelerate cannot change it later.
    device: str | None = None  # cpu | cuda | cuda:N | mps; None: what Accelerate picks (a CUDA device if there is
    # one, else the CPU; under `accelerate launch`, each process's own). One device per process, like the precision.
    # Selection (Eq. 6) on the synthetic metric set (Eq. 4-5)
    synth_images: int = 50
    synth_iterations: int = 200
    # Roll by up to this fraction of the side: 1 px at 28, measured for the 28-px teachers (patch 7) against half
    # a patch: BENCHMARKS.md, "Synthetic metric set" (hit rates, confidences and commands). None: synth's
    # default, which follows the model (at most half a patch for a ViT, min(30/224, (patch // 2) / side); the
    # reference 30/224 otherwise).
    synth_jitter: float | None = 1 / 28
    candidate_blocks: tuple[int, ...] | None = None
    # What each block may lose (docs/method.md §11): a name in dcvit.structures' registry. Built in: the
    # structure search (the default: the synthetic set chooses per block among keep / narrow MLP / remove MLP /
    # remove attention / drop), the search over MLP edits only, the paper's structure (Eq. 1-2), and the
    # block-dropping baseline (with BLOCK_DROP's settings).
    structure: str = DEFAULT_STRUCTURE
    prune_heads: bool = False  # auto: also offer keeping only some whole attention heads (where the adapter can)
    search_steps: int | None = None  # auto/mlp: progressive steps, each fine-tuned for `epochs`; None: one
    # per average block's worth of MACs removed (DC-ViT's step count), 1-8
    # Algorithm 1 and its ablations (docs/method.md §8)
    metric: str | None = None  # dcvit.metrics: kl (the paper) | mse (features on the synthetic set) | train_loss
    # (few-shot); None: kl, or mse for a headless model (num_classes=0: it outputs features, not class scores)
    progressive: bool = True  # False: "top-k", all n blocks at once, fine-tuned for n steps' epochs
    train_scope: str = "front"  # "all": fine-tune every block (head stays frozen)
    mimic_tokens: str = "all"  # "cls": mimic the class token only
    unit_choice: str | None = None  # which MLP units stay: "random" (the paper) or "activation" (largest mean
    # |hidden| x |fc2 column| on the few shots); None: the structure's own (random for the paper's)
    reinit_mlp: bool = False  # re-initialise the kept MLP weights instead of reusing them
    extra_blocks: int = 0  # compress more blocks than Eq. 1 needs
    # Few-shot recovery levers (docs/method.md §6, "Recovery levers"; BENCHMARKS.md measures each). Only the final
    # recovery is on by default, with CutMix views, batches of 16 and 10 epochs per tenth: against the plain final
    # recovery it gained at both deep budgets of every structure and teacher measured, 3 seeds, and was level
    # (within 0.06 points) at the shallow ones; the others did not beat it.
    mimic_views: str = "none"  # dcvit.views: none | crop | mixup | cutmix | crop-mixup, the same view for both models
    mimic_synthetic: bool = False  # the synthetic metric set joins the shots as mimicking inputs
    mimic_logits: float = 0.0  # weight of KL(teacher || student) on the logits beside Eq. 3's token MSE
    mimic_blocks: float = 0.0  # weight of the block outputs' MSE (each relative to the teacher's mean square)
    final_epochs: int = 10  # a last fine-tune of the finished model: this many epochs per tenth of MACs removed
    final_views: str | None = "cutmix"  # ... with these views of the shots (dcvit.views; None: mimic_views)
    final_batch_size: int | None = 16  # ... in batches of this many images (None: batch_size)
    final_select: bool = False  # ... keeping its epoch with the least synthetic-set KL (Eq. 6), the start included
    final_average: float = 0.0  # ... ending with the mean of its weights after each of this last fraction of its
    # epochs (a tail weight average, as stochastic weight averaging; 0: the last epoch's weights)
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        """Every field checked at construction: a one-line ValueError naming the field, the value and what
        is accepted (numpy integers are integers; candidate_blocks becomes a tuple of ints)."""
        f = "CompressConfig."
        positive, nonneg = "a finite number > 0", "a finite number >= 0"
        fixed = {
            "epochs": checks.integer(f + "epochs", self.epochs, 1, MAX_COUNT),
            "trial_epochs": checks.optional_integer(f + "trial_epochs", self.trial_epochs, 1, MAX_COUNT),
            "batch_size": checks.integer(f + "batch_size", self.batch_size, 1, MAX_COUNT),
            "lr": checks.number(f + "lr", self.lr, positive, lambda v: 0 < v < math.inf),
            "weight_decay": checks.number(f + "weight_decay", self.weight_decay, nonneg, lambda v: 0 <= v < math.inf),
            "loss_warmup": checks.number(f + "loss_warmup", self.loss_warmup, "a number from 0 to 1", _warmup),
            "clip_grad": checks.number(
                f + "clip_grad", self.clip_grad, "a number > 0 (inf: no clipping)", lambda v: v > 0
            ),
            "synth_images": checks.integer(f + "synth_images", self.synth_images, 1, MAX_COUNT),
            "synth_iterations": checks.integer(f + "synth_iterations", self.synth_iterations, 1, MAX_COUNT),
            "candidate_blocks": _blocks(self.candidate_blocks),
            "search_steps": checks.optional_integer(f + "search_steps", self.search_steps, 1, MAX_COUNT),
            "extra_blocks": checks.integer(f + "extra_blocks", self.extra_blocks, 0, MAX_COUNT),
            "mimic_logits": checks.number(f + "mimic_logits", self.mimic_logits, nonneg, lambda v: 0 <= v < math.inf),
            "mimic_blocks": checks.number(f + "mimic_blocks", self.mimic_blocks, nonneg, lambda v: 0 <= v < math.inf),
            "final_epochs": checks.integer(f + "final_epochs", self.final_epochs, 0, MAX_COUNT),
            "final_batch_size": checks.optional_integer(f + "final_batch_size", self.final_batch_size, 1, MAX_COUNT),
            "final_average": checks.number(
                f + "final_average", self.final_average, "a number in [0, 1]", lambda v: 0 <= v <= 1
            ),
            "seed": checks.seed(f + "seed", self.seed),
        }
        if self.synth_jitter is not None:
            fixed["synth_jitter"] = checks.number(
                f + "synth_jitter", self.synth_jitter, "a number in [0, 1) or None", _unit
            )
        flags = ("augment", "prune_heads", "progressive", "reinit_mlp", "mimic_synthetic", "final_select", "progress")
        for name in flags:
            checks.flag(f + name, getattr(self, name))
        checks.choice(f + "mixed_precision", self.mixed_precision, (*PRECISIONS, None))
        checks.choice(f + "structure", self.structure, structure_names())
        checks.choice(f + "metric", self.metric, (*metric_names(), None))
        checks.choice(f + "train_scope", self.train_scope, SCOPES)
        checks.choice(f + "mimic_tokens", self.mimic_tokens, TOKENS)
        checks.choice(f + "unit_choice", self.unit_choice, (*UNIT_CHOICES, None))
        fixed["device"] = device_form(self.device, f + "device")  # whether this machine has it: make_accelerator
        checks.choice(f + "mimic_views", self.mimic_views, view_names())
        checks.choice(f + "final_views", self.final_views, (*view_names(), None))
        self._check_recovery()
        for name, value in fixed.items():  # plain ints and floats (numpy's too): settings.json stays JSON
            object.__setattr__(self, name, value)

    def _check_recovery(self) -> None:
        """Combinations of the recovery levers that cannot run, refused in one line."""
        if self.mimic_synthetic and self.augment:
            raise checks.ArgumentError(
                "CompressConfig.mimic_synthetic",
                "CompressConfig.mimic_synthetic cannot be combined with augment=True (RandAugment works on the "
                "shots' PIL images; the synthetic images are tensors): use mimic_views for views of both",
            )
        if self.final_select and not self.final_epochs:
            raise checks.ArgumentError(
                "CompressConfig.final_select",
                "CompressConfig.final_select selects among the epochs of the final fine-tune: set final_epochs >= 1",
            )
        if self.final_average and not self.final_epochs:
            raise checks.ArgumentError(
                "CompressConfig.final_average",
                "CompressConfig.final_average averages the epochs of the final fine-tune: set final_epochs >= 1",
            )
        if self.final_average and self.final_select:
            raise checks.ArgumentError(
                "CompressConfig.final_average",
                "CompressConfig.final_average and final_select both choose the final fine-tune's weights: set one",
            )

    @property
    def needs_synthetic_inputs(self) -> bool:
        """Whether a recovery lever reads the synthetic metric set (made even when the metric does not)."""
        return self.mimic_synthetic or self.final_select

    @property
    def units_by(self) -> str:
        """The unit choice in force: unit_choice, else the structure's (the paper's random choice for DC-ViT,
        activation-based for the search)."""
        return self.unit_choice or get_structure(self.structure).units_by

    @property
    def epochs_per_trial(self) -> int:
        return self.trial_epochs or self.epochs

    def for_final_recovery(self) -> CompressConfig:
        """This config as the final recovery fine-tunes: its own views and batch size, where it has them."""
        return self.replace(
            mimic_views=self.final_views or self.mimic_views, batch_size=self.final_batch_size or self.batch_size
        )

    def for_structure(self, structure: str) -> CompressConfig:
        """This config compressing with `structure`, with the settings that structure brings (the baseline's
        are BLOCK_DROP's)."""
        return self.replace(structure=structure, **get_structure(structure).config_changes)

    def replace(self, **changes) -> CompressConfig:
        return replace(self, **changes)

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def paper(cls, **changes) -> CompressConfig:
        """The reference ImageNet settings (docs/method.md §4, §6)."""
        return cls(
            **{
                "epochs": 2000,
                "trial_epochs": None,
                "lr": 3e-5,
                "batch_size": 64,
                "augment": True,
                "loss_warmup": 0.01,
                "synth_iterations": 2000,
                "synth_jitter": 30 / 224,
                "final_epochs": 0,  # the paper has no final recovery
                **changes,
            }
        )


# The ablations of docs/method.md §8 (paper Tab. 6) as config changes relative to a base config.
ABLATIONS: dict[str, dict] = {
    "top-k": {"progressive": False},
    "finetune-all": {"train_scope": "all"},
    "reinit-mlp": {"reinit_mlp": True},
    "activation-units": {"unit_choice": "activation"},
    "mse-metric": {"metric": "mse"},
    "cls-only": {"mimic_tokens": "cls"},
    "train-loss-ranking": {"metric": "train_loss"},
    "extra-block": {"extra_blocks": 1},
}


def __getattr__(name: str):
    """Read from the registries on use (never while this module loads: the structures import it):
    BLOCK_DROP, the config changes of PRACTISE-style block dropping (drop whole blocks chosen by few-shot
    feature MSE after a short recovery, all at once, then recover with the same total fine-tune budget as
    DC-ViT);
    STRUCTURES and METRICS, the names once listed here (plug-ins included)."""
    if name == "BLOCK_DROP":
        return {"structure": BASELINE_STRUCTURE, **get_structure(BASELINE_STRUCTURE).config_changes}
    if name == "STRUCTURES":
        return structure_names()
    if name == "METRICS":
        return metric_names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
