"""Which rows of a batch run together: padding every row to the batch's longest costs compute on tokens that do
not exist, so rows of very different lengths are better run apart (docs/serving.md "Batching")."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def length_groups(lengths: Sequence[int], slack: float) -> list[list[int]]:
    """Row indices cut into groups to run as one padded batch each, shortest rows first.

    Rule: rows sorted by length (ties in input order); a group takes the next row while its padded size (rows x
    its longest) stays within (1 + slack) x its real tokens; otherwise the row starts a new group. slack 0: only
    rows of equal length share a group; a large slack: one group. Every index appears once.
    """
    if slack < 0:
        raise ValueError(f"slack must be >= 0, got {slack}")
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    groups: list[list[int]] = []
    real = 0
    for i in order:
        n = lengths[i]
        if groups and (len(groups[-1]) + 1) * n <= (1 + slack) * (real + n):
            groups[-1].append(i)
            real += n
        else:
            groups.append([i])
            real = n
    return groups


def pad_rows(encoded: Sequence[tuple[np.ndarray, np.ndarray]], pad_id: int = 0
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """input_ids, attention_mask and token_type_ids, int64 (b, T) with T the longest row; padding has mask 0 and
    the id `pad_id` (the bundle's `Manifest.model.pad_token_id`: RoBERTa's positions skip exactly that id).

    Args:
        encoded: per row, token ids and token type ids, int64 (1, t).
    """
    width = max(ids.shape[1] for ids, _ in encoded)
    ids = np.full((len(encoded), width), pad_id, dtype=np.int64)
    mask = np.zeros_like(ids)
    types = np.zeros_like(ids)
    for r, (row_ids, row_types) in enumerate(encoded):
        n = row_ids.shape[1]
        ids[r, :n], mask[r, :n], types[r, :n] = row_ids[0], 1, row_types[0]
    return ids, mask, types
