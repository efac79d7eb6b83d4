"""The one percentile the benches and the chaos run report: nearest rank, in percent."""

from __future__ import annotations

import pytest

from stackkit.stats import percentile


@pytest.mark.parametrize(
    ("p", "expected"),
    [(50, 50.0), (95, 95.0), (99, 99.0), (100, 100.0), (1, 1.0), (0.1, 1.0)],
)
def test_nearest_rank_of_a_hundred_samples(p, expected):
    values = [float(n) for n in range(100, 0, -1)]
    assert percentile(values, p) == expected


def test_a_few_samples_give_one_of_them():
    assert percentile([0.3, 0.1, 0.2], 50) == 0.2
    assert percentile([0.3, 0.1, 0.2], 99) == 0.3


def test_no_samples_give_zero():
    assert percentile([], 99) == 0.0
