"""The statistics a study reports, all from scipy.stats: a mean with its 95% confidence interval, the paired
difference of two arms (same seeds: same data order and initialisation), and the verdict a confidence
interval gives on a directional claim.

Seeds are few (3 by default), so intervals are Student-t intervals (scipy.stats.t, ttest_1samp's
confidence_interval); `method="bootstrap"` uses scipy.stats.bootstrap (BCa) instead, for studies with
more seeds. Nothing here is hand-written statistics: only the bookkeeping around scipy's calls."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats

VERDICTS = ("supported", "refuted", "inconclusive")
CI_METHODS = ("t", "bootstrap")


def _finite(values: Sequence[float]) -> np.ndarray:
    arr = np.asarray([float(v) for v in values], dtype=float)
    return arr[np.isfinite(arr)]


def interval(values: Sequence[float], method: str = "t", confidence: float = 0.95, seed: int = 0) -> list[float] | None:
    """The confidence interval of the mean of `values`; None with fewer than 2 values. Values that do not
    vary (a parameter count) have the degenerate interval [x, x]."""
    if method not in CI_METHODS:
        raise ValueError(f"ci method {method!r}; valid: {list(CI_METHODS)}")
    arr = _finite(values)
    if arr.size < 2:
        return None
    if np.ptp(arr) == 0:
        return [float(arr[0]), float(arr[0])]
    if method == "bootstrap":
        res = stats.bootstrap((arr,), np.mean, confidence_level=confidence, method="BCa", rng=np.random.default_rng(seed))
        lo, hi = res.confidence_interval
    else:
        lo, hi = stats.ttest_1samp(arr, 0.0).confidence_interval(confidence)
    return [float(lo), float(hi)]


def describe(values: Sequence[float], method: str = "t") -> dict:
    """{n, mean, sd, ci95} of one figure over seeds (sd: sample standard deviation, ddof 1)."""
    arr = _finite(values)
    if arr.size == 0:
        return {"n": 0, "mean": None, "sd": None, "ci95": None}
    return {"n": int(arr.size), "mean": float(arr.mean()), "sd": float(arr.std(ddof=1)) if arr.size > 1 else None,
            "ci95": interval(arr, method)}


def paired(a: Sequence[float], b: Sequence[float], method: str = "t") -> dict:
    """a - b over paired seeds: {n, estimate (mean difference), ci95, p (two-sided paired t-test)}."""
    if len(a) != len(b):
        raise ValueError(f"paired samples need equal lengths, got {len(a)} and {len(b)}")
    pairs = [(x, y) for x, y in zip(a, b) if math.isfinite(x) and math.isfinite(y)]
    diffs = [x - y for x, y in pairs]
    out = {"n": len(diffs), "estimate": float(np.mean(diffs)) if diffs else None, "ci95": interval(diffs, method), "p": None}
    if len(diffs) >= 2 and np.ptp(diffs) > 0:
        out["p"] = float(stats.ttest_rel([x for x, _ in pairs], [y for _, y in pairs]).pvalue)
    return out


def verdict(ci: Sequence[float] | None, claim: str, threshold: float = 0.0) -> str:
    """A claim 'the estimate is below (claim="<") or above (">") threshold': supported when the whole 95%
    interval lies on the claimed side, refuted when it lies wholly on the other side, else (or with no
    interval, fewer than 2 seeds) inconclusive. An interval that touches the threshold decides nothing."""
    if claim not in ("<", ">"):
        raise ValueError(f"claim {claim!r}; valid: '<', '>'")
    if ci is None:
        return "inconclusive"
    lo, hi = ci
    below, above = hi < threshold, lo > threshold
    if claim == "<":
        return "supported" if below else "refuted" if above else "inconclusive"
    return "supported" if above else "refuted" if below else "inconclusive"
