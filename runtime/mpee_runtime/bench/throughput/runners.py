"""Batches and what runs them: `make_batches` (length-sorted), a full model's runner (padded batch, one
session) and MPEE's (`MpeeEngine.predict_batch`), each answering labels, exit layers and per-row times."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ...core.padding import pad_rows


@dataclass(frozen=True)
class Batch:
    """Rows of the input run together."""

    rows: np.ndarray                 # example indices, int64 (b,)
    texts: list[str]
    pairs: list[str | None] | None   # None: the input has no second texts
    tokens: int                      # the longest row's length in tokens: the padded length

    @property
    def size(self) -> int:
        return len(self.texts)


@dataclass(frozen=True)
class Answers:
    """A runner's answers for one batch, per row."""

    labels: list[int]
    exit_layers: list[int]
    ready_us: list[float] | None = None   # from the batch's start to the row's answer; None: the batch's end


Runner = Callable[[Batch], Answers]


Encode = Callable[[str, "str | None"], tuple[np.ndarray, np.ndarray]]


def make_batches(texts: Sequence[str], pairs: Sequence[str | None] | None, lengths: Sequence[int],
                 size: int) -> list[Batch]:
    """Batches of `size` rows of the examples sorted by length (ties by position), in that order."""
    order = sorted(range(len(texts)), key=lambda i: (lengths[i], i))
    batches = []
    for start in range(0, len(order), size):
        rows = order[start:start + size]
        batches.append(Batch(np.asarray(rows, dtype=np.int64), [texts[i] for i in rows],
                             None if pairs is None else [pairs[i] for i in rows], max(lengths[i] for i in rows)))
    return batches


def full_model_runner(session, encode: Encode, num_layers: int, pad_id: int = 0) -> Runner:
    """A full model (inputs input_ids / attention_mask / token_type_ids, output logits (b, labels)) on batches padded
    with `pad_id`; the graph's own input names decide which of the three it is fed."""
    names = {i.name for i in session.get_inputs()}

    def run(batch: Batch) -> Answers:
        pairs = batch.pairs or [None] * batch.size
        ids, mask, types = pad_rows([encode(t, p) for t, p in zip(batch.texts, pairs)], pad_id)
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        (logits,) = session.run(None, {k: v for k, v in feeds.items() if k in names})
        return Answers([int(x) for x in logits.argmax(axis=1)], [num_layers] * batch.size)
    return run


def rows_together(engine, size: int) -> bool:
    """Whether `engine.predict_batch` runs a batch of `size` rows together (batch graphs) or row by row."""
    return size > 1 and bool(getattr(engine.manifest, "supports_batches", False))


def ready_us(preds: Sequence, together: bool) -> list[float] | None:
    """Each row's time from the batch's start to its answer, from the engine's own timings: rows run together
    carry it in timings_us["total"]; rows run one by one carry their own time there, so a row's answer comes
    after the running sum. None when a row has no total."""
    totals = [p.timings_us.get("total") for p in preds]
    if any(t is None for t in totals):
        return None
    return [float(t) for t in (totals if together else np.cumsum(totals))]


def mpee_runner(engine, exit_args: dict) -> Runner:
    """`engine.predict_batch` on the batch's texts with the run's exit policy, threshold and keep ratio."""
    def run(batch: Batch) -> Answers:
        preds = engine.predict_batch(batch.texts, batch.pairs, **exit_args)
        return Answers([p.label_index for p in preds], [p.exit_layer for p in preds],
                       ready_us(preds, rows_together(engine, batch.size)))
    return run


@dataclass
class Variant:
    """A model run one way: one runner per session (engine) that runs at once."""

    name: str
    kind: str
    precision: str
    way: str
    source: str
    runners: list[Runner]
    threads_per_session: int
    model: str                       # whose batch-1 labels the rows are checked against

    @property
    def key(self) -> str:
        return f"{self.name}/{self.way}"
