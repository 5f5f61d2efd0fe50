"""MpeeConfig: every MPEE hyper-parameter (docs/design.md 2.1-2.3), stored as the `mpee` block of config.json."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

from mpee_runtime.bundle.contract import EXIT_POOLINGS, METRICS, SCORINGS, SELECTIONS, TRUNCATIONS

from ..errors import MpeeExportError

# The peak learning rate of mpee-train, chosen on the default backbone by benchmarks/train_defaults.py
# (results: benchmarks/results/train_defaults/train_defaults.md): the rate whose early exits learn best
# without losing full-model accuracy. BERT-base wants a lower one (the paper uses 2e-5).
DEFAULT_LR = 1e-4
# ... and with --freeze-backbone, where only the exit heads and the teacher learn (small linear layers on fixed
# features): benchmarks/results/from_classifier.
FROZEN_LR = 1e-3
# mpee-train's token scoring for each exit pooling when --scoring is not given: the score that matches how
# the exit reads the tokens (results: benchmarks/results/ablations_mean/ablations.md, Table 3). "all" needs
# the whole attention matrix, which keeps the attention unfused (export/optimize.py), so it is never a default.
DEFAULT_SCORING = {"cls": "cls", "mean": "mean"}
BETA_SCHEDULES = ("paper", "research")


@dataclass(frozen=True)
class Ablation:
    """One switch of the paper's Table 2: what it removes and the MpeeConfig.build overrides that remove it."""

    help: str
    overrides: dict


# The ablation switches, defined once: mpee-train's --no-* flags and benchmarks/ablations.py's variants.
ABLATIONS: dict[str, Ablation] = {
    "no_score_memory": Ablation("beta = 1.", {"beta": 1.0, "beta_schedule": "paper"}),
    "no_classifier_memory": Ablation("lambda = 1.", {"lam": 1.0}),
    "no_self_distill": Ablation("cross-entropy on the exits only.", {"self_distill": False}),
    "no_fuse_token": Ablation("drop pruned tokens instead of fusing them.", {"fuse_token": False}),
    "no_layer_exit": Ablation("one exit at the last layer.", {"layer_exit": False}),
    "no_token_pruning": Ablation("no pruning layers.", {"prune_layers": []}),
}


@dataclass
class MpeeConfig:
    num_layers: int
    labels: list[str]                      # label strings in class-index order
    task: str | None = None
    lam: float = 0.9                       # classifier memory: m_l = (1-lam) m_{l-1} + lam z_l
    # lam at the last layer (None: lam). 1 on a model built on the user's classifier (--from-classifier), so that
    # its full-depth answer is that classifier's own logits.
    lam_last: float | None = None
    betas: list[float] = field(default_factory=list)  # score memory weight per layer (layer 0 unused)
    prune_layers: list[int] = field(default_factory=list)  # 0-based layers that prune after attention
    keep_ratios: list[float] = field(default_factory=list)  # one per prune layer
    scoring: str = "cls"                   # "cls": [CLS] row; "all": mean over all query rows; "mean": mean query
    prune_select: str = "top"              # "bottom" keeps the lowest-scored tokens (paper Fig. 5)
    fuse_token: bool = True                # False: dropped tokens are discarded (ablation)
    layer_exit: bool = True                # False: one exit at the last layer, no early exit (ablation)
    self_distill: bool = True              # False: cross-entropy on the exits only (ablation)
    kd_weight: float = 1.0
    kd_temperature: float = 3.0
    max_length: int = 128
    default_policy: str = "entropy"
    default_threshold: float = 0.1
    exit_pooling: str = "cls"              # exit head input: [CLS] ("cls") or the mean of the tokens ("mean")
    # The last exit's pooling when it differs (None: exit_pooling): on a user's classifier (--from-classifier) the
    # last exit is its head, which reads the first token, while the exits before it may pool the mean.
    last_exit_pooling: str | None = None
    truncation: str = "head"               # which tokens of a longer text are read (mpee_runtime.text.truncation)
    # A task on the user's own files (data/datasets.py): its columns and metric. None for a GLUE task.
    text_column: str | None = None
    pair_column: str | None = None
    label_column: str | None = None
    metric: str | None = None

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    def pooling_of(self, layer: int) -> str:
        """The pooling of exit `layer` (0-based)."""
        if layer == self.num_layers - 1 and self.last_exit_pooling is not None:
            return self.last_exit_pooling
        return self.exit_pooling

    def __post_init__(self) -> None:
        if not self.betas:
            self.betas = [0.5] * self.num_layers
        if len(self.betas) != self.num_layers:
            raise MpeeExportError(f"betas has {len(self.betas)} entries for {self.num_layers} layers")
        if len(self.keep_ratios) == 1 and len(self.prune_layers) > 1:
            self.keep_ratios = self.keep_ratios * len(self.prune_layers)
        if len(self.keep_ratios) != len(self.prune_layers):
            raise MpeeExportError(
                f"{len(self.keep_ratios)} keep ratios for {len(self.prune_layers)} prune layers")
        for r in self.keep_ratios:
            check_keep_ratio(r)
        bad = [i for i in self.prune_layers if not 0 <= i < self.num_layers]
        if bad:
            raise MpeeExportError(f"prune layers {bad} outside 0..{self.num_layers - 1}")
        if self.scoring not in SCORINGS:
            raise MpeeExportError(f"scoring must be one of {SCORINGS}, got {self.scoring!r}")
        for pooling in (self.exit_pooling, self.last_exit_pooling or self.exit_pooling):
            if pooling not in EXIT_POOLINGS:
                raise MpeeExportError(f"exit_pooling must be one of {EXIT_POOLINGS}, got {pooling!r}")
        if self.prune_select not in SELECTIONS:
            raise MpeeExportError(f"prune_select must be one of {SELECTIONS}, got {self.prune_select!r}")
        if not 0 < self.lam <= 1 or not all(0 < b <= 1 for b in self.betas):
            raise MpeeExportError(f"lam and betas must be in (0, 1], got lam={self.lam}, betas={self.betas}")
        if self.lam_last is not None and not 0 < self.lam_last <= 1:
            raise MpeeExportError(f"lam_last must be in (0, 1], got {self.lam_last}")
        if self.truncation not in TRUNCATIONS:
            raise MpeeExportError(f"truncation must be one of {TRUNCATIONS}, got {self.truncation!r}")
        if self.metric is not None and self.metric not in METRICS:
            raise MpeeExportError(f"metric must be one of {METRICS}, got {self.metric!r}")
        if self.num_labels < 2:
            raise MpeeExportError(f"need at least 2 labels, got {self.labels}")

    @classmethod
    def build(cls, *, num_layers: int, labels: list[str], task: str | None = None, beta: float = 0.5,
              beta_schedule: str = "paper", prune_layers: list[int] | None = None,
              keep_ratio: float | list[float] = 0.7, **kwargs) -> MpeeConfig:
        """Config with the design's defaults for a backbone of `num_layers` layers.

        beta_schedule "research" reproduces the research code: beta = 1 (no memory) for layers 0-3.
        """
        if beta_schedule not in BETA_SCHEDULES:
            raise MpeeExportError(f"beta schedule must be one of {BETA_SCHEDULES}, got {beta_schedule!r}")
        betas = [1.0 if beta_schedule == "research" and i < 4 else beta for i in range(num_layers)]
        layers = default_prune_layers(num_layers) if prune_layers is None else sorted(set(prune_layers))
        ratios = keep_ratio if isinstance(keep_ratio, list) else [keep_ratio] * len(layers)
        return cls(num_layers=num_layers, labels=list(labels), task=task, betas=betas,
                   prune_layers=layers, keep_ratios=ratios, **kwargs)

    def to_dict(self) -> dict:
        d = asdict(self)
        for key in ("lam_last", "last_exit_pooling"):
            if d[key] is None:   # left out when unused: configs (and bundle ids) written before them stay the same
                del d[key]
        return d

    @classmethod
    def from_dict(cls, data: dict) -> MpeeConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise MpeeExportError(f"mpee block has unknown fields {unknown}")
        return cls(**data)


def default_prune_layers(num_layers: int) -> list[int]:
    """docs/design.md 2.2: [3, 6, 9] for 12 layers; otherwise round(L/4), round(L/2), round(3L/4) clipped to 0..L-2."""
    if num_layers == 12:
        return [3, 6, 9]
    if num_layers < 2:
        return []
    picks = (math.floor(num_layers * q + 0.5) for q in (0.25, 0.5, 0.75))
    return sorted({min(max(p, 0), num_layers - 2) for p in picks})


def check_keep_ratio(ratio: float) -> None:
    if not (isinstance(ratio, (int, float)) and 0 < ratio <= 1):
        raise MpeeExportError(f"keep ratio must be in (0, 1], got {ratio}")
