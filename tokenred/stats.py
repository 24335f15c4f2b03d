"""Uncertainty of a paired accuracy difference (a reduced model against the unreduced one, both
evaluated on the same images).

Each image is one of four kinds: both right, both wrong, only the baseline right (``base_only``),
only the method right (``method_only``). The difference in top-1 is
``(method_only - base_only) / n``, and everything about its sampling distribution under
resampling of the images depends only on these counts — so sums over shards (several processes)
suffice, no per-image list is kept:

* ``paired_bootstrap_ci``: the paired bootstrap (resample the n images with replacement, take the
  difference) drawn exactly as a multinomial over the three kinds of image, seeded; percentile
  interval.
* ``mcnemar_exact_p``: McNemar's exact test — under "no difference" the discordant images split
  as Binomial(base_only + method_only, 1/2); two-sided p-value.
"""
from __future__ import annotations

import math

import numpy as np

#: bootstrap draws (the interval's own Monte-Carlo error is then ~0.1 of its width's last digit)
DRAWS = 20000


def paired_bootstrap_ci(n: int, base_only: int, method_only: int, level: float = 0.95,
                        draws: int = DRAWS, seed: int = 0) -> tuple[float, float]:
    """Percentile interval of Δtop-1 in percentage points; (nan, nan) without images."""
    if n <= 0:
        return math.nan, math.nan
    if base_only < 0 or method_only < 0 or base_only + method_only > n:
        raise ValueError(f"counts out of range: n={n}, base_only={base_only}, "
                         f"method_only={method_only}")
    if base_only == method_only == 0:
        return 0.0, 0.0      # no discordant image: every resample has the same accuracy
    rng = np.random.default_rng(seed)
    p = np.array([method_only, base_only, n - method_only - base_only], dtype=np.float64) / n
    counts = rng.multinomial(n, p, size=draws)
    delta = 100.0 * (counts[:, 0] - counts[:, 1]) / n
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(delta, [tail, 1.0 - tail])
    return float(low), float(high)


def mcnemar_exact_p(base_only: int, method_only: int) -> float:
    """Two-sided exact McNemar p-value (1.0 when no image is discordant)."""
    m = base_only + method_only
    if m == 0:
        return 1.0
    k = min(base_only, method_only)
    tail = sum(math.comb(m, i) for i in range(k + 1))
    # integers throughout; Python's int / int is correctly rounded for any size
    return min(1.0, (2 * tail) / 2 ** m)
