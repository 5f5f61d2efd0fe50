"""Running rows of a batch together through the batch layer graphs (docs/design.md "Batches").

Rule (`run_rows`): the rows are right-padded to the longest; after each layer the exit rule decides for every
running row at once (`policy.BatchExitRule`: one numpy comparison, per-row counts for patience and depth);
the rows whose exit fires leave with their answer, recorded into per-row arrays, and the rows that go on are
cut to their own longest row (hidden, scores, memory, lengths and, where carried, positions sliced). When one row is left it finishes
on the batch-1 graphs (faster, the same answer). Python work per layer does not grow with the rows: every
per-row fact (tokens per layer, exit layer, probabilities, the time of its answer) is a numpy assignment.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from time import perf_counter_ns
from typing import Protocol

import numpy as np
import onnxruntime as ort

from ..bundle.contract import HIDDEN, KEEP_RATIO, LENGTHS, MEMORY, POSITIONS, SCORES
from ..bundle.manifest import Manifest
from .padding import pad_rows
from .policy import BatchExitRule


class Chain(Protocol):
    """What `run_rows` needs of an engine (core.engine.MpeeEngine): its batch-1 and batch sessions."""

    sessions: list[ort.InferenceSession]         # embeddings, then one per layer
    input_names: list[list[str]]
    output_names: list[list[str]]
    num_layers: int
    manifest: Manifest

    def batch_sessions(self) -> list[ort.InferenceSession]: ...

    def embedding_feeds(self, input_ids: np.ndarray, token_type_ids: np.ndarray) -> dict[str, np.ndarray]: ...


@dataclass(frozen=True)
class BatchRows:
    """What `run_rows` found, per row of the batch (n rows, L layers, C classes)."""

    exit_layer: np.ndarray           # (n,) int64, 1-based
    attn: np.ndarray                 # (n, L) int64: tokens entering each layer's attention (up to the exit)
    ffn: np.ndarray                  # (n, L) int64: tokens in each layer's FFN
    probs: np.ndarray                # (n, C) float32: the exit layer's probabilities
    done_us: np.ndarray              # (n,) float64: from the start (after padding) to the row's answer
    embed_us: float
    layer_us: list[float]            # each executed layer's time, for the batch
    layer_probs: np.ndarray | None   # (n, L, C) with record
    layer_entropies: np.ndarray | None   # (n, L) with record


def run_rows(engine: Chain, input_ids: Sequence[np.ndarray], token_type_ids: Sequence[np.ndarray],
             rule: BatchExitRule | None, ratios: dict[int, np.ndarray], record: bool = False) -> BatchRows:
    """Run the rows (each (T_i,) int64) through the chain together (the rule in the module docstring); `rule`
    None: no layer exit, every row runs every layer."""
    sessions, inputs, outputs = engine.sessions, engine.input_names, engine.output_names
    batch_sessions, entries = engine.batch_sessions(), engine.manifest.batch_graphs
    n_rows, num_layers = len(input_ids), engine.num_layers
    ids, _, types = pad_rows([(a[None], b[None]) for a, b in zip(input_ids, token_type_ids)],
                             engine.manifest.model.pad_token_id)
    lengths = np.asarray([len(r) for r in input_ids], dtype=np.int64)
    attn = np.zeros((n_rows, num_layers), dtype=np.int64)
    ffn = np.zeros_like(attn)
    exit_layer = np.zeros(n_rows, dtype=np.int64)
    done_ns = np.zeros(n_rows, dtype=np.int64)
    final = None
    layer_probs = layer_entropies = None
    t0 = perf_counter_ns()
    (hidden,) = sessions[0].run(outputs[0], engine.embedding_feeds(ids, types))
    embed_us = (perf_counter_ns() - t0) / 1e3
    state = {HIDDEN: hidden, LENGTHS: lengths}
    carries_positions = engine.manifest.model.relative_positions
    positions = None
    rows = np.arange(n_rows)                      # the original index of each row still running
    layer_us: list[float] = []
    for i in range(num_layers):
        if i in ratios:
            state[KEEP_RATIO] = ratios[i]
        t = perf_counter_ns()
        if len(rows) == 1:   # one row left: the batch-1 graph, faster and the same answer
            n = int(state[LENGTHS][0])
            cut = {HIDDEN: n, SCORES: n - 1, POSITIONS: n}
            feeds = {k: np.ascontiguousarray(state[k][:, :cut[k]]) if k in cut else state[k] for k in inputs[i + 1]}
            out = sessions[i + 1].run(outputs[i + 1], feeds)
            out.insert(5, np.asarray([out[0].shape[1]], dtype=np.int64))   # the batch graphs' order
        else:
            out = batch_sessions[i].run(entries[i].outputs, {k: state[k] for k in entries[i].inputs})
        layer_us.append((perf_counter_ns() - t) / 1e3)
        hidden, scores, memory, probs, entropy, new_lengths = out[:6]
        if carries_positions:
            positions = out[6]
        attn[rows, i], ffn[rows, i] = state[LENGTHS], new_lengths
        if final is None:
            final = np.zeros((n_rows, probs.shape[1]), dtype=probs.dtype)
            if record:
                layer_probs = np.zeros((n_rows, num_layers, probs.shape[1]), dtype=probs.dtype)
                layer_entropies = np.zeros((n_rows, num_layers), dtype=entropy.dtype)
        if record:
            layer_probs[rows, i], layer_entropies[rows, i] = probs, entropy
        if i == num_layers - 1:
            fire = np.ones(len(rows), dtype=bool)
        elif rule is None:
            fire = np.zeros(len(rows), dtype=bool)
        else:
            fire = rule.fires(probs, entropy, rows)
        if fire.any():
            leaving = rows[fire]
            exit_layer[leaving], final[leaving], done_ns[leaving] = i + 1, probs[fire], perf_counter_ns() - t0
        stay = np.flatnonzero(~fire)
        if len(stay) == 0:
            break
        if len(stay) < len(rows):
            n = int(new_lengths[stay].max())
            hidden, scores = np.ascontiguousarray(hidden[stay, :n]), np.ascontiguousarray(scores[stay, :n - 1])
            memory, new_lengths, rows = memory[stay], new_lengths[stay], rows[stay]
            if carries_positions:
                positions = np.ascontiguousarray(positions[stay, :n])
        state.update({HIDDEN: hidden, SCORES: scores, MEMORY: memory, LENGTHS: new_lengths})
        if carries_positions:
            state[POSITIONS] = positions
    return BatchRows(exit_layer, attn, ffn, final, done_ns / 1e3, embed_us, layer_us, layer_probs, layer_entropies)
