"""One frozen dataclass holds every setting of a compression run (Algorithm 1), ablations included.

Defaults are the ones measured for the shipped Fashion-MNIST teacher (BENCHMARKS.md); the paper's
ImageNet settings are `CompressConfig.paper()` (2000 epochs, lr 3e-5, batch 64, RandAugment).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from numbers import Real

from .metrics import metric_names
from .structures.registry import BASELINE_STRUCTURE, DEFAULT_STRUCTURE, get_structure, structure_names

TOKENS = ("all", "cls")
UNIT_CHOICES = ("random", "activation")
SCOPES = ("front", "all")
PRECISIONS = ("no", "bf16", "fp16")


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
    metric: str = "kl"  # dcvit.metrics: kl (the paper) | mse (features on the synthetic set) | train_loss (few-shot)
    progressive: bool = True  # False: "top-k", all n blocks at once, fine-tuned for n steps' epochs
    train_scope: str = "front"  # "all": fine-tune every block (head stays frozen)
    mimic_tokens: str = "all"  # "cls": mimic the class token only
    unit_choice: str | None = None  # which MLP units stay: "random" (the paper) or "activation" (largest mean
    # |hidden| x |fc2 column| on the few shots); None: the structure's own (random for the paper's)
    reinit_mlp: bool = False  # re-initialise the kept MLP weights instead of reusing them
    extra_blocks: int = 0  # compress more blocks than Eq. 1 needs
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        checks = [
            (self.epochs >= 1, "epochs must be >= 1"),
            (self.trial_epochs is None or self.trial_epochs >= 1, "trial_epochs must be >= 1"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.lr > 0 and self.weight_decay >= 0, "lr must be > 0 and weight_decay >= 0"),
            (self.clip_grad > 0, "clip_grad must be > 0"),
            (self.synth_images >= 1 and self.synth_iterations >= 1, "synth_images and synth_iterations must be >= 1"),
            (
                self.synth_jitter is None
                or (
                    isinstance(self.synth_jitter, Real)
                    and not isinstance(self.synth_jitter, bool)
                    and 0 <= self.synth_jitter < 1
                ),
                "synth_jitter must be in [0, 1) or None",
            ),
            (self.structure in structure_names(), f"structure must be one of {structure_names()}"),
            (self.search_steps is None or self.search_steps >= 1, "search_steps must be >= 1 or None"),
            (self.metric in metric_names(), f"metric must be one of {metric_names()}"),
            (self.train_scope in SCOPES, f"train_scope must be one of {SCOPES}"),
            (self.mimic_tokens in TOKENS, f"mimic_tokens must be one of {TOKENS}"),
            (self.unit_choice in (None, *UNIT_CHOICES), f"unit_choice must be one of {UNIT_CHOICES} or None"),
            (self.mixed_precision in (None, *PRECISIONS), f"mixed_precision must be one of {PRECISIONS} or None"),
            (self.extra_blocks >= 0, "extra_blocks must be >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @property
    def units_by(self) -> str:
        """The unit choice in force: unit_choice, else the structure's (the paper's random choice for DC-ViT,
        activation-based for the search)."""
        return self.unit_choice or get_structure(self.structure).units_by

    @property
    def epochs_per_trial(self) -> int:
        return self.trial_epochs or self.epochs

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

# PRACTISE-style block dropping: drop whole blocks chosen by few-shot feature MSE after a short recovery,
# all at once, then recover with the same total fine-tune budget as DC-ViT.
BLOCK_DROP = {"structure": BASELINE_STRUCTURE, **get_structure(BASELINE_STRUCTURE).config_changes}


def __getattr__(name: str):
    """STRUCTURES and METRICS, the names once listed here, now read from the registries (plug-ins included)."""
    if name == "STRUCTURES":
        return structure_names()
    if name == "METRICS":
        return metric_names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
