"""Figures over measured samples, shared by the benches and the chaos run."""

from __future__ import annotations


def percentile(values: list[float], p: float) -> float:
    """The nearest-rank `p`th percentile (0 < p <= 100) of `values`; 0.0 when there are none."""
    ordered = sorted(values)
    return ordered[max(0, round(p / 100 * len(ordered)) - 1)] if ordered else 0.0
