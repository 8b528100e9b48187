"""Pure-numpy benchmark metrics on synthetic curves with known answers."""

import math
import subprocess
import sys

import numpy as np
import pytest

from lopt.eval import metrics as M


def test_metrics_module_imports_no_jax():
  code = ("import sys; import lopt.eval, lopt.eval.metrics, lopt.eval.scoring; "
          "assert 'jax' not in sys.modules, 'jax imported'")
  subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


class TestStepsToTarget:

  def test_monotone(self):
    assert M.steps_to_target([0, 10, 20, 30], [4.0, 2.0, 1.0, 0.5], 1.5) == 20.0

  def test_miss_is_inf(self):
    assert M.steps_to_target([0, 10, 20], [4.0, 3.0, 2.0], 1.0) == math.inf

  def test_tie_counts_as_reached(self):
    assert M.steps_to_target([0, 10, 20], [4.0, 1.0, 0.5], 1.0) == 10.0
    assert M.steps_to_target([0, 10], [0.5, 0.9], 0.9, higher_is_better=True) == 10.0

  def test_non_monotone_first_crossing(self):
    # dips below the target at step 10, goes back above, ends below again
    assert M.steps_to_target([0, 10, 20, 30], [3.0, 0.8, 1.5, 0.7], 1.0) == 10.0

  def test_nan_never_reaches(self):
    assert M.steps_to_target([0, 10, 20], [3.0, np.nan, 0.5], 1.0) == 20.0
    assert M.steps_to_target([0, 10], [np.nan, np.nan], 1.0) == math.inf

  def test_higher_is_better(self):
    assert M.steps_to_target([0, 5, 9], [0.1, 0.5, 0.95], 0.9, higher_is_better=True) == 9.0

  def test_time_to_target(self):
    assert M.time_to_target([0.0, 1.5, 3.0], [2.0, 0.9, 0.1], 1.0) == 1.5

  def test_shape_mismatch(self):
    with pytest.raises(ValueError, match="shape"):
      M.steps_to_target([0, 1], [1.0], 1.0)


def test_ema_known_values():
  np.testing.assert_allclose(M.ema([1.0, 3.0, 3.0], 0.5), [1.0, 2.0, 2.5])
  assert np.isinf(M.ema([1.0, np.nan, 1.0], 0.5)[1:]).all()  # divergence sticks


class TestEnvelopeAndSpeedup:
  # Two learning rates, no smoothing, no resampling: lr A decreases linearly 10 - t,
  # lr B sits at 5 from step 1. Envelope (min, running min) = 5 until t = 5, then 10 - t.

  @pytest.fixture
  def env(self):
    t = np.arange(1, 11, dtype=float)
    return M.AdamEnvelope.from_curves({1e-3: 10.0 - t, 1e-2: np.full(10, 5.0)}, alpha=0.0,
                                      num_points=0)

  def test_envelope_values(self, env):
    np.testing.assert_allclose(env.loss, [5, 5, 5, 5, 5, 4, 3, 2, 1, 0])
    assert env.horizon == 10

  def test_steps_to_reach(self, env):
    assert env.steps_to_reach(5.0) == 1.0   # tie with the first point
    assert env.steps_to_reach(9.0) == 1.0   # worse than the start
    assert env.steps_to_reach(3.0) == 7.0
    assert env.steps_to_reach(2.5) == 7.5   # linear interpolation
    assert env.steps_to_reach(-1.0) == math.inf
    assert env.steps_to_reach(float("nan")) == math.inf

  def test_speedup_known(self, env):
    assert M.speedup(env, [4.0, 3.0, 3.0], alpha=0.0) == (7.0 / 3.0, False)
    assert M.speedup(env, np.full(7, 3.0), alpha=0.0) == (1.0, False)  # Adam itself: 1

  def test_speedup_below_envelope_is_lower_bound(self, env):
    assert M.speedup(env, [-2.0, -2.0], alpha=0.0) == (5.0, True)  # 10 / 2, capped

  def test_speedup_diverged_is_zero(self, env):
    assert M.speedup(env, [3.0, np.nan], alpha=0.0) == (0.0, False)

  def test_seed_mean_and_non_monotone_curves(self):
    # a curve that rises again: the running minimum keeps the best loss so far
    up = np.array([4.0, 2.0, 3.0, 3.5])
    env = M.AdamEnvelope.from_curves([np.stack([up - 0.5, up + 0.5])], alpha=0.0,
                                     num_points=0)
    np.testing.assert_allclose(env.loss, [4, 2, 2, 2])
    assert env.steps_to_reach(2.0) == 2.0

  def test_resampling_keeps_answer(self):
    t = np.arange(1, 101, dtype=float)
    env = M.AdamEnvelope.from_curves([1.0 / t], alpha=0.0, num_points=512)
    assert env.steps_to_reach(1.0 / 50) == pytest.approx(50.0, rel=2e-2)
    # an optimizer reaching Adam's step-50 loss in 25 steps has speedup 2
    sp, lb = M.speedup(env, 1.0 / (2 * np.arange(1, 26)), alpha=0.0)
    assert sp == pytest.approx(2.0, rel=2e-2) and not lb


def test_iqm():
  assert M.iqm(np.arange(1, 9)) == pytest.approx(4.5)
  assert M.iqm([1, 2, 3, 4, 100]) == pytest.approx(3.0)
  assert M.iqm([7.0]) == 7.0


def test_geometric_mean_and_hit_rate():
  assert M.geometric_mean([1.0, 4.0]) == pytest.approx(2.0)
  assert M.geometric_mean([0.0, 4.0]) == 0.0
  assert M.hit_rate([1.0, math.inf, 3.0, math.inf]) == 0.5


def test_bootstrap_ci_coverage_known_distribution():
  """95% CIs of the mean of N(0, 1) samples (n = 40) cover 0 about 95% of the time."""
  rng = np.random.default_rng(123)
  covered = 0
  trials = 300
  for i in range(trials):
    x = rng.normal(size=40)
    _, lo, hi = M.bootstrap_ci(x, np.mean, num_resamples=500, seed=i)
    covered += lo <= 0.0 <= hi
  assert 0.88 <= covered / trials <= 0.985


def test_bootstrap_ci_properties():
  x = np.arange(10.0)
  point, lo, hi = M.bootstrap_ci(x, np.median, seed=0)
  assert point == 4.5 and lo <= point <= hi
  assert M.bootstrap_ci(x, np.median, seed=0) == (point, lo, hi)  # deterministic
  # inf samples (missed targets) are allowed
  _, lo, hi = M.bootstrap_ci([1.0, 2.0, math.inf], np.median, seed=0)
  assert lo >= 1.0 and hi == math.inf
  # stratified: every group stays represented, so a constant-per-group stat is exact
  g = ["a"] * 5 + ["b"] * 5
  _, lo, hi = M.bootstrap_ci(np.r_[np.zeros(5), np.ones(5)], np.mean, groups=g)
  assert lo == hi == 0.5


@pytest.mark.parametrize("stat", [np.median, np.mean, M.iqm, lambda v: float(np.max(v))])
@pytest.mark.parametrize("n", [1, 3, 9, 40])
def test_bootstrap_ci_vectorised_statistics_equal_one_call_per_resample(stat, n):
  """The common statistics run on all resamples in one numpy call: the same intervals, to
  the bit, as calling `stat` once per resample (missed targets, inf, included)."""
  rng = np.random.default_rng(n)
  x = rng.lognormal(size=n)
  x[rng.random(n) < 0.2] = math.inf
  idx = np.random.default_rng(7).integers(0, n, size=(300, n))
  loop = np.array([stat(x[row]) for row in idx], dtype=np.float64)
  np.testing.assert_array_equal(M._rowwise(stat, x[idx]), loop)
  a = (1.0 - 0.95) / 2.0
  with np.errstate(invalid="ignore"):
    lo, hi = np.quantile(loop, [a, 1 - a])
  _, lo2, hi2 = M.bootstrap_ci(x, stat, num_resamples=300, seed=7)
  if np.isfinite(lo):
    assert lo2 == lo
  if np.isfinite(hi):
    assert hi2 == hi
