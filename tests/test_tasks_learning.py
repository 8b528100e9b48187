"""Every kind of task learns with a few Adam steps (a cheap subset; all tasks when slow)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lopt import tasks
from lopt.tasks import datasets


@functools.partial(jax.jit, static_argnames=("steps", "lr"))
def _train(task, key, steps, lr):
  """Adam for `steps` steps; returns the mean eval loss before and after."""
  opt = optax.adam(lr)
  ev = task.eval_batches("train")

  def eval_loss(params):
    return jnp.mean(jax.lax.map(lambda b: task.loss(params, key, b)[0], ev))

  def step(carry, k):
    params, state = carry
    grads = jax.grad(lambda p: task.loss(p, k, task.sample_batch(k))[0])(params)
    updates, state = opt.update(grads, state, params)
    return (optax.apply_updates(params, updates), state), None

  params = task.init(key)
  (final, _), _ = jax.lax.scan(step, (params, opt.init(params)), jax.random.split(key, steps))
  return eval_loss(params), eval_loss(final)


def _check_learns(task, steps, lr, drop):
  before, after = _train(task, jax.random.PRNGKey(0), steps, lr)
  assert np.isfinite(float(after))
  assert float(after) < (1 - drop) * float(before), (task.name, float(before), float(after))


# (name, overrides, steps, lr, required relative drop of the train-eval loss). The default
# run covers one MLP classifier per dataset kind and the autoencoder; the ConvNet and the
# LMs (costlier to compile) run with `-m slow`, together with every suite task.
_CHEAP = [
    ("digits-mlp-32", {"batch_size": 32, "eval_examples": 256}, 60, 1e-2, 0.4),
    ("mnist1d-mlp-128", {"batch_size": 32, "eval_examples": 256}, 60, 3e-3, 0.1),
    ("digits-ae-32", {"batch_size": 32, "eval_examples": 256}, 60, 1e-2, 0.3),
]
_COSTLY = [
    ("digits-conv-8-16", {"batch_size": 32, "eval_examples": 256}, 60, 1e-2, 0.2),
    ("pycode-transformer-2x64", {"batch_size": 8, "seq_len": 16, "eval_sequences": 32},
     40, 3e-3, 0.3),
    ("pycode-lstm-128", {"batch_size": 8, "seq_len": 16, "eval_sequences": 32}, 40, 1e-2, 0.3),
]
_CASES = [pytest.param(*c, id=c[0]) for c in _CHEAP] + [
    pytest.param(*c, id=c[0], marks=pytest.mark.slow) for c in _COSTLY]


@pytest.mark.parametrize("name,overrides,steps,lr,drop", _CASES)
def test_task_learns_with_adam(name, overrides, steps, lr, drop):
  try:
    task = tasks.get_task(name, **overrides)
  except datasets.DatasetUnavailableError as e:
    pytest.skip(f"dataset unavailable here: {e}")
  _check_learns(task, steps, lr, drop)


def test_quadratic_learns_with_adam():
  _check_learns(tasks.QuadraticTask(dim=8), 100, 1e-1, 0.5)


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("name", list(tasks.SUITE))
def test_every_suite_task_learns_with_adam(name):
  """Suite shapes, except smaller batches for the 28x28 ConvNets and the LMs."""
  overrides = {"batch_size": 32} if name.startswith("fmnist-conv") else \
      {"batch_size": 16} if name.startswith("pycode") else {}
  try:
    task = tasks.get_task(name, **overrides)
  except datasets.DatasetUnavailableError as e:
    pytest.skip(f"dataset unavailable here: {e}")
  lr = 3e-3 if name.startswith("pycode") or "conv" in name else 1e-2
  _check_learns(task, 100, lr, 0.1)
