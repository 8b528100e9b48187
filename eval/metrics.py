"""Benchmark metrics on training curves: pure numpy, no JAX.

Everything here maps recorded curves (numpy arrays) to numbers:

* `first_reach` / `steps_to_target` / `time_to_target`: the first recorded point where a
  (validation) metric meets a target; `inf` when it never does (NaN never meets a target).
* `AdamEnvelope` and `speedup`: the VeLOdrome normaliser. Learning-rate-tuned Adam's
  training-loss curves (mean over seeds, EMA-smoothed) are reduced to their lower envelope
  over learning rates and a running minimum; a loss then maps to the number of steps that
  envelope needs to reach it, and speedup = those steps / the steps actually used.
* `bootstrap_ci`, `iqm`, `hit_rate`: summary statistics with percentile-bootstrap
  confidence intervals (seeded, deterministic).
* `performance_profile` / `benchmark_score`: AlgoPerf's performance profiles and the
  integrated score (r_max = 4, 100-point trapezoid rule), as used by `lopt.eval.scoring`.

Example:
  >>> import numpy as np
  >>> steps_to_target([0, 10, 20], [3.0, 1.0, 0.5], target=1.0)
  10.0
  >>> steps_to_target([0, 10, 20], [3.0, 2.0, 1.5], target=1.0)
  inf
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping, Sequence

import numpy as np

__all__ = [
    "first_reach",
    "steps_to_target",
    "time_to_target",
    "ema",
    "AdamEnvelope",
    "speedup",
    "bootstrap_ci",
    "iqm",
    "hit_rate",
    "geometric_mean",
    "TAU_GRID",
    "ratios",
    "performance_profile",
    "benchmark_score",
]


# ---------------------------------------------------------------------------------------
# Time / steps to target.


def first_reach(values: Sequence[float], target: float, *, higher_is_better: bool = False
                ) -> int:
  """Index of the first value that meets `target`, or -1 if none does.

  A value meets the target when `value <= target` (or `>=` if `higher_is_better`); NaN
  never meets it. Curves need not be monotone: the first crossing counts, even if the
  curve later leaves the target again.
  """
  v = np.asarray(values, dtype=np.float64)
  with np.errstate(invalid="ignore"):
    ok = (v >= target) if higher_is_better else (v <= target)
  ok &= ~np.isnan(v)
  if not ok.any():
    return -1
  return int(np.argmax(ok))


def steps_to_target(steps: Sequence[float], values: Sequence[float], target: float, *,
                    higher_is_better: bool = False) -> float:
  """The step at which `values` first meets `target`; `inf` if it never does.

  Args:
    steps: the step of each recorded value (e.g. the evaluation steps), [n].
    values: the recorded metric, [n].
    target: the target value.
    higher_is_better: True for accuracies.

  Returns:
    `float(steps[i])` for the first index `i` meeting the target, else `inf`.
  """
  steps = np.asarray(steps, dtype=np.float64)
  if steps.shape != np.shape(values):
    raise ValueError(f"steps {steps.shape} and values {np.shape(values)} differ in shape")
  i = first_reach(values, target, higher_is_better=higher_is_better)
  return float(steps[i]) if i >= 0 else float("inf")


def time_to_target(times: Sequence[float], values: Sequence[float], target: float, *,
                   higher_is_better: bool = False) -> float:
  """Like `steps_to_target`, with wall-clock `times` (seconds) at the recorded points."""
  return steps_to_target(times, values, target, higher_is_better=higher_is_better)


# ---------------------------------------------------------------------------------------
# VeLOdrome speedup over learning-rate-tuned Adam.


def ema(x: Sequence[float], alpha: float = 0.95) -> np.ndarray:
  """Exponential moving average `m_t = alpha m_{t-1} + (1 - alpha) x_t`, `m_0 = x_0`.

  A non-finite value makes the average `inf` from then on, so a diverged run never looks
  good.
  """
  x = np.asarray(x, dtype=np.float64)
  out = np.empty_like(x)
  if x.size == 0:
    return out
  cur = x[0] if np.isfinite(x[0]) else np.inf
  for i, v in enumerate(x):
    if not np.isfinite(v) or not np.isfinite(cur):
      cur = np.inf
    else:
      cur = alpha * cur + (1.0 - alpha) * v
    out[i] = cur
  return out


@dataclasses.dataclass(frozen=True)
class AdamEnvelope:
  """The best loss learning-rate-tuned Adam reached by each step (non-increasing).

  Attributes:
    steps: [n] increasing steps (starting at the first recorded step).
    loss: [n] non-increasing envelope loss at those steps.
  """

  steps: np.ndarray
  loss: np.ndarray

  @classmethod
  def from_curves(cls, curves: Mapping[float, np.ndarray] | Sequence[np.ndarray],
                  steps: Sequence[float] | None = None, *, alpha: float = 0.95,
                  num_points: int = 512) -> "AdamEnvelope":
    """Builds the envelope from Adam training-loss curves.

    Args:
      curves: one entry per learning rate, each `[seeds, T]` or `[T]` training losses on a
        common step grid (a mapping lr -> curve, or a sequence).
      steps: the step of each column, [T]; default `1..T` (the loss after step t).
      alpha: EMA coefficient applied to each seed-mean curve (VeLOdrome: 0.95).
      num_points: resampling points on `[steps[0], steps[-1]]` (VeLOdrome: 512).

    Returns:
      The envelope: min over learning rates, resampled, then running minimum.
    """
    if isinstance(curves, Mapping):
      curves = list(curves.values())
    smoothed = []
    for c in curves:
      c = np.asarray(c, dtype=np.float64)
      mean = c if c.ndim == 1 else np.mean(c, axis=0)  # [T]
      smoothed.append(ema(mean, alpha))
    if not smoothed:
      raise ValueError("AdamEnvelope needs at least one curve")
    lengths = {len(s) for s in smoothed}
    if len(lengths) != 1:
      raise ValueError(f"curves differ in length: {sorted(lengths)}")
    t = len(smoothed[0])
    xs = np.arange(1, t + 1, dtype=np.float64) if steps is None else np.asarray(
        steps, dtype=np.float64)
    with np.errstate(invalid="ignore"):
      bottom = np.nanmin(np.where(np.isfinite(smoothed), smoothed, np.inf), axis=0)  # [T]
    xp = np.linspace(xs[0], xs[-1], num_points) if num_points else xs
    yp = np.interp(xp, xs, bottom) if np.all(np.isfinite(bottom)) else _interp_inf(
        xp, xs, bottom)
    return cls(steps=xp, loss=np.minimum.accumulate(yp))

  @property
  def horizon(self) -> float:
    return float(self.steps[-1])

  def steps_to_reach(self, loss: float) -> float:
    """Steps the envelope needs to reach `loss` (linear interpolation); `inf` if never.

    A loss at or above the envelope's first value needs `steps[0]`; a NaN loss needs
    `inf`.
    """
    loss = float(loss)
    if np.isnan(loss):
      return float("inf")
    ok = self.loss <= loss
    if not ok.any():
      return float("inf")
    i = int(np.argmax(ok))
    if i == 0:
      return float(self.steps[0])
    x0, x1 = self.steps[i - 1], self.steps[i]
    y0, y1 = self.loss[i - 1], self.loss[i]
    if not np.isfinite(y0) or y0 == y1:
      return float(x1)
    return float(x0 + (x1 - x0) * (y0 - loss) / (y0 - y1))


def _interp_inf(xp, xs, ys):
  """np.interp that treats +inf samples as inf (instead of producing NaN)."""
  finite = np.isfinite(ys)
  out = np.full_like(xp, np.inf)
  if finite.any():
    ok = np.interp(xp, xs, np.isfinite(ys).astype(float)) >= 1.0
    out[ok] = np.interp(xp[ok], xs[finite], ys[finite])
  return out


def speedup(envelope: AdamEnvelope, losses: Sequence[float], num_steps: float | None = None,
            *, alpha: float = 0.95) -> tuple[float, bool]:
  """VeLOdrome speedup of one training-loss curve over the Adam envelope.

  The curve is EMA-smoothed like the envelope; its final smoothed loss is mapped to the
  steps the envelope needs to reach it, divided by `num_steps` (default `len(losses)`).

  Args:
    envelope: the tuned-Adam envelope for this task.
    losses: the optimizer's training losses, [T] (or [seeds, T]; averaged over seeds).
    num_steps: steps the optimizer used.
    alpha: EMA coefficient (match the envelope's).

  Returns:
    `(speedup, lower_bound)`. If the loss is below everything the envelope reaches,
    the steps are capped at the envelope horizon and `lower_bound` is True (the true
    speedup is at least this). A diverged curve (non-finite final loss) gives 0.
  """
  x = np.asarray(losses, dtype=np.float64)
  if x.ndim == 2:
    x = np.mean(x, axis=0)
  n = float(num_steps if num_steps is not None else len(x))
  final = ema(x, alpha)[-1]
  if not np.isfinite(final):
    return 0.0, False
  need = envelope.steps_to_reach(final)
  if np.isinf(need):
    return envelope.horizon / n, True
  return need / n, False


# ---------------------------------------------------------------------------------------
# Statistics.


def iqm(x: Sequence[float]) -> float:
  """Interquartile mean: the mean of the middle 50% (sorted, trimmed 25% each side).

  Uses the fractional-weight definition, so it is well defined for any n >= 1. `inf`
  values are allowed (they sort last).
  """
  v = np.asarray(x, dtype=np.float64).ravel()
  return float(_iqm_rows(v[None])[0]) if v.size else float("nan")


def _iqm_rows(a: np.ndarray) -> np.ndarray:
  """`iqm` of each row of `a` [B, n] (the same weights and sums as `iqm`)."""
  a = np.sort(a, axis=1)
  n = a.shape[1]
  idx = np.arange(n)  # weight of element i = length of [i, i+1) ∩ [n/4, 3n/4)
  w = np.clip(np.minimum(idx + 1, 0.75 * n) - np.maximum(idx, 0.25 * n), 0.0, None)
  total = np.zeros(a.shape[0])
  for j in np.flatnonzero(w):  # one summation order whatever the number of rows
    total += w[j] * a[:, j]
  return total / np.sum(w)


def _rowwise(stat: Callable[[np.ndarray], float], a: np.ndarray) -> np.ndarray:
  """`stat` of each row of `a` [B, n]; one numpy call for the common statistics (2,000
  Python calls took ~0.03 s per interval, most of a small benchmark's report)."""
  if stat is np.median or stat is np.mean:
    return stat(a, axis=1).astype(np.float64)
  if stat is iqm:
    return _iqm_rows(a)
  return np.array([stat(row) for row in a], dtype=np.float64)


def geometric_mean(x: Sequence[float]) -> float:
  """Geometric mean (0 if any value is 0, inf if any is inf)."""
  v = np.asarray(x, dtype=np.float64).ravel()
  if v.size == 0:
    return float("nan")
  if np.any(v == 0):
    return 0.0
  with np.errstate(divide="ignore"):
    return float(np.exp(np.mean(np.log(v))))


def hit_rate(times: Sequence[float]) -> float:
  """The fraction of runs with a finite time/steps-to-target."""
  v = np.asarray(times, dtype=np.float64).ravel()
  return float(np.mean(np.isfinite(v))) if v.size else float("nan")


def bootstrap_ci(x: Sequence[float], stat: Callable[[np.ndarray], float] = np.median, *,
                 confidence: float = 0.95, num_resamples: int = 2000, seed: int = 0,
                 groups: Sequence | None = None) -> tuple[float, float, float]:
  """Percentile-bootstrap confidence interval of `stat(x)`.

  Args:
    x: samples, [n]. May contain `inf` (e.g. missed targets); the statistic sees them.
    stat: a function of a 1-d array (median, mean, `iqm`, ...).
    confidence: coverage of the interval.
    num_resamples: bootstrap resamples.
    seed: numpy seed (results are deterministic).
    groups: optional group label per sample (e.g. the task): resampling is stratified,
      each group resampled with replacement on its own, so every task stays represented.

  Returns:
    `(point estimate, low, high)`.
  """
  v = np.asarray(x, dtype=np.float64).ravel()
  if v.size == 0:
    nan = float("nan")
    return nan, nan, nan
  point = float(stat(v))
  rng = np.random.default_rng(seed)
  if groups is None:
    idx = rng.integers(0, v.size, size=(num_resamples, v.size))  # [B, n]
  else:
    g = np.asarray(groups)
    cols = []
    for label in dict.fromkeys(g.tolist()):
      members = np.flatnonzero(g == label)
      cols.append(members[rng.integers(0, members.size, size=(num_resamples, members.size))])
    idx = np.concatenate(cols, axis=1)
  stats = _rowwise(stat, v[idx])
  a = (1.0 - confidence) / 2.0
  with np.errstate(invalid="ignore"):
    lo, hi = np.quantile(stats, [a, 1.0 - a], method="linear")
  # quantile of a sample containing inf can yield nan when interpolating inf - inf
  lo = float(lo) if not np.isnan(lo) else float(np.sort(stats)[int(a * (num_resamples - 1))])
  hi = float(hi) if not np.isnan(hi) else float(np.inf)
  return point, lo, hi


# ---------------------------------------------------------------------------------------
# AlgoPerf performance profiles and benchmark score.

TAU_GRID = np.linspace(1.0, 4.0, 100)  # AlgoPerf: r_max = 4, 100 points


def performance_profile(times: np.ndarray, tau: np.ndarray = TAU_GRID,
                        num_workloads: int | None = None) -> np.ndarray:
  """AlgoPerf performance profiles `rho_s(tau) = |{w : r_sw <= tau}| / n`.

  Args:
    times: [submissions, workloads] times-to-target; `inf` (miss) or NaN (missing) never
      count. Ratios are `t / min_s t` per workload (inf where not finite).
    tau: the grid of ratios.
    num_workloads: the denominator (default: the number of columns).

  Returns:
    [submissions, len(tau)] profile values.
  """
  t = np.asarray(times, dtype=np.float64)
  r = ratios(t)
  n = t.shape[1] if num_workloads is None else num_workloads
  return (r[:, :, None] <= np.asarray(tau)[None, None, :]).sum(axis=1) / n


def ratios(times: np.ndarray) -> np.ndarray:
  """Per-workload ratios to the fastest: [S, W] -> [S, W], inf where not finite."""
  t = np.asarray(times, dtype=np.float64)
  finite = np.isfinite(t)
  best = np.min(np.where(finite, t, np.inf), axis=0, keepdims=True)  # [1, W]
  with np.errstate(invalid="ignore", divide="ignore"):
    r = t / best
  return np.where(finite & np.isfinite(best), r, np.inf)


def benchmark_score(profile: np.ndarray, tau: np.ndarray = TAU_GRID) -> np.ndarray:
  """The integrated, normalised profile: trapezoid over `tau` / (max tau - min tau)."""
  tau = np.asarray(tau, dtype=np.float64)
  return np.trapezoid(np.asarray(profile, dtype=np.float64), tau, axis=-1) / (tau[-1] - tau[0])
