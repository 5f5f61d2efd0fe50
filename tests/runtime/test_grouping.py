"""grouping.length_groups: which rows of a batch are padded and run together."""

from __future__ import annotations

from itertools import pairwise

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mpee_runtime.core.padding import length_groups


@given(st.lists(st.integers(1, 512), max_size=64), st.sampled_from([0.0, 0.1, 0.25, 1.0, 3.0]))
def test_groups_cover_every_row_once_and_bound_the_padding(lengths, slack):
    groups = length_groups(lengths, slack)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    flat = [lengths[i] for g in groups for i in g]
    assert flat == sorted(flat)   # shortest first, each group a run of the sorted rows
    for g in groups:
        real = sum(lengths[i] for i in g)
        assert len(g) * max(lengths[i] for i in g) <= (1 + slack) * real + 1e-9
    for a, b in pairwise(groups):   # a new group only where the next row would break the bound
        real = sum(lengths[i] for i in a) + lengths[b[0]]
        assert (len(a) + 1) * lengths[b[0]] > (1 + slack) * real


def test_zero_slack_groups_equal_lengths_and_a_large_one_makes_one_group():
    assert length_groups([5, 3, 5, 3, 9], 0.0) == [[1, 3], [0, 2], [4]]
    assert length_groups([5, 3, 5, 3, 9], 100.0) == [[1, 3, 0, 2, 4]]
    assert length_groups([], 0.25) == []


def test_negative_slack_is_refused():
    with pytest.raises(ValueError, match="slack must be >= 0"):
        length_groups([1, 2], -1)
