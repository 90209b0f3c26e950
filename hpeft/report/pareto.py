"""Pareto frontiers and synergy, the two analyses the seeds ask of every comparison."""

from __future__ import annotations

from collections.abc import Sequence


def pareto_mask(points: Sequence[Sequence[float]]) -> list[bool]:
    """For points whose every coordinate is to be minimised: True where no other point is at least as good
    in every coordinate and strictly better in one (the Pareto frontier). Equal points are all kept."""
    def dominates(a, b) -> bool:
        return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))

    return [not any(dominates(q, p) for q in points) for p in points]


def linear_expectation(parts: Sequence[tuple[float, float]]) -> float:
    """The metric a hybrid would reach with no synergy: its parts' metrics (each measured alone) weighted by
    their share of the hybrid's parameters (seed 000, section 6.3). `parts`: (params in the hybrid, metric alone)."""
    total = sum(p for p, _ in parts)
    if total <= 0:
        raise ValueError(f"synergy needs parts with parameters; got {list(parts)}")
    return sum(p / total * metric for p, metric in parts)


def synergy_gain(hybrid_metric: float, parts: Sequence[tuple[float, float]]) -> float:
    """Hybrid metric minus its linear expectation: negative is better when lower is better (NMSE dB)."""
    return hybrid_metric - linear_expectation(parts)


def per_kparam(gain: float, params: float) -> float:
    """Metric change per 1,000 trainable parameters (seed 000's dB per 1K params)."""
    if params <= 0:
        raise ValueError(f"per-parameter efficiency needs a positive parameter count, got {params}")
    return gain / (params / 1000.0)
