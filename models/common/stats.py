"""The statistics every paper's evidence goes through: 95 % intervals of a difference between two variants and one
verdict rule, so a report says "beats" only where the interval excludes zero.

Two sources of uncertainty, two intervals:

* **Paired over test items** (one seed, one test set): both variants are scored on the same items, so the
  per-item differences carry the comparison. `paired_bootstrap` resamples items (percentile interval of the mean
  difference); `mcnemar` is the exact test on the discordant pairs for top-1 correctness, with its count table.
* **Over seeds** (the run repeated with other training seeds): `seed_t_interval` is Student's t interval of the
  paired per-seed differences with n − 1 degrees of freedom. A per-seed figure already averages its test items, so
  this interval covers item sampling and seed-to-seed variation together; with a handful of seeds the t multiplier
  (4.30 for n = 3, 2.78 for n = 5) is what makes it honest, never 1.96.

`verdict` turns an interval into better / tie / worse in the metric's own direction; `claim_holds` decides a
decisive criterion (claim "better", or "not_worse" within a margin) from the same interval.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal, Sequence

import numpy as np
from scipy import stats as scipy_stats

Verdict = Literal["better", "tie", "worse"]
LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    """A difference (method − baseline, in the metric's units) with its two-sided confidence interval."""

    estimate: float
    low: float
    high: float
    n: int  # items or seeds the interval rests on
    method: str  # how it was computed, for the report: "paired bootstrap over 1000 items", "t over 5 seeds (df 4)"
    level: float = LEVEL

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def __str__(self) -> str:
        return f"{self.estimate:+.4g} [{self.low:+.4g}, {self.high:+.4g}]"


def _as_pair(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired samples must be two 1-D arrays of the same length, got {a.shape} and {b.shape}")
    if len(a) == 0:
        raise ValueError("paired samples are empty")
    return a, b


def paired_bootstrap(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, *,
                     resamples: int = 10_000, level: float = LEVEL, seed: int = 0,
                     transform: Callable[[np.ndarray], np.ndarray] | None = None) -> Interval:
    """Percentile bootstrap interval of mean(a) − mean(b), resampling the paired items (a[i], b[i]) with
    replacement.

    `a` and `b` are per-item scores of two variants on the same items: 0/1 correctness (×100 for points), per-episode
    accuracy, per-window negative log-likelihood. A metric that is not the mean of its items but a function of that
    mean (perplexity = exp(mean NLL)) gives that function as `transform` (vectorised: it gets an array of means);
    the estimate is then transform(mean a) − transform(mean b), and every resample is transformed the same way.
    Deterministic for a given `seed`."""
    a, b = _as_pair(a, b)
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    diff = a - b
    for start in range(0, resamples, 1000):  # chunks keep the index matrix small for long test sets
        count = min(1000, resamples - start)
        index = rng.integers(0, len(diff), size=(count, len(diff)))
        if transform is None:
            means[start:start + count] = diff[index].mean(axis=1)
        else:
            means[start:start + count] = transform(a[index].mean(axis=1)) - transform(b[index].mean(axis=1))
    estimate = diff.mean() if transform is None else transform(np.asarray(a.mean())) - transform(np.asarray(b.mean()))
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return Interval(float(estimate), float(low), float(high), n=len(diff),
                    method=f"paired bootstrap over {len(diff)} items ({resamples} resamples)", level=level)


def t_interval(values: Sequence[float] | np.ndarray, level: float = LEVEL) -> Interval:
    """Student's t interval of the mean of `values` (n − 1 degrees of freedom); unbounded for a single value."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or len(x) == 0:
        raise ValueError(f"t_interval needs a non-empty 1-D sample, got shape {x.shape}")
    mean = float(x.mean())
    n = len(x)
    if n < 2:
        return Interval(mean, -math.inf, math.inf, n=1, method="one value: no interval", level=level)
    half = float(scipy_stats.t.ppf(0.5 + level / 2.0, df=n - 1) * x.std(ddof=1) / math.sqrt(n))
    return Interval(mean, mean - half, mean + half, n=n, method=f"Student t over {n} values (df {n - 1})",
                    level=level)


def seed_t_interval(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray,
                    level: float = LEVEL) -> Interval:
    """Student's t interval of the mean paired difference a[s] − b[s] over seeds s (n − 1 degrees of freedom)."""
    a, b = _as_pair(a, b)
    interval = t_interval(a - b, level)
    method = (f"Student t of paired differences over {interval.n} seeds (df {interval.n - 1})" if interval.n > 1
              else "one seed: no interval over seeds")
    return Interval(interval.estimate, interval.low, interval.high, n=interval.n, method=method, level=level)


@dataclass(frozen=True)
class McNemar:
    """The 2×2 table of two classifiers on the same items and the exact McNemar test on its discordant cells."""

    both_right: int
    only_a_right: int  # a correct, b wrong
    only_b_right: int  # a wrong, b correct
    both_wrong: int
    p_value: float  # two-sided exact binomial test of only_a_right vs only_b_right at p = 1/2

    @property
    def n(self) -> int:
        return self.both_right + self.only_a_right + self.only_b_right + self.both_wrong


def mcnemar(correct_a: Sequence[bool] | np.ndarray, correct_b: Sequence[bool] | np.ndarray) -> McNemar:
    """Exact McNemar test of two classifiers' per-item correctness on the same items."""
    a = np.asarray(correct_a, dtype=bool)
    b = np.asarray(correct_b, dtype=bool)
    _as_pair(a, b)
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    discordant = only_a + only_b
    p_value = 1.0 if discordant == 0 else float(scipy_stats.binomtest(only_a, discordant, 0.5).pvalue)
    return McNemar(both_right=int((a & b).sum()), only_a_right=only_a, only_b_right=only_b,
                   both_wrong=int((~a & ~b).sum()), p_value=p_value)


def verdict(interval: Interval, higher_is_better: bool = True) -> Verdict:
    """better / worse when the interval of (method − baseline) excludes zero on that side, tie otherwise."""
    if not interval.excludes_zero():
        return "tie"
    improved = interval.low > 0 if higher_is_better else interval.high < 0
    return "better" if improved else "worse"


Claim = Literal["better", "not_worse"]


def claim_holds(interval: Interval, claim: Claim, margin: float = 0.0, higher_is_better: bool = True) -> bool:
    """Whether a decisive claim about (method − baseline) holds at the interval's level: "better" when the verdict
    is better; "not_worse" when the interval's worse end is no more than `margin` worse than zero (in the metric's
    units), i.e. the data exclude a loss larger than the margin."""
    if claim == "better":
        return verdict(interval, higher_is_better) == "better"
    if claim == "not_worse":
        return interval.low >= -margin if higher_is_better else interval.high <= margin
    raise ValueError(f"unknown claim {claim!r}: better or not_worse")


def verdict_phrase(interval: Interval, baseline: str, higher_is_better: bool = True) -> str:
    """What a report prints: 'beats kd (+1.2 [+0.4, +2.0], t over 5 seeds)'; 'beats' only when the interval
    excludes zero."""
    words = {"better": "beats", "tie": "no difference from", "worse": "worse than"}
    return f"{words[verdict(interval, higher_is_better)]} {baseline} ({interval}, {interval.method})"
