"""Task augmentations: reparameterisation, reduced batch size and gradient noise."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lopt import tasks
from lopt.tasks import augment


@pytest.fixture(scope="module")
def digits():
  return tasks.families.ImageMLPFamily("digits", batch_size=16)


@pytest.mark.parametrize("level", augment.LEVELS)
def test_reparam_keeps_the_function_and_rescales_gradients(digits, level):
  family = augment.ReparamFamily(digits, level, (0.01, 100.0))
  cfg = family.sample(jax.random.PRNGKey(0))
  task, inner = family.task(cfg), digits.task(cfg["inner"])
  key = jax.random.PRNGKey(1)
  params, inner_params = task.init(key), inner.init(key)
  batch = task.sample_batch(key)
  # Same effective params (p * s) -> identical loss at init.
  loss, _ = task.loss(params, key, batch)
  np.testing.assert_allclose(loss, inner.loss(inner_params, key, batch)[0], rtol=1e-5)
  # Stored params are p / s, and grads w.r.t. stored params are s * inner grads.
  scales = task._tree(params)  # pylint: disable=protected-access
  stored = jax.tree.map(lambda p, s: p * s, params, scales)
  for a, b in zip(jax.tree.leaves(stored), jax.tree.leaves(inner_params)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  g = jax.grad(lambda p: task.loss(p, key, batch)[0])(params)
  gi = jax.grad(lambda p: inner.loss(p, key, batch)[0])(inner_params)
  for a, b, s in zip(jax.tree.leaves(g), jax.tree.leaves(gi), jax.tree.leaves(scales)):
    np.testing.assert_allclose(a, b * s, rtol=1e-4, atol=1e-6)
  # Scales follow the level.
  leaves = jax.tree.leaves(cfg["scales"])
  if level == "global":
    assert len(leaves) == 1 and leaves[0].shape == ()
  elif level == "tensor":
    assert all(x.shape == () for x in leaves) and len(leaves) == len(jax.tree.leaves(params))
  else:
    assert [x.shape for x in leaves] == [x.shape for x in jax.tree.leaves(params)]
  assert all(0.01 <= float(jnp.min(x)) and float(jnp.max(x)) <= 100.0 for x in leaves)
  assert task.name == f"digits-mlp-32+reparam_{level}"


def test_reparam_rejects_unknown_level(digits):
  with pytest.raises(ValueError, match="global, tensor, parameter"):
    augment.ReparamFamily(digits, "layer")


def test_wrapped_families_vmap_and_jit(digits):
  def stack(inner, level):
    return augment.GradNoiseFamily(
        augment.ReducedBatchFamily(augment.ReparamFamily(inner, level), 0.25))

  family = stack(tasks.QuadraticFamily(dim=4, batch_size=8), "tensor")
  keys = jax.random.split(jax.random.PRNGKey(0), 3)
  cfgs = jax.vmap(family.sample)(keys)

  @jax.jit
  def losses(fam, cfgs, keys):
    def one(cfg, key):
      task = fam.task(cfg)
      batch = task.sample_batch(key)
      loss = jax.value_and_grad(lambda p: task.loss(p, key, batch)[0])(task.init(key))[0]
      return loss, batch["eps"].shape[0]
    return jax.vmap(one)(cfgs, keys)

  out, bs = losses(family, cfgs, keys)
  assert out.shape == (3,) and np.isfinite(np.asarray(out)).all()
  assert int(bs[0]) == 2  # 8 * 0.25
  # Image tasks: the reduced batch shows in the abstract batch, evaluation is unchanged.
  task = stack(digits, "tensor").task(stack(digits, "tensor").sample(jax.random.PRNGKey(0)))
  assert task.abstract_batch["image"].shape[0] == 4 and task.batch_size == 4
  assert task.eval_batches()["image"].shape[1] == 16
  assert task.name == "digits-mlp-32+reparam_tensor+batch0.25+gradnoise"
  assert stack(digits, "tensor") == stack(digits, "tensor")
  assert stack(digits, "tensor") != stack(digits, "global")


def test_grad_noise_changes_grads_with_the_right_mean_and_std():
  inner = tasks.QuadraticTask(dim=8, noise_std=0.0)
  task = augment.GradNoiseTask(inner, jnp.float32(0.5))
  params = inner.init(jax.random.PRNGKey(0))
  batch = inner.sample_batch(jax.random.PRNGKey(1))
  clean = jax.grad(lambda p: inner.loss(p, None, batch)[0])(params)["quadratic"]["x"]

  def noisy(key):
    loss, g = jax.value_and_grad(lambda p: task.loss(p, key, batch)[0])(params)
    return loss, g["quadratic"]["x"]

  losses, grads = jax.jit(jax.vmap(noisy))(jax.random.split(jax.random.PRNGKey(2), 4000))
  # Values are the inner loss; gradients differ per key.
  np.testing.assert_allclose(np.asarray(losses), float(inner.loss(params, None, batch)[0]),
                             rtol=1e-6)
  assert not np.allclose(grads[0], clean)
  np.testing.assert_allclose(grads.mean(0), clean, atol=4 * 0.5 / np.sqrt(4000))
  np.testing.assert_allclose(grads.std(0), 0.5, rtol=0.1)
  with pytest.raises(ValueError, match="PRNG key"):
    task.loss(params, None, batch)


def test_grad_noise_family_samples_std_in_range():
  family = augment.GradNoiseFamily(tasks.QuadraticFamily(dim=4), (1e-3, 1e-1))
  stds = jax.vmap(family.sample)(jax.random.split(jax.random.PRNGKey(0), 50))["noise_std"]
  assert float(stds.min()) >= 1e-3 and float(stds.max()) <= 1e-1
  assert family.name == "quadratic+gradnoise"
