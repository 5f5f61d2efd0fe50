"""The report's typed records, each with one reader and writer: `VariantSummary` (a row), `Baselines`,
`AAControl`, `StaticComparison`, `LengthBucket` / `LengthBreakdown` and `BenchResults` (results.json)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from ..files import write_text


@dataclass
class VariantSummary:
    """One row of the report: a variant's settings, scores, FLOPs speed-ups, latency and measured speed-ups."""

    variant: str
    description: str
    precision: str
    mean_exit_layer: float
    rho: float
    rho_pad128: float
    latency: dict                    # metrics.latency_summary: n, mean_us, p50_us, p90_us, p99_us
    group: str = "table"
    threshold: float | None = None
    keep_ratio: float | None = None
    policy: str | None = None
    path: str | None = None
    torch_threads: int | None = None
    metric: float | None = None      # None: the input has no labels
    metric_name: str | None = None
    accuracy: float | None = None
    f1: float | None = None
    speedup_baseline: str | None = None
    speedup_p50: float | None = None
    speedup_mean: float | None = None
    speedup_p50_vs_plain_fp32: float | None = None
    speedup_mean_vs_plain_fp32: float | None = None
    realisation: float | None = None   # speedup_mean / rho: how much of the FLOPs saving the latency shows

    @property
    def p50_us(self) -> float:
        return self.latency["p50_us"]

    @property
    def mean_us(self) -> float:
        return self.latency["mean_us"]

    def to_dict(self) -> dict:
        """The row of results.json: fields that do not apply (None) are left out; `group` is implied by the
        list the row is in."""
        return {k: v for k, v in asdict(self).items() if v is not None and k != "group"}

    @classmethod
    def from_dict(cls, data: dict, group: str = "table") -> VariantSummary:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known}, **({} if "group" in data else {"group": group}))

    def point(self, *, with_latency: bool = False) -> dict:
        """The fields of a chosen point (Pareto front, operating point)."""
        keys = ("threshold", "keep_ratio", "metric", "speedup_mean", "speedup_p50", "rho", "speedup_baseline",
                "speedup_mean_vs_plain_fp32") + (("latency",) if with_latency else ())
        return {k: getattr(self, k) for k in keys}


@dataclass(frozen=True)
class Baselines:
    """Which measured row each precision's speed-ups are against."""

    fp32: str
    int8: str
    plain_fp32: str | None
    rule: str

    def of(self, precision: str) -> str:
        return self.int8 if precision == "int8" else self.fp32

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Baselines:
        return cls(data["fp32"], data["int8"], data.get("plain_fp32"), data["rule"])


@dataclass(frozen=True)
class AAControl:
    """The A/A spread of two rows of the same variant."""

    variants: list[str]
    mean_spread: float
    p50_spread: float
    threshold: float
    flagged: bool

    @property
    def warning(self) -> str | None:
        if not self.flagged:
            return None
        a, b = self.variants
        return (f"A/A control: {a} and {b} (the same variant measured twice, on two loads of the bundle) differ by "
                f"{100 * self.mean_spread:.1f}% in mean latency and {100 * self.p50_spread:.1f}% in p50, above "
                f"{100 * self.threshold:.0f}%: the machine was not quiet; latency differences of that size are "
                "noise (re-run on an idle machine)")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> AAControl:
        return cls(list(data["variants"]), data["mean_spread"], data["p50_spread"], data["threshold"], data["flagged"])


@dataclass(frozen=True)
class StaticComparison:
    """A static-depth point against the best MPEE sweep point of its precision at least as fast, by measured mean-latency
    speed-up and by FLOPs rho: positive gain = MPEE is more accurate at equal speed-up."""

    exit: int
    keep_ratio: float
    static_metric: float
    static_speedup_mean: float
    static_rho: float
    mpee_metric_measured: float | None
    gain_measured: float | None
    mpee_metric_rho: float | None
    gain_rho: float | None
    precision: str = "fp32"          # of both points (results files before --int8-points: fp32)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> StaticComparison:
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


@dataclass
class LengthBucket:
    """The table's variants on the examples whose input length lies in lo..hi tokens (hi None: no upper
    bound), with the speed-ups against this bucket's own baselines."""

    label: str
    lo: int
    hi: int | None
    examples: int
    mean_tokens: float
    few: bool                        # fewer than MIN_BUCKET_EXAMPLES examples
    baselines: Baselines
    variants: list[VariantSummary]

    def row(self, variant: str) -> VariantSummary | None:
        return next((r for r in self.variants if r.variant == variant), None)

    def to_dict(self) -> dict:
        return {"label": self.label, "lo": self.lo, "hi": self.hi, "examples": self.examples,
                "mean_tokens": self.mean_tokens, "few": self.few, "baselines": self.baselines.to_dict(),
                "variants": [r.to_dict() for r in self.variants]}

    @classmethod
    def from_dict(cls, data: dict) -> LengthBucket:
        return cls(data["label"], data["lo"], data["hi"], data["examples"], data["mean_tokens"], data["few"],
                   Baselines.from_dict(data["baselines"]),
                   [VariantSummary.from_dict(r, "table") for r in data["variants"]])


@dataclass
class LengthBreakdown:
    """The table by input length: the buckets with examples (empty ones left out), cut at `edges`."""

    edges: list[int]                 # a bucket ends at each edge (inclusive); the last one is open-ended
    examples: int                    # over all buckets, and their mean length: the "all" row's
    mean_tokens: float
    min_examples: int
    buckets: list[LengthBucket]

    def to_dict(self) -> dict:
        return {"edges": self.edges, "examples": self.examples, "mean_tokens": self.mean_tokens,
                "min_examples": self.min_examples, "buckets": [b.to_dict() for b in self.buckets]}

    @classmethod
    def from_dict(cls, data: dict) -> LengthBreakdown:
        return cls(list(data["edges"]), data["examples"], data["mean_tokens"], data["min_examples"],
                   [LengthBucket.from_dict(b) for b in data["buckets"]])


@dataclass
class BenchResults:
    """results.json: written by `write` only."""

    task: str
    examples: int
    environment: dict
    baselines: Baselines
    aa_control: AAControl
    warning: str | None              # the A/A control's
    measurement: dict                # passes and the A/A threshold
    reference_export: dict | None
    policy: str | None
    tokenize: dict | None            # latency_summary of the tokenisation times
    notes: list[str]
    variants: list[VariantSummary]
    sweep: list[VariantSummary]
    static: list[VariantSummary]
    device_warnings: list[str] = field(default_factory=list)   # CPU clock dropped or throttled, per pass
    pareto: list[dict] | None = None
    operating_point: dict | None = None
    static_comparison: list[StaticComparison] | None = None
    asked_point: bool = False        # an operating point was asked for (then `operating_point` is written, None too)
    point_rule: str | None = None    # how it was chosen, in words (with asked_point)
    length_buckets: LengthBreakdown | None = None   # the table by --length-buckets
    length_bins: LengthBreakdown | None = None      # the same in PLOT_BIN_TOKENS bins: the length plot's points
    # Another model measured in the same pass (mpee-bench --companion): speed-ups and rho against this model's
    companion: list[VariantSummary] = field(default_factory=list)
    command: list[str] = field(default_factory=list)   # the mpee-bench command that measured (empty: unknown)

    @property
    def reference(self) -> VariantSummary:
        """The fp32 baseline row: the fp32 sweep's speed-ups are against it."""
        return next(r for r in self.variants if r.variant == self.baselines.fp32)

    def to_dict(self) -> dict:
        out = {"task": self.task, "examples": self.examples, "environment": self.environment,
               "baselines": self.baselines.to_dict(), "aa_control": self.aa_control.to_dict(),
               "warning": self.warning, "device_warnings": self.device_warnings, "measurement": self.measurement,
               "reference_export": self.reference_export, "policy": self.policy, "tokenize": self.tokenize,
               "notes": self.notes, "variants": [r.to_dict() for r in self.variants],
               "sweep": [r.to_dict() for r in self.sweep], "static": [r.to_dict() for r in self.static],
               "companion": [r.to_dict() for r in self.companion], "command": self.command}
        if self.pareto is not None:
            out["pareto"] = self.pareto
        if self.asked_point:
            out["operating_point"] = self.operating_point
            out["point_rule"] = self.point_rule
        if self.static_comparison is not None:
            out["static_comparison"] = [c.to_dict() for c in self.static_comparison]
        for key in ("length_buckets", "length_bins"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key).to_dict()
        return out

    @classmethod
    def from_dict(cls, data: dict) -> BenchResults:
        return cls(task=data["task"], examples=data["examples"], environment=data["environment"],
                   baselines=Baselines.from_dict(data["baselines"]), aa_control=AAControl.from_dict(data["aa_control"]),
                   warning=data["warning"], measurement=data["measurement"],
                   reference_export=data.get("reference_export"), policy=data.get("policy"),
                   tokenize=data.get("tokenize"), notes=list(data["notes"]),
                   variants=[VariantSummary.from_dict(r, "table") for r in data["variants"]],
                   sweep=[VariantSummary.from_dict(r, "sweep") for r in data["sweep"]],
                   static=[VariantSummary.from_dict(r, "static") for r in data["static"]],
                   device_warnings=list(data.get("device_warnings", [])), pareto=data.get("pareto"),
                   operating_point=data.get("operating_point"),
                   static_comparison=None if data.get("static_comparison") is None else
                   [StaticComparison.from_dict(c) for c in data["static_comparison"]],
                   asked_point="operating_point" in data, point_rule=data.get("point_rule"),
                   length_buckets=_breakdown(data.get("length_buckets")),
                   length_bins=_breakdown(data.get("length_bins")),
                   companion=[VariantSummary.from_dict(r, "companion") for r in data.get("companion", [])],
                   command=list(data.get("command", [])))

    def write(self, path: Path) -> None:
        write_text(path, json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: Path) -> BenchResults:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


def _breakdown(data: dict | None) -> LengthBreakdown | None:
    return None if data is None else LengthBreakdown.from_dict(data)
