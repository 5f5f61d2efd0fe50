"""Which rows of a batch run together: padding every row to the batch's longest costs compute on tokens that do
not exist, so rows of very different lengths are better run apart (docs/serving.md "Batching")."""

from __future__ import annotations

from collections.abc import Sequence


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
