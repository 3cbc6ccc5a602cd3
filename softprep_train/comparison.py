"""Paired comparisons of two training arms: t-based and two-level bootstrap confidence intervals,
Holm's correction across comparisons.

Two arms are *paired by seed*: the same seed gives both the same initial weights, batches and
augmentation draws, so the per-seed difference ``b - a`` removes the seed's own luck. For each
comparison:

* :func:`paired_t`: mean paired difference, its t-based CI (``n - 1`` degrees of freedom) and
  two-sided p-value;
* :func:`paired_bootstrap`: a two-level bootstrap of the same difference: resample the seeds
  (pairs), then the evaluation images (the same images for both arms of a pair), and recompute
  mIoU from the summed per-image confusion matrices: the CI also carries the uncertainty of a
  101-image val set, which the seed-level t interval does not see;
* :func:`holm`: Holm's step-down adjusted p-values and, per comparison, the confidence level at
  which its CI is read (``1 - alpha / (m - rank)``, rank from 0 by ascending p): a difference is
  called real only when that corrected CI excludes 0 (equivalently, Holm-adjusted p < alpha).

Units follow the inputs (mIoU as a fraction in [0, 1] unless the caller scales it).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class PairedT:
    """Mean of ``b - a`` over seeds, its t-based CI at ``level``, and the two-sided p-value."""

    mean: float
    low: float
    high: float
    p: float
    n: int
    level: float


def paired_t(a: np.ndarray, b: np.ndarray, level: float = 0.95) -> PairedT:
    """``a``, ``b``: ``(n,)`` per-seed scores of two arms, paired by position (seed)."""
    diff = np.asarray(b, float) - np.asarray(a, float)
    n = len(diff)
    mean = float(diff.mean())
    if n < 2:
        return PairedT(mean, float("nan"), float("nan"), float("nan"), n, level)
    se = float(diff.std(ddof=1)) / np.sqrt(n)
    if se == 0:
        p = 1.0 if mean == 0 else 0.0
        return PairedT(mean, mean, mean, p, n, float(level))
    from scipy import stats  # here: scipy.stats costs every `eval` 0.7 s at start-up

    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * se
    p = float(2 * stats.t.sf(abs(mean) / se, n - 1))
    return PairedT(mean, mean - half, mean + half, p, n, float(level))


def iou_from_confusion(confusion: np.ndarray) -> np.ndarray:
    """``(..., C, C)`` confusion (rows = truth) -> ``(..., C)`` IoU = TP / (TP + FP + FN); NaN where that is 0/0."""
    confusion = np.asarray(confusion, dtype=np.float64)
    tp = np.diagonal(confusion, axis1=-2, axis2=-1)
    union = confusion.sum(-2) + confusion.sum(-1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / union, np.nan)


def miou_from_confusion(confusion: np.ndarray) -> np.ndarray:
    """``(..., C, C)`` confusion (rows = truth) -> ``(...)`` mean IoU over classes with a non-empty union."""
    with np.errstate(invalid="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # an all-empty confusion: NaN, as intended
            return np.nanmean(iou_from_confusion(confusion), axis=-1)


def paired_bootstrap(a: np.ndarray, b: np.ndarray, level: float = 0.95, replicates: int = 2000, seed: int = 0,
                     score=miou_from_confusion) -> tuple[float, float]:
    """Two-level percentile bootstrap CI of the mean paired difference ``score(b) - score(a)``.

    Args:
        a, b: ``(S, N, C, C)`` per-image confusion matrices of each seed's run, paired by seed and by
            image (the same ``N`` evaluation images in the same order).
        score: ``(..., C, C) -> (...)`` summary of a summed confusion (mIoU by default; a class's IoU
            for secondary endpoints).

    Each replicate draws ``S`` seeds with replacement and, for each drawn seed, ``N`` images with
    replacement (shared by both arms), sums the drawn images' confusions, and averages the
    per-seed ``score(b) - score(a)``.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    seeds, images = a.shape[:2]
    rng = np.random.default_rng(seed)
    flat_a, flat_b = a.reshape(seeds, images, -1), b.reshape(seeds, images, -1)
    shape = a.shape[2:]
    out = np.empty(replicates)
    for r in range(replicates):
        drawn = rng.integers(0, seeds, seeds)
        counts = np.stack([np.bincount(rng.integers(0, images, images), minlength=images) for _ in drawn])  # (S, N)
        sum_a = np.einsum("sn,snk->sk", counts, flat_a[drawn]).reshape(seeds, *shape)
        sum_b = np.einsum("sn,snk->sk", counts, flat_b[drawn]).reshape(seeds, *shape)
        out[r] = np.nanmean(score(sum_b) - score(sum_a))
    tail = (1 - level) / 2
    return float(np.nanquantile(out, tail)), float(np.nanquantile(out, 1 - tail))


@dataclass(frozen=True)
class Holm:
    """Holm's step-down result for one comparison of a family."""

    adjusted_p: float
    level: float  # the confidence level its corrected CI is read at
    real: bool  # adjusted_p < alpha


def holm(p_values: list[float], alpha: float = 0.05) -> list[Holm]:
    """Holm (1979) over a family of ``m`` p-values (NaN: never real, does not count towards ``m``).

    The ``k``-th smallest p (k from 0) is tested at ``alpha / (m - k)`` and its CI read at level
    ``1 - alpha / (m - k)``; adjusted p-values are ``max_{j <= k} min(1, (m - j) p_(j))``.
    """
    p = np.asarray(p_values, float)
    finite = np.flatnonzero(~np.isnan(p))
    m = len(finite)
    order = finite[np.argsort(p[finite], kind="stable")]
    result: list[Holm | None] = [None] * len(p)
    running = 0.0
    for k, i in enumerate(order):
        running = max(running, min(1.0, (m - k) * p[i]))
        result[i] = Holm(float(running), float(1 - alpha / (m - k)), bool(running < alpha))
    for i in range(len(p)):
        if result[i] is None:
            result[i] = Holm(float("nan"), 1 - alpha, False)
    return result  # type: ignore[return-value]


@dataclass(frozen=True)
class Comparison:
    """One ``b`` vs ``a`` comparison at one scale: t (95% and corrected), bootstrap (95% and corrected), Holm."""

    name: str
    a: str
    b: str
    scale: str
    seeds: int
    t: PairedT
    t_corrected: PairedT
    bootstrap: tuple[float, float]
    bootstrap_corrected: tuple[float, float]
    holm: Holm

    @property
    def verdict(self) -> str:
        boot_low, boot_high = self.bootstrap_corrected
        if self.seeds < 2 or np.isnan(self.t_corrected.low):
            return "not judged (fewer than 2 paired seeds)"
        if self.holm.real and (boot_low > 0 or boot_high < 0):
            return f"real: {self.b} {'better' if self.t.mean > 0 else 'worse'} than {self.a}"
        if self.holm.real:
            return "t says real, but the bootstrap's corrected CI (images too) includes 0: not called"
        return "not distinguishable from 0"

    def to_json(self) -> dict:
        return {**asdict(self), "verdict": self.verdict}


@dataclass(frozen=True)
class PairInput:
    """The data of one comparison ``b - a``: per-seed scores ``(S,)`` and per-image confusions
    ``(S, N, C, C)`` of each arm (paired by seed and image), and the score they come from."""

    name: str
    a: str
    b: str
    scale: str
    score_a: np.ndarray
    score_b: np.ndarray
    confusions_a: np.ndarray
    confusions_b: np.ndarray
    score: object = miou_from_confusion


def compare_family(pairs: list[PairInput], alpha: float = 0.05, replicates: int = 2000) -> list[Comparison]:
    """A Holm-corrected family of paired comparisons (t and two-level bootstrap CIs, 95% and corrected)."""
    firsts = [paired_t(p.score_a, p.score_b) for p in pairs]
    corrections = holm([t.p for t in firsts], alpha)
    out = []
    for p, t, h in zip(pairs, firsts, corrections):
        boot = paired_bootstrap(p.confusions_a, p.confusions_b, 0.95, replicates, score=p.score)
        boot_corrected = paired_bootstrap(p.confusions_a, p.confusions_b, h.level, replicates, score=p.score)
        out.append(Comparison(p.name, p.a, p.b, p.scale, len(p.score_a), t, paired_t(p.score_a, p.score_b, h.level),
                              boot, boot_corrected, h))
    return out


__all__ = ["Comparison", "Holm", "PairInput", "PairedT", "compare_family", "holm", "iou_from_confusion", "miou_from_confusion", "paired_bootstrap", "paired_t"]
