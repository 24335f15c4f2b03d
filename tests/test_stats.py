"""Δtop-1's uncertainty: the paired bootstrap from counts equals resampling the images, and
McNemar's exact test has its textbook values."""
import math

import numpy as np
import pytest

from tokenred.evaluate import EvalCounts
from tokenred.stats import mcnemar_exact_p, paired_bootstrap_ci


@pytest.mark.parametrize("b,c,p", [(0, 6, 2 / 64), (3, 3, 1.0), (0, 0, 1.0), (1, 9, 22 / 1024),
                                   (10, 0, 2 / 1024)])
def test_mcnemar_exact_values(b, c, p):
    assert mcnemar_exact_p(b, c) == pytest.approx(p)
    assert mcnemar_exact_p(c, b) == pytest.approx(p)


def test_mcnemar_stays_exact_for_many_discordant_images():
    # far beyond float range in the intermediate binomial sums
    assert 0 < mcnemar_exact_p(900, 1100) < 1e-5
    assert mcnemar_exact_p(1500, 1500) == 1.0      # P(X <= m/2) > 1/2: capped at 1
    assert mcnemar_exact_p(1480, 1520) == pytest.approx(0.4762, abs=2e-3)


def test_bootstrap_from_counts_matches_resampling_the_images():
    n, b, c = 800, 14, 6           # the method loses 14 images the baseline had, gains 6
    low, high = paired_bootstrap_ci(n, b, c)
    rng = np.random.default_rng(1)
    per_image = np.array([1] * c + [-1] * b + [0] * (n - b - c))
    deltas = [100 * per_image[rng.integers(0, n, n)].mean() for _ in range(4000)]
    ref_low, ref_high = np.quantile(deltas, [0.025, 0.975])
    assert low == pytest.approx(ref_low, abs=0.15) and high == pytest.approx(ref_high, abs=0.15)
    assert low < 100 * (c - b) / n < high
    # the normal approximation of the same interval, as a second reference
    d = (c - b) / n
    half = 1.96 * math.sqrt(((b + c) / n - d * d) / n) * 100
    assert high - low == pytest.approx(2 * half, rel=0.15)


def test_bootstrap_edge_cases():
    assert paired_bootstrap_ci(100, 0, 0) == (0.0, 0.0)
    assert all(math.isnan(v) for v in paired_bootstrap_ci(0, 0, 0))
    with pytest.raises(ValueError, match="counts out of range"):
        paired_bootstrap_ci(10, 8, 8)
    assert paired_bootstrap_ci(50, 3, 1) == paired_bootstrap_ci(50, 3, 1)   # seeded


def test_eval_counts_add_and_report_the_interval():
    a = EvalCounts(n=400, correct1=300, correct5=390, agree=380, kl_sum=2.0, base_only=10,
                   method_only=4)
    both = a + a
    assert both.n == 800 and both.base_only == 20 and both.method_only == 8
    m = both.metrics(labeled=True)
    assert m["delta_top1_ci_low"] < -1.5 < m["delta_top1_ci_high"]
    assert m["mcnemar_p"] == pytest.approx(mcnemar_exact_p(20, 8))
    assert math.isnan(both.metrics(labeled=False)["mcnemar_p"])
