"""Contract suite over every task in the named suite, plus registry and naming checks."""

import functools
import json

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lopt import tasks
from lopt.tasks import datasets, models

# Small batches keep compile and run time down; LMs also get a short context.
_OVERRIDES = {"image": {"batch_size": 4}, "lm": {"batch_size": 2, "seq_len": 8}}


def _overrides(name):
  return _OVERRIDES["lm" if name.startswith("pycode") else "image"]


@functools.lru_cache(maxsize=None)
def _task(name):
  try:
    return tasks.get_task(name, **_overrides(name))
  except datasets.DatasetUnavailableError as e:
    pytest.skip(f"dataset unavailable here: {e}")


_TRACES = {}


@jax.jit
def _step(task, key):
  """One compiled function per task: init, batch, loss, aux, grads, normalised loss."""
  _TRACES[task.name] = _TRACES.get(task.name, 0) + 1
  k1, k2 = jax.random.split(key)
  params = task.init(k1)
  batch = task.sample_batch(k2, "train")
  (loss, aux), grads = jax.value_and_grad(task.loss, has_aux=True)(params, k2, batch)
  return params, batch, loss, aux, grads, task.normalizer(loss)


# ---------------------------------------------------------------- registry


def test_suite_splits_are_disjoint_and_documented():
  train, heldout = tasks.suite_names("train"), tasks.suite_names("heldout")
  assert train and heldout and not set(train) & set(heldout)
  assert sorted(train + heldout) == sorted(tasks.SUITE)
  for name, spec in tasks.SUITE.items():
    assert spec.split in tasks.SUITE_SPLITS
    assert spec.num_steps > 0 and spec.num_params > 0 and spec.description
    assert spec.dataset in datasets.DATASETS, name
    assert spec.make.keywords["name"] == name
  demo = tasks.suite_names(demo=True)
  assert 2 <= len(demo) <= 4 and all(tasks.SUITE[n].num_steps <= 1000 for n in demo)
  paper = tasks.suite_names(paper=True)
  assert {"fmnist-conv-16-32-32", "fmnist-conv-32-64-64"} <= set(paper)
  assert all(tasks.SUITE[n].split == "heldout" for n in paper)
  with pytest.raises(ValueError, match="valid: train, heldout"):
    tasks.suite_names("valid")


def test_unknown_task_lists_valid_names():
  with pytest.raises(tasks.UnknownTaskError, match="digits-mlp-32") as e:
    tasks.get_task("digits-mlp-33")
  assert isinstance(e.value, ValueError)


def test_heldout_variants_differ_from_train_tasks():
  def key(spec):
    kw = dict(spec.make.keywords)
    kw.pop("name")
    return (spec.make.func, tuple(sorted(kw.items())))
  train = {key(tasks.SUITE[n]) for n in tasks.suite_names("train")}
  for name in tasks.suite_names("heldout"):
    assert key(tasks.SUITE[name]) not in train, name


@pytest.mark.parametrize("name", list(tasks.SUITE))
def test_spec_param_counts_match_built_tasks(name):
  """The written-out counts (listed by `lopt tasks`) equal the real ones."""
  try:
    task = tasks.get_task(name)
  except datasets.DatasetUnavailableError as e:
    pytest.skip(f"dataset unavailable here: {e}")
  assert task.num_params == tasks.SUITE[name].num_params
  assert task.name == name


# ---------------------------------------------------------------- contract


@pytest.mark.parametrize("name", list(tasks.SUITE))
def test_task_contract(name):
  task = _task(name)
  assert task.name == name

  # Frozen, hashable and equal by value; rebuilt tasks are equal and share data buffers.
  again = tasks.get_task(name, **_overrides(name))
  assert again == task and hash(again) == hash(task)
  assert again.data is task.data
  other = tasks.get_task(name, **{**_overrides(name), "batch_size": 3})
  assert other != task
  with pytest.raises(Exception):
    task.batch_size = 5  # frozen

  # Under jit: init, a batch, loss and grads.
  params, batch, loss, aux, grads, norm = _step(task, jax.random.PRNGKey(0))

  # init: finite params in haiku layout; the arch lists exactly the param modules.
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(params))
  arch = task.arch
  assert arch["kind"] in ("mlp", "conv", "mlp_autoencoder", "transformer", "lstm")
  assert sorted(arch["modules"]) == sorted(params)
  json.dumps(arch)  # plain data
  assert task.num_params == sum(x.size for x in jax.tree.leaves(params))

  # Loss finite, grads finite, same structure and shapes, not all zero.
  assert loss.shape == () and np.isfinite(float(loss))
  assert jax.tree.structure(grads) == jax.tree.structure(params)
  for g, p in zip(jax.tree.leaves(grads), jax.tree.leaves(params)):
    assert g.shape == p.shape and g.dtype == p.dtype and np.isfinite(np.asarray(g)).all()
  assert sum(float(jnp.sum(jnp.abs(g))) for g in jax.tree.leaves(grads)) > 0
  if arch["kind"] != "mlp_autoencoder":
    assert 0.0 <= float(aux["accuracy"]) <= 1.0
  assert 0.0 <= float(norm) <= 10.0

  # No retrace/recompile when an equal task is rebuilt (data are arguments, not constants).
  traces = _TRACES[name]
  _step(again, jax.random.PRNGKey(2))
  assert _TRACES[name] == traces

  # The abstract batch matches real batches of every split.
  abstract = task.abstract_batch
  for split in tasks.SPLITS:
    real = jax.eval_shape(lambda k, s=split: task.sample_batch(k, s), jax.random.PRNGKey(0))
    assert real == abstract, split
  assert jax.tree.map(lambda x: (x.shape, x.dtype), batch) == jax.tree.map(
      lambda x: (x.shape, x.dtype), abstract)
  with pytest.raises(ValueError, match="split"):
    task.sample_batch(jax.random.PRNGKey(0), "validation")

  # Evaluation batches: a fixed stack [n, b, ...] with the batch's trailing shapes.
  ev = task.eval_batches("valid")
  for e, a in zip(jax.tree.leaves(ev), jax.tree.leaves(abstract)):
    assert e.ndim == a.ndim + 1 and e.shape[2:] == a.shape[1:] and e.dtype == a.dtype
  ev2 = task.eval_batches("valid")
  assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(ev), jax.tree.leaves(ev2)))

  # Normalizer: NaN/inf map to the maximum of the range.
  vals = task.normalizer(jnp.array([jnp.nan, jnp.inf, -jnp.inf, 1e9]))
  np.testing.assert_allclose(np.asarray(vals), 10.0)


def test_quadratic_task_contract():
  task = tasks.QuadraticTask(dim=8, batch_size=4)
  assert task == tasks.QuadraticTask(dim=8, batch_size=4)
  params, batch, loss, _, grads, norm = _step(task, jax.random.PRNGKey(1))
  assert np.isfinite(float(loss)) and 0 <= float(norm) <= 10
  exact = tasks.QuadraticTask(dim=8, noise_std=0.0)
  x = params["quadratic"]["x"]
  g = jax.grad(lambda p: exact.loss(p, None, exact.sample_batch(jax.random.PRNGKey(0)))[0])(params)
  np.testing.assert_allclose(g["quadratic"]["x"], exact.cfg["curvature"] * x, rtol=1e-5)
  assert task.abstract_batch["eps"].shape == (4, 8)


# ---------------------------------------------------------------- models and names


def test_model_validation_errors_are_clear():
  with pytest.raises(ValueError, match="unknown activation 'swish'"):
    tasks.ImageMLPTask(dataset="digits", activation="swish")
  with pytest.raises(ValueError, match="unknown norm"):
    tasks.ImageMLPTask(dataset="digits", norm="batch_norm")
  with pytest.raises(ValueError, match="needs an image dataset"):
    tasks.ImageMLPTask(dataset="pycode")
  with pytest.raises(ValueError, match="not divisible"):
    tasks.TransformerLMTask(width=30, num_heads=4)


def test_variant_fields_change_the_model():
  init = jax.jit(lambda task, key: task.init(key))
  p = init(_task("digits-mlp-32"), jax.random.PRNGKey(0))
  ps = init(_task("digits-mlp-32-init3"), jax.random.PRNGKey(0))
  np.testing.assert_allclose(ps["mlp/~/linear_0"]["w"], 3 * p["mlp/~/linear_0"]["w"], rtol=1e-6)
  np.testing.assert_array_equal(ps["mlp/~/linear_0"]["b"], p["mlp/~/linear_0"]["b"])
  ln = jax.eval_shape(_task("digits-mlp-32-ln").init, jax.random.PRNGKey(0))
  assert "mlp/~/layer_norm_0" in ln


def _golden_params(shared_dir, model):
  spec = json.loads((shared_dir / "golden" / "nino" / f"{model}.json").read_text())
  return {(r["haiku_module"], r["haiku_param"]): tuple(r["haiku_shape"]) for r in spec["params"]}


def _ours(params):
  return {(m, n): tuple(v.shape) for m, d in params.items() for n, v in d.items()}


def test_param_names_match_nino_golden_layouts(shared_dir):
  """MLP 64-32-10, ConvNet 16-32-32 and GPT-2 2x32 use the golden files' haiku names."""
  mlp = tasks.get_task("digits-mlp-32").init(jax.random.PRNGKey(0))
  assert _ours(mlp) == _golden_params(shared_dir, "mlp")
  conv = hk.without_apply_rng(hk.transform(functools.partial(
      models.conv_classifier, channels=(16, 32, 32), num_classes=10)))
  conv = jax.eval_shape(conv.init, jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))
  assert _ours(conv) == _golden_params(shared_dir, "convnet")
  gpt = hk.without_apply_rng(hk.transform(functools.partial(
      models.gpt2_lm, vocab_size=64, num_layers=2, width=32, num_heads=2, max_len=32)))
  gpt = jax.eval_shape(gpt.init, jax.random.PRNGKey(0), jnp.zeros((1, 32), jnp.int32))
  assert _ours(gpt) == _golden_params(shared_dir, "gpt2")
