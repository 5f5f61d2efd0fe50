"""The throughput benchmark's typed records, each with one reader and writer: `Latency`, `ThroughputRow` (a
variant at a batch size), `Comparison`, `AASpread`, `Settings` and `ThroughputRecord` (OUT/throughput.json)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from ...core.metrics import latency_summary
from ...errors import MpeeRuntimeError
from ...files import write_text
from ..analysis import AA_THRESHOLD

RECORD_SCHEMA = 1
ORDER_SEED = 0      # the interleaved passes' orders are drawn from this seed


SINGLE, PARALLEL = "single", "parallel"


FULL, MPEE = "full", "mpee"


AA_SUFFIX = "_aa"


BATCH_END, ENGINE = "batch_end", "engine"   # ThroughputRow.latency_source


@dataclass(frozen=True)
class Latency:
    """Per-request latency statistics in microseconds (metrics.latency_summary)."""

    n: int
    mean_us: float
    p50_us: float
    p90_us: float
    p99_us: float

    @classmethod
    def of(cls, values_us: Sequence[float]) -> Latency:
        s = latency_summary(values_us)
        return cls(s["n"], s["mean_us"], s["p50_us"], s["p90_us"], s["p99_us"])

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Latency:
        return cls(**{f.name: data[f.name] for f in fields(cls)})


@dataclass
class ThroughputRow:
    """One variant at one batch size, over every repetition."""

    variant: str                     # the model: onnx_fused, onnx_fused_aa, onnx_fused_int8, mpee, mpee_int8
    way: str                         # SINGLE or PARALLEL
    kind: str                        # FULL or MPEE
    precision: str
    batch_size: int
    sessions: int                    # sessions (MPEE: engines) running at once
    threads_per_session: int
    source: str                      # the graph (full model) or the bundle folder (MPEE)
    texts: int                       # per pass
    batches: int                     # per pass
    pass_s: list[float]              # wall time of each repetition's pass
    texts_per_s: float               # texts of every pass / their summed wall time
    latency: Latency                 # per request, every repetition
    accuracy: float | None           # None: the input has no labels
    agreement: float                 # fraction of labels equal to the model's alone at batch 1
    latency_source: str              # BATCH_END: every row at its batch's end; ENGINE: each row's own answer
    mean_exit_layer: float
    predictions: list[int]           # label index per example, in the input's order (last repetition)
    speedup: float | None = None     # texts_per_s / the baseline's (same precision and batch size)
    baseline: str | None = None      # the baseline's key

    @property
    def key(self) -> str:
        return f"{self.variant}/{self.way}"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ThroughputRow:
        kw = {f.name: data[f.name] for f in fields(cls) if f.name in data}
        return cls(**(kw | {"latency": Latency.from_dict(data["latency"])}))


@dataclass(frozen=True)
class Comparison:
    """At one batch size and precision: the best full model (the baseline) and the best MPEE way."""

    batch_size: int
    precision: str
    baseline: str                    # key of the faster full-model way
    baseline_texts_per_s: float
    best_mpee: str | None            # None: no MPEE bundle of this precision
    best_mpee_texts_per_s: float | None
    speedup: float | None            # best MPEE / baseline

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Comparison:
        return cls(**{f.name: data[f.name] for f in fields(cls)})


@dataclass(frozen=True)
class AASpread:
    """The A/A pair at one batch size: relative spreads of texts/s and of p50 latency."""

    batch_size: int
    variants: list[str]
    texts_per_s_spread: float
    p50_spread: float
    threshold: float = AA_THRESHOLD

    @property
    def flagged(self) -> bool:
        return max(self.texts_per_s_spread, self.p50_spread) > self.threshold

    def to_dict(self) -> dict:
        return asdict(self) | {"flagged": self.flagged}   # for the reader; recomputed on reading

    @classmethod
    def from_dict(cls, data: dict) -> AASpread:
        return cls(data["batch_size"], list(data["variants"]), data["texts_per_s_spread"], data["p50_spread"],
                   data["threshold"])


@dataclass(frozen=True)
class Settings:
    """What was run, on what."""

    bundle: str
    int8_bundle: str | None
    reference: str
    input: str
    examples: int
    max_examples: int | None
    texts_cut: int                   # texts longer than the engine's max_chars, cut before tokenizing
    batch_sizes: list[int]
    repeats: int
    warmup: int
    threads: int                     # in all, per variant
    spinning: bool
    policy: str | None               # None: each bundle's own (as engine.predict)
    threshold: float | None
    keep_ratio: float | None
    order_seed: int = ORDER_SEED

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Settings:
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


@dataclass
class ThroughputRecord:
    """OUT/throughput.json: the run's settings, the machine, every row, the comparisons and the A/A control."""

    run_id: str
    task: str
    labels: list[str]
    gold: list[int] | None
    settings: Settings
    environment: dict                # env.environment(), plus cpu_before / cpu_after
    rows: list[ThroughputRow]
    comparisons: list[Comparison] = field(default_factory=list)
    aa: list[AASpread] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    reference_export: dict | None = None   # summary of REF/reference.json (records.reference_export)
    device_warning: str | None = None
    schema: int = RECORD_SCHEMA

    @property
    def warnings(self) -> list[str]:
        """The A/A control when flagged, and the CPU's warning."""
        out = []
        flagged = [a for a in self.aa if a.flagged]
        if flagged:
            worst = max(flagged, key=lambda a: max(a.texts_per_s_spread, a.p50_spread))
            out.append(f"A/A control: {' and '.join(worst.variants)} (the same variant, two loads) differ by "
                       f"{100 * worst.texts_per_s_spread:.1f}% in texts/s and {100 * worst.p50_spread:.1f}% in p50 "
                       f"at batch size {worst.batch_size}, above {100 * worst.threshold:.0f}%: differences of that "
                       "size are noise (re-run on an idle machine)")
        return out + ([self.device_warning] if self.device_warning else [])

    def to_dict(self) -> dict:
        out = asdict(self)
        out["rows"] = [r.to_dict() for r in self.rows]
        out["aa"] = [a.to_dict() for a in self.aa]
        return out

    @classmethod
    def from_dict(cls, data: dict) -> ThroughputRecord:
        if data.get("schema") != RECORD_SCHEMA:
            raise MpeeRuntimeError(f"throughput record schema {data.get('schema')!r} unsupported (this version "
                                   f"reads {RECORD_SCHEMA}; re-run mpee-bench --throughput)")
        kw = {f.name: data[f.name] for f in fields(cls) if f.name in data}
        kw |= {"settings": Settings.from_dict(data["settings"]),
               "rows": [ThroughputRow.from_dict(r) for r in data["rows"]],
               "comparisons": [Comparison.from_dict(c) for c in data.get("comparisons", [])],
               "aa": [AASpread.from_dict(a) for a in data.get("aa", [])]}
        return cls(**kw)

    def dump(self, path: Path) -> None:
        write_text(path, json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: Path) -> ThroughputRecord:
        if not path.is_file():
            raise MpeeRuntimeError(f"{path}: not found (run mpee-bench --throughput BUNDLE ... --out "
                                   f"{path.parent} first)")
        try:
            return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except (ValueError, KeyError, TypeError) as e:
            raise MpeeRuntimeError(f"{path}: not a throughput record ({str(e)[:120]})") from None
