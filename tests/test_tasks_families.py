"""Task families: vmap over sampled configs, the registry, families over architectures."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lopt import tasks
from lopt.tasks import datasets


def _family(name):
  try:
    return tasks.get_family(name)
  except datasets.DatasetUnavailableError as e:
    pytest.skip(f"dataset unavailable here: {e}")


def _population_loss(family, cfgs, keys):
  """Init + one loss per sampled config, vmapped (the meta-training access pattern)."""
  def one(cfg, key):
    task = family.task(cfg)
    params = task.init(key)
    return task.loss(params, key, task.sample_batch(key))[0]
  return jax.vmap(one)(cfgs, keys)


@pytest.mark.parametrize("name", [n for n in tasks.FAMILIES if n != "digits-mlp-mixed"])
def test_family_vmaps_over_sampled_cfgs(name):
  """Shape-level check for every family (no compile): sample and task() vmap."""
  family = _family(name)
  keys = jax.random.split(jax.random.PRNGKey(0), 3)
  cfgs = jax.vmap(family.sample)(keys)
  assert all(x.shape[0] == 3 for x in jax.tree.leaves(cfgs))
  out = jax.eval_shape(_population_loss, family, cfgs, keys)
  assert out.shape == (3,)
  assert family == tasks.get_family(name) and hash(family) == hash(tasks.get_family(name))
  assert family.name == name


@pytest.mark.parametrize("name", ["quadratic-16", "digits-mlp-32"])
def test_family_population_values(name):
  """Compiled: finite, different losses across configs; family passed as a jit argument."""
  family = _family(name)
  keys = jax.random.split(jax.random.PRNGKey(0), 4)
  cfgs = jax.vmap(family.sample)(keys)
  losses = jax.jit(_population_loss)(family, cfgs, keys)
  assert np.isfinite(np.asarray(losses)).all()
  assert len(np.unique(np.round(np.asarray(losses), 5))) > 1
  if name.startswith("quadratic"):  # vmap equals the per-config computation
    single = _population_loss(family, jax.tree.map(lambda x: x[1:2], cfgs), keys[1:2])
    np.testing.assert_allclose(single[0], losses[1], rtol=1e-4)


def test_image_family_samples_init_scale_and_label_permutation():
  family = _family("digits-mlp-32")
  cfg = family.sample(jax.random.PRNGKey(3))
  lo, hi = family.init_scale_range
  assert lo <= float(cfg["init_scale"]) <= hi
  assert sorted(np.asarray(cfg["label_perm"]).tolist()) == list(range(10))
  task = family.task(cfg)
  base = family.base
  init = jax.jit(lambda t, k: t.init(k))
  p0, p1 = init(base, jax.random.PRNGKey(0)), init(task, jax.random.PRNGKey(0))
  np.testing.assert_allclose(p1["mlp/~/linear_0"]["w"],
                             cfg["init_scale"] * p0["mlp/~/linear_0"]["w"], rtol=1e-6)
  # The label permutation changes the loss for the same logits.
  batch = base.sample_batch(jax.random.PRNGKey(1))
  perm = jnp.roll(jnp.arange(10), 1)
  permuted = family.task({"init_scale": jnp.float32(1.0), "label_perm": perm})
  assert float(permuted.loss(p0, None, batch)[0]) != float(base.loss(p0, None, batch)[0])
  # The family shares its base task's data: no reload per sample.
  assert task.data is base.data


def test_fast_mlp_families_share_one_parameter_shape():
  shapes = []
  for name in tasks.FAST_MLP_FAMILIES:
    family = _family(name)
    task = family.task(family.sample(jax.random.PRNGKey(0)))
    assert task.batch_size == 64 and task.hidden == (32,)
    assert task.abstract_batch["image"].shape[1:3] == (8, 8)
    shapes.append(jax.tree.map(lambda x: x.shape, jax.eval_shape(task.init,
                                                                 jax.random.PRNGKey(0))))
  assert all(s == shapes[0] for s in shapes)
  assert len(set(tasks.FAST_MLP_FAMILIES)) == 4


def test_architecture_family_groups_by_member():
  family = _family("digits-mlp-mixed")
  member, cfg = family.sample(jax.random.PRNGKey(0))
  assert 0 <= member < 3
  assert family.task((member, cfg)).hidden == ((16,), (32,), (64,))[member]
  groups = family.sample_population(jax.random.PRNGKey(1), 6)
  assert sum(jax.tree.leaves(c)[0].shape[0] for _, c in groups) == 6
  for m, cfgs in groups:
    out = jax.eval_shape(_population_loss, family.members[m], cfgs,
                         jax.random.split(jax.random.PRNGKey(2), jax.tree.leaves(cfgs)[0].shape[0]))
    assert out.ndim == 1


def test_unknown_family_lists_valid_names():
  with pytest.raises(tasks.UnknownFamilyError, match="digits-mlp-32"):
    tasks.get_family("nope")
