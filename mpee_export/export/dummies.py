"""Dummy graph inputs for the exporter: export tracing and the parity checks feed every graph random inputs of
the shapes the bundle contract names (batch 1, or a padded batch with rows of given lengths)."""

from __future__ import annotations

import numpy as np

from mpee_runtime.bundle.contract import (
    HIDDEN,
    INPUT_IDS,
    KEEP_RATIO,
    LENGTHS,
    MEMORY,
    POSITIONS,
    SCORES,
    TOKEN_TYPE_IDS,
)

# Export dummies: a length that is neither 1 nor a model constant, so no axis is traced as fixed.
DUMMY_SEQ = 16


def dummy_feeds(names: list[str], *, hidden: int, num_labels: int, vocab_size: int, seq: int = DUMMY_SEQ,
                keep_ratio: float = 0.7, rng: np.random.Generator | None = None, cls_id: int = 2
                ) -> dict[str, np.ndarray]:
    """Random inputs (batch 1, `seq` tokens) for the graph inputs `names`: export tracing and parity checks.

    Token ids start with `cls_id` ([CLS] / <s>) and avoid the first five ids (special tokens in every family
    here: no padding id among them); the second half of the tokens is segment 1; scores are a distribution
    over positions 1..seq-1, as a score memory is; token positions are [CLS]'s 0, then distinct positions below
    2 seq in no order, as pruning leaves them.
    """
    rng = rng or np.random.default_rng(0)
    ids = rng.integers(5, vocab_size, (1, seq)).astype(np.int64)
    ids[0, 0] = cls_id
    scores = rng.random((1, seq - 1)).astype(np.float32)
    values = {INPUT_IDS: ids, TOKEN_TYPE_IDS: (np.arange(seq)[None] >= seq // 2).astype(np.int64),
              HIDDEN: rng.standard_normal((1, seq, hidden)).astype(np.float32),
              SCORES: scores / scores.sum(), MEMORY: rng.standard_normal((1, num_labels)).astype(np.float32),
              KEEP_RATIO: np.asarray(keep_ratio, dtype=np.float32)}
    if POSITIONS in names:   # drawn last, so the other inputs are the same with or without them
        values[POSITIONS] = np.concatenate([[0], rng.permutation(np.arange(1, 2 * seq))[:seq - 1]]).astype(np.int64)[None]
    return {n: values[n] for n in names}


def batch_dummy_feeds(names: list[str], *, hidden: int, num_labels: int, vocab_size: int,
                      lengths: tuple[int, ...] = (DUMMY_SEQ, DUMMY_SEQ - 5, DUMMY_SEQ - 9), keep_ratio: float = 0.7,
                      rng: np.random.Generator | None = None, cls_id: int = 2) -> dict[str, np.ndarray]:
    """`dummy_feeds` for a padded batch with rows of `lengths` real tokens (padding zeroed, each row's scores a
    distribution over its own positions 1..n-1): batch graphs' export tracing and parity checks."""
    rng = rng or np.random.default_rng(0)
    b, n = len(lengths), max(lengths)
    per_row = [n for n in names if n != LENGTHS]
    rows = [dummy_feeds(per_row, hidden=hidden, num_labels=num_labels, vocab_size=vocab_size, seq=m,
                        keep_ratio=keep_ratio, rng=rng, cls_id=cls_id) for m in lengths]
    feeds = {}
    for name in names:
        if name == KEEP_RATIO:
            feeds[name] = rows[0][name]
        elif name == LENGTHS:
            feeds[name] = np.asarray(lengths, dtype=np.int64)
        elif name == MEMORY:
            feeds[name] = np.concatenate([r[name] for r in rows])
        else:
            width = n - 1 if name == SCORES else n
            out = np.zeros((b, width) + rows[0][name].shape[2:], dtype=rows[0][name].dtype)
            for j, r in enumerate(rows):
                out[j, :r[name].shape[1]] = r[name][0]
            feeds[name] = out
    return feeds
