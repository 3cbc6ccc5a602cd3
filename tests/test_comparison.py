"""The experiment's statistics on synthetic inputs with known answers: paired t against scipy's
paired test and hand-computed values, a known paired difference recovered (and its CI's coverage),
Holm's step-down by hand, and the two-level bootstrap on confusion matrices."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from softprep_train.comparison import (PairInput, compare_family, holm, miou_from_confusion, paired_bootstrap,
                                       paired_t)


def test_paired_t_by_hand_and_against_scipy():
    a = np.array([0.40, 0.42, 0.41, 0.43])
    b = np.array([0.43, 0.44, 0.45, 0.44])
    diff = b - a  # 0.03, 0.02, 0.04, 0.01: mean 0.025, sd 0.012910, se 0.006455
    result = paired_t(a, b)
    assert result.mean == pytest.approx(0.025)
    half = 3.182446305284263 * np.std(diff, ddof=1) / 2  # t_{0.975, 3}
    assert (result.low, result.high) == pytest.approx((0.025 - half, 0.025 + half))
    assert result.p == pytest.approx(stats.ttest_rel(b, a).pvalue)
    assert paired_t(a, b, level=0.99).high > result.high  # a stricter level widens the interval


def test_a_known_paired_difference_is_recovered_with_95_percent_coverage():
    rng = np.random.default_rng(0)
    covered, excluded_zero = 0, 0
    for _ in range(1000):
        seed_luck = rng.normal(0.45, 0.02, 5)  # shared by both arms of a seed: pairing removes it
        a = seed_luck + rng.normal(0, 0.004, 5)
        b = seed_luck + 0.01 + rng.normal(0, 0.004, 5)
        r = paired_t(a, b)
        covered += r.low <= 0.01 <= r.high
        excluded_zero += r.low > 0
    assert 0.93 <= covered / 1000 <= 0.97
    # power: the gain is 3.95 standard errors, t_{0.975,4} = 2.78, so about 85% of experiments find it
    assert 0.78 <= excluded_zero / 1000 <= 0.92


def test_holm_by_hand():
    result = holm([0.01, 0.04, 0.03, float("nan")])
    # sorted: 0.01 (x3) = 0.03, 0.03 (x2) = 0.06, 0.04 (x1) = 0.04 -> monotone 0.06
    assert [r.adjusted_p for r in result[:3]] == pytest.approx([0.03, 0.06, 0.06])
    assert [r.real for r in result] == [True, False, False, False]
    assert [r.level for r in result[:3]] == pytest.approx([1 - 0.05 / 3, 1 - 0.05 / 1, 1 - 0.05 / 2])
    assert np.isnan(result[3].adjusted_p)


def test_miou_from_confusion_by_hand():
    confusion = np.array([[8, 2, 0], [1, 9, 0], [0, 0, 0]])  # class 2 absent from both: not counted
    assert miou_from_confusion(confusion) == pytest.approx((8 / 11 + 9 / 12) / 2)
    stacked = np.stack([confusion, np.eye(3, dtype=int)])
    np.testing.assert_allclose(miou_from_confusion(stacked), [(8 / 11 + 9 / 12) / 2, 1.0])


def _confusions(rng, seeds, images, correct_share):
    """``(S, N, 2, 2)``: each image has 100 pixels per class, ``correct_share`` of them right."""
    right = rng.binomial(100, correct_share, (seeds, images, 2))
    out = np.zeros((seeds, images, 2, 2), np.int64)
    out[..., 0, 0], out[..., 0, 1] = right[..., 0], 100 - right[..., 0]
    out[..., 1, 1], out[..., 1, 0] = right[..., 1], 100 - right[..., 1]
    return out


def test_two_level_bootstrap_recovers_a_known_gain_and_is_zero_for_identical_arms():
    rng = np.random.default_rng(1)
    a = _confusions(rng, 5, 40, 0.70)
    b = _confusions(rng, 5, 40, 0.80)
    true = miou_from_confusion(b.sum(1)).mean() - miou_from_confusion(a.sum(1)).mean()
    low, high = paired_bootstrap(a, b, replicates=500)
    assert low < true < high and low > 0
    assert paired_bootstrap(a, a, replicates=100) == (0.0, 0.0)


def test_a_family_calls_only_the_real_difference():
    rng = np.random.default_rng(2)
    base = _confusions(rng, 5, 30, 0.7)
    better = _confusions(rng, 5, 30, 0.8)
    same = _confusions(rng, 5, 30, 0.7)
    score = lambda c: miou_from_confusion(c.sum(1))  # noqa: E731
    family = compare_family([PairInput("better", "base", "better", "1/8", score(base), score(better), base, better),
                             PairInput("same", "base", "same", "1/8", score(base), score(same), base, same)],
                            replicates=300)
    assert family[0].holm.real and family[0].verdict.startswith("real: better better than base")
    assert not family[1].holm.real and family[1].verdict == "not distinguishable from 0"
    assert family[0].t_corrected.level == pytest.approx(1 - 0.05 / 2)  # the smallest p is read at alpha / 2
