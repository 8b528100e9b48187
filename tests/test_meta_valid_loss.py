"""Validation-aware meta-objectives: a held-out split, the last step or the mean of a
truncation, and train/validation mixes, checked against backprop through the same unroll.

The toy problem is `testing.QuadraticFamily(valid_shift=...)`: held-out splits see the
quadratic's target moved, so the validation meta-loss has its own optimum and its gradient
differs from the training one in a way the tests can see.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lopt import meta
from lopt.meta import testing
from lopt.meta._unroll import meta_loss_mix
from lopt.tasks import get_task

LENGTH = 20
SHIFT = 0.8


def _unroller(split, length=LENGTH, **kw):
  return meta.Unroller(testing.QuadraticFamily(dim=4, fixed=True, valid_shift=SHIFT),
                       testing.LogLRAdam(init_lr=0.05), meta.ConstantSchedule(length),
                       meta_loss_split=split, **kw)


def _true_grad(u, theta, weights):
  """Backprop through one full unroll of `u` of the weighted per-step meta-loss."""
  def objective(th):
    s = u.init(th, jax.random.PRNGKey(0), offset=False)
    _, out = u.unroll(th, s, jax.random.PRNGKey(1), len(weights))
    return jnp.sum(jnp.asarray(weights) * out.meta_loss)
  return float(jax.grad(objective)(theta)["log_lr"])


def _estimates(est, theta, n, num_calls):
  states = meta.population_init(est, theta, jax.random.PRNGKey(0), n)

  @jax.jit
  def call(states, key):
    g, states, _ = jax.vmap(est.estimate, in_axes=(None, 0, 0))(
        theta, states, jax.random.split(key, n))
    return g["log_lr"], states

  total = jnp.zeros((n,))
  for i in range(num_calls):
    g, states = call(states, jax.random.PRNGKey(100 + i))
    total += g
  return np.asarray(total)


def _assert_agrees(samples, truth):
  mean, se = samples.mean(), samples.std(ddof=1) / np.sqrt(len(samples))
  assert se < 0.25 * abs(truth), f"estimator too noisy to test: se={se}, truth={truth}"
  assert abs(mean - truth) < 4 * se, f"mean {mean} vs true {truth} (se {se})"


def test_validation_meta_gradient_differs_from_the_training_one():
  theta = testing.LogLRAdam(init_lr=0.05).init_meta(None)
  w = np.full(LENGTH, 1.0 / LENGTH)
  g_train = _true_grad(_unroller("train"), theta, w)
  g_valid = _true_grad(_unroller("outer_valid"), theta, w)
  # Training loss wants a larger LR (descend faster); the shifted validation optimum makes
  # the validation objective's gradient point elsewhere.
  assert g_train < 0
  assert abs(g_valid - g_train) > 0.2 * abs(g_train)


@pytest.mark.parametrize("split", ["outer_valid", "valid", (("train", 0.3), ("valid", 0.7))])
def test_pes_with_a_validation_meta_loss_equals_backprop(split):
  u = _unroller(split)
  theta = u.lopt.init_meta(None)
  truth = _true_grad(u, theta, np.full(LENGTH, 1.0 / LENGTH))
  est = meta.PES(u, trunc_length=5, std=0.01)
  _assert_agrees(_estimates(est, theta, 1024, 4) / 4, truth)


def test_pes_last_step_of_each_truncation_equals_backprop():
  u = _unroller("outer_valid")
  theta = u.lopt.init_meta(None)
  # "last": each 5-step truncation contributes the meta-loss after its last step.
  w = np.zeros(LENGTH)
  w[4::5] = 1.0
  truth = _true_grad(u, theta, w)
  est = meta.PES(u, trunc_length=5, std=0.01, loss_type="last")
  _assert_agrees(_estimates(est, theta, 1024, 4), truth)


@pytest.mark.parametrize("loss_type", ["avg", "last"])
def test_tbptt_with_a_validation_meta_loss_is_exact_backprop(loss_type):
  u = _unroller({"train": 0.5, "outer_valid": 0.5}, length=100)
  theta = u.lopt.init_meta(None)
  s = u.init(theta, jax.random.PRNGKey(0), offset=False)
  key = jax.random.PRNGKey(7)
  est = meta.TBPTT(u, trunc_length=6, loss_type=loss_type)
  state = meta.UnrollState(jax.tree.map(lambda x: jnp.stack([x, x]), s),
                           jax.tree.map(jnp.zeros_like, theta))
  g, _, _ = jax.jit(est.estimate)(theta, state, key)

  def objective(th):   # the same unroll (TBPTT splits its key once for the begin-reset)
    _, out = u.unroll(th, s, jax.random.split(key)[0], 6)
    return jnp.mean(out.meta_loss) if loss_type == "avg" else out.meta_loss[-1]
  np.testing.assert_allclose(g["log_lr"], jax.grad(objective)(theta)["log_lr"], rtol=1e-5)


def test_truncated_es_last_and_full_es_with_a_mix():
  u = _unroller({"train": 1.0, "valid": 1.0})
  theta = u.lopt.init_meta(None)
  truth = _true_grad(u, theta, np.full(LENGTH, 1.0 / LENGTH))
  _assert_agrees(_estimates(meta.FullES(u, unroll_length=LENGTH, std=0.01), theta, 1024, 1),
                 truth)
  tes = meta.TruncatedES(u, trunc_length=5, loss_type="last")
  g, _, m = jax.jit(tes.estimate)(theta, tes.init(theta, jax.random.PRNGKey(0)),
                                  jax.random.PRNGKey(1))
  assert np.isfinite(float(g["log_lr"])) and np.isfinite(float(m["meta_loss"]))


def test_meta_loss_mix_validates_and_normalises():
  assert meta_loss_mix("outer_valid") == (("outer_valid", 1.0),)
  assert meta_loss_mix({"train": 1, "valid": 1}) == (("train", 0.5), ("valid", 0.5))
  with pytest.raises(ValueError, match="meta_loss_split"):
    meta_loss_mix("validation")
  with pytest.raises(ValueError, match="weights"):
    meta_loss_mix({"train": -1.0, "valid": 0.5})
  with pytest.raises(ValueError, match="loss_type"):
    meta.PES(_unroller("train"), trunc_length=5, loss_type="median")
  u = _unroller({"train": 0.5, "outer_valid": 0.5})
  assert u.inner_split == "outer_train" and hash(u) == hash(_unroller(
      (("train", 0.5), ("outer_valid", 0.5))))
  assert _unroller("valid").inner_split == "train"


def test_outer_splits_partition_the_training_data():
  task = get_task("digits-mlp-32")
  n = task.data["train"]["label"].shape[0]
  cut = int(n * 0.9)
  # Each split samples the rows [lo, hi) of the stored train arrays, nothing else.
  for split, (lo, hi) in {"outer_train": (0, cut), "outer_valid": (cut, n)}.items():
    batch = task.sample_batch(jax.random.PRNGKey(3), split)
    idx = np.asarray(jax.random.randint(jax.random.PRNGKey(3), (task.batch_size,), lo, hi))
    np.testing.assert_array_equal(np.asarray(batch["label"]),
                                  np.asarray(task.data["train"]["label"])[idx])
    assert idx.min() >= lo and idx.max() < hi
  lm = get_task("pycode-lstm-64")
  toks = np.asarray(lm.sample_batch(jax.random.PRNGKey(0), "outer_valid")["tokens"])
  assert toks.shape == (lm.batch_size, lm.seq_len + 1)
  with pytest.raises(ValueError, match="unknown split"):
    task.sample_batch(jax.random.PRNGKey(0), "heldout")
