"""What runs behind the server, one interface for two models: `MpeeBackend` (the bundle's engine) and
`FullModelBackend` (a full-model graph of `mpee-export reference`, the baseline behind the same API), with
the request rows, knobs and answers they exchange with the batcher."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter_ns

import numpy as np

from ..bundle.reference import FULL_MODELS
from ..core.padding import length_groups
from ..core.policy import NO_EXIT, POLICIES
from ..errors import MpeeRuntimeError


class FieldError(MpeeRuntimeError):
    """A request refused because of one field (HTTP 400); `field` names it, e.g. `threshold`, `inputs[2].text`."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name


@dataclass(frozen=True)
class Knobs:
    """One request's exit knobs (None: the bundle's calibrated value); rows batch together only when equal."""

    threshold: float | None = None
    keep_ratio: float | tuple[float, ...] | None = None   # one ratio, or one per pruning layer
    policy: str | None = None

    def as_kwargs(self) -> dict:
        return {"threshold": self.threshold, "keep_ratio": self.keep_ratio, "policy": self.policy}

    def given(self) -> list[str]:
        """Names of the knobs the request set."""
        return [name for name, value in self.as_kwargs().items() if value is not None]


@dataclass(frozen=True)
class Row:
    text: str
    pair: str | None = None


@dataclass(frozen=True)
class RowAnswer:
    """One row's answer, as `/v1/classify` returns it."""

    label: str
    label_index: int
    probs: list[float]
    exit_layer: int                  # 1-based; the full model: its number of layers
    tokens_per_layer: list[int]      # tokens entering each executed layer's attention
    ffn_tokens_per_layer: list[int]
    flops: int
    rho: float
    rho_pad128: float
    chars_cut: bool                  # the text or pair was cut to the engine's max_chars
    compute_ms: float                # from its batch call's start to its answer, tokenizing included
    batch_rows: int                  # rows of the backend call it was in (run in groups of similar length)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass(frozen=True)
class ModelSummary:
    """What `GET /v1/model` says about the model served."""

    mode: str                        # "mpee": the bundle's early-exit chain; "full": the reference full model
    task: str | None
    labels: list[str]
    precision: str | None            # fp32 / int8 (a full model: by its file name; None when unknown)
    num_layers: int
    max_length: int
    max_chars: int
    graph_ops: str
    supports_batches: bool
    bundle_id: str
    default_policy: str | None       # the calibrated point (None for the full model: it has no exits)
    default_threshold: float | None
    default_keep_ratios: dict[str, float] | None   # pruning layer (0-based, as a string) -> keep ratio
    calibration: dict | None
    full_model: str | None = None    # the graph's file name in --full-model mode
    length_points: list[dict] | None = None   # the point of each input-length bucket, when the bundle has them

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _bundle_summary(engine, mode: str, **changes) -> ModelSummary:
    m = engine.manifest
    base = ModelSummary(
        mode=mode, task=m.model.task, labels=list(engine.labels), precision=m.precision, num_layers=engine.num_layers,
        max_length=m.model.max_length, max_chars=engine.max_chars, graph_ops=m.export.graph_ops,
        supports_batches=m.supports_batches, bundle_id=m.export.bundle_id, default_policy=engine.default_policy,
        default_threshold=engine.default_threshold,
        default_keep_ratios={str(i): r for i, r in engine.default_keep_ratios.items()},
        calibration=m.exit.calibration,
        length_points=None if not m.exit.length_points else [dict(p.__dict__) for p in m.exit.length_points])
    return ModelSummary(**{**base.__dict__, **changes})


class MpeeBackend:
    """The bundle's early-exit chain: each group of rows is one `engine.predict_batch` call, whose answers are
    the batch-1 answers (`predict`, what mpee-run prints)."""

    mode = "mpee"

    def __init__(self, engine) -> None:
        self.engine = engine
        self.labels: list[str] = list(engine.labels)
        self.num_layers: int = engine.num_layers

    def check_knobs(self, knobs: Knobs) -> None:
        """Refuse bad knobs as mpee-run does, with the engine's own checks; raises FieldError naming the field."""
        if knobs.policy is not None and knobs.policy not in POLICIES:
            raise FieldError("policy", f"unknown exit policy {knobs.policy!r} (choose from {', '.join(POLICIES)})")
        try:
            self.engine.exit_rule(knobs.policy, knobs.threshold)
        except MpeeRuntimeError as e:
            raise FieldError("threshold", str(e)) from None
        try:
            self.engine.keep_ratio_feeds(knobs.keep_ratio)
        except MpeeRuntimeError as e:
            raise FieldError("keep_ratio", str(e)) from None

    def run(self, rows: Sequence[Row], knobs: Knobs, pad_slack: float | None = None) -> list[RowAnswer]:
        preds = self.engine.predict_batch([r.text for r in rows], [r.pair for r in rows], **knobs.as_kwargs(),
                                          pad_slack=pad_slack)
        return [RowAnswer(p.label, p.label_index, p.probs, p.exit_layer, p.tokens_per_layer, p.ffn_tokens_per_layer,
                          p.flops, p.rho, p.rho_pad128, p.chars_cut, p.timings_us["total"] / 1e3, len(rows))
                for p in preds]

    def warm_up(self, rows: int) -> None:
        """Open the batch graphs (they open on the first batch) and run them at full depth, `rows` rows and 2."""
        for n in sorted({rows, 2} if rows > 1 else set()):
            self.engine.predict_batch([WARMUP_TEXT] * n, **NO_EXIT)

    def summary(self) -> ModelSummary:
        return _bundle_summary(self.engine, self.mode)


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


class FullModelBackend:
    """The reference full model (`mpee-export reference`: inputs input_ids / attention_mask / token_type_ids,
    output logits (batch, labels)) behind the same batcher and API, for the load test's baseline. The bundle's
    engine tokenizes (so texts are cut and truncated as for MPEE); the rows are cut into groups of similar
    length as the chain's are (`run`'s pad_slack, padding.length_groups; None: one group), each group one call
    padded to its longest row (attention mask 0 on the padding). Every row runs all layers on all its tokens: rho 1,
    no knobs."""

    mode = "full"

    def __init__(self, engine, path: Path, *, threads: int, spinning: bool = True) -> None:
        from ..core.padding import pad_rows
        from ..core.session import open_session
        self.engine, self.path, self._pad_rows = engine, Path(path), pad_rows
        if not self.path.is_file():
            raise MpeeRuntimeError(f"--full-model {self.path}: no such file")
        self.session = open_session(self.path, threads=threads, spinning=spinning)
        self._inputs = {i.name for i in self.session.get_inputs()}
        outputs = [o.name for o in self.session.get_outputs()]
        if not {"input_ids", "attention_mask"} <= self._inputs or outputs[:1] != ["logits"]:
            raise MpeeRuntimeError(f"--full-model {self.path}: inputs {sorted(self._inputs)} and outputs {outputs}; "
                                   "a full model takes input_ids and attention_mask and gives logits first")
        self.labels: list[str] = list(engine.labels)
        self.num_layers: int = engine.num_layers
        logits = self._logits([engine.encode_cut(WARMUP_TEXT)] * 2)
        if logits.shape != (2, len(self.labels)):
            raise MpeeRuntimeError(f"--full-model {self.path}: logits of shape {list(logits.shape)} for 2 rows, the "
                                   f"bundle has {len(self.labels)} labels (a full model of another task?)")

    def check_knobs(self, knobs: Knobs) -> None:
        given = knobs.given()
        if given:
            raise FieldError(given[0], "the full model (--full-model) has no exits and prunes no token")

    def _logits(self, encoded: list[tuple[np.ndarray, np.ndarray, bool]]) -> np.ndarray:
        ids, mask, types = self._pad_rows([(i, t) for i, t, _ in encoded], self.engine.manifest.model.pad_token_id)
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        (logits,) = self.session.run(["logits"], {k: v for k, v in feeds.items() if k in self._inputs})
        return logits

    def run(self, rows: Sequence[Row], knobs: Knobs, pad_slack: float | None = None) -> list[RowAnswer]:
        start = perf_counter_ns()
        encoded = [self.engine.encode_cut(r.text, r.pair) for r in rows]
        lengths = [int(ids.shape[1]) for ids, _, _ in encoded]
        groups = [list(range(len(rows)))] if pad_slack is None else length_groups(lengths, pad_slack)
        fm, L = self.engine.flops_model, self.num_layers
        out: list[RowAnswer | None] = [None] * len(rows)
        for group in groups:
            probs = _softmax(self._logits([encoded[j] for j in group]))
            ms = (perf_counter_ns() - start) / 1e6
            for j, p in zip(group, probs):
                n = lengths[j]
                flops = fm.full_flops(n)
                _, rho128 = fm.speedups(n, flops)
                k = int(p.argmax())
                out[j] = RowAnswer(self.labels[k], k, [float(x) for x in p], L, [n] * L, [n] * L, flops, 1.0, rho128,
                                   encoded[j][2], ms, len(rows))
        return out

    def warm_up(self, rows: int) -> None:
        self.run([Row(WARMUP_TEXT)] * max(rows, 1), Knobs())

    def summary(self) -> ModelSummary:
        precision = next((m.precision for m in FULL_MODELS if m.file == self.path.name), None)
        return _bundle_summary(self.engine, self.mode, precision=precision, supports_batches=True,
                               default_policy=None, default_threshold=None, default_keep_ratios=None,
                               calibration=None, full_model=self.path.name, length_points=None)


WARMUP_TEXT = "warm up the batch graphs"
