"""The contract every registered learned optimizer keeps (see learned_opts/base.py).

Parameterised over `REGISTRY`: jit, composition with optax.chain, finite outputs, stable
dtypes/shapes (bf16 params, float32 state), no recompilation on the second update, vmap over
a batch of thetas, non-finite gradients (params must stay finite), odd pytrees (hypothesis).
"""

import functools

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lopt.learned_opts import registry

NUM_STEPS = 100
# Small settings keep compile times low; every architecture is covered.
SMALL_HPARAMS = {
    "adafac_mlp": {},
    "mlp": {"hidden_size": 8},
    "rnn_mlp": {"lstm_hidden_size": 8, "hidden_size": 8},
    "velo": {"lstm_hidden_size": 8, "param_inits": 4},
    "celo": {"lstm_hidden_size": 8},
    "celo_adam": {"lstm_hidden_size": 8},
    "learnable_adam": {"initial_lr": 1e-2},
    "learnable_sgdm": {"initial_lr": 1e-2},
}


def test_every_registered_name_is_covered():
  assert set(SMALL_HPARAMS) == set(registry.REGISTRY)


def _lopt(name):
  try:
    return registry.get(name, **SMALL_HPARAMS[name])
  except ModuleNotFoundError as e:
    pytest.skip(f"{name}: module not available yet ({e.name})")


def _params():
  """Mixed dtypes in one tree (bf16 and f32 leaves, a scalar), so one compile covers both."""
  k1, k2, k3 = jax.random.split(jax.random.PRNGKey(0), 3)
  return {"conv": {"w": (jax.random.normal(k1, (3, 3, 2, 4)) * 0.3).astype(jnp.bfloat16)},
          "dense": {"w": jax.random.normal(k2, (8, 5)) * 0.3, "b": jnp.zeros((5,))},
          "scale": jnp.asarray(1.5, jnp.float32)}


def _grads(params, seed):
  leaves, tdef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
  return tdef.unflatten([(jax.random.normal(k, x.shape) * 0.1).astype(x.dtype)
                         for k, x in zip(keys, leaves)])


def _step_fn(opt):
  def step(params, state, grads, loss):
    updates, state = opt.update(grads, state, params, loss=loss)
    return optax.apply_updates(params, updates), state, updates
  return step


def _spec(tree):
  return jax.tree.map(lambda x: (x.shape, x.dtype), tree)


def _finite(tree):
  return all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(tree))


@functools.lru_cache(maxsize=None)
def _compiled(name):
  """The chained transform and its jitted step for `name`, compiled once per test session."""
  lopt = _lopt(name)
  theta = lopt.init_meta(jax.random.PRNGKey(1))
  opt = optax.chain(optax.clip_by_global_norm(1.0), lopt.make(theta, num_steps=NUM_STEPS))
  params = _params()
  return opt, jax.jit(opt.init)(params), jax.jit(_step_fn(opt)), params


@pytest.mark.parametrize("name", sorted(SMALL_HPARAMS))
def test_jit_chain_dtypes_and_no_recompile(name):
  """Chained after clip_by_global_norm, under jit: finite, stable dtypes/shapes (bf16 params,
  float32 state) and no recompilation on the second update."""
  _, state, step, params = _compiled(name)
  inner = state[1]  # the learned rule's own state inside the chain
  assert isinstance(inner, tuple) and hasattr(inner, "_fields"), "state must be a NamedTuple"
  for x in jax.tree.leaves(state):  # state is arrays only, float32 (or integer counters)
    assert isinstance(x, jax.Array)
    assert x.dtype in (jnp.float32, jnp.int32, jnp.uint32, jnp.bool_), x.dtype
  p1, s1, u1 = step(params, state, _grads(params, 1), jnp.float32(2.0))
  p2, s2, u2 = step(p1, s1, _grads(params, 2), jnp.float32(1.9))
  assert step._cache_size() == 1, "the second update recompiled"
  assert _spec(p2) == _spec(params) and _spec(u2) == _spec(params)
  assert jax.tree.structure(s2) == jax.tree.structure(state) and _spec(s2) == _spec(state)
  assert _finite((p1, p2, u1, u2, s2))
  moved = [float(jnp.max(jnp.abs(a.astype(jnp.float32) - b.astype(jnp.float32))))
           for a, b in zip(jax.tree.leaves(p2), jax.tree.leaves(params))]
  assert max(moved) > 0, "the optimizer did not move any parameter"


@pytest.mark.parametrize("name", sorted(SMALL_HPARAMS))
def test_non_finite_gradients_keep_params_finite(name):
  """NaN/inf gradients (clip_by_global_norm spreads one NaN to every leaf): the params stay
  finite, and the optimizer carries on with the next finite gradient."""
  _, state, step, params = _compiled(name)
  p, s, _ = step(params, state, _grads(params, 1), jnp.float32(2.0))
  for bad in (np.nan, np.inf):
    g = _grads(params, 3)
    g["dense"]["w"] = g["dense"]["w"].at[0, 0].set(bad)
    p, s, _ = step(p, s, g, jnp.float32(1.8))
    assert _finite(p), f"params went non-finite after a {bad} gradient"
  p, s, u = step(p, s, _grads(params, 4), jnp.float32(1.7))
  assert _finite((p, u))


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=pytest.mark.slow) if n == "celo" else n  # celo ~ velo's code path
    for n in sorted(SMALL_HPARAMS)])
def test_vmap_over_thetas(name):
  """A batch of thetas runs under one vmap; batch members do not leak into each other
  (permuting the batch permutes the results, with the same compiled function)."""
  params = {"w": jnp.linspace(-1.0, 1.0, 12).reshape(3, 4), "b": jnp.zeros(4)}
  grads = _grads(params, 1)
  lopt = _lopt(name)
  thetas = jax.vmap(lopt.init_meta)(jax.random.split(jax.random.PRNGKey(3), 3))
  thetas = jax.tree.map(lambda x: x + 0.05 * jnp.arange(3.0).reshape((3,) + (1,) * (x.ndim - 1)),
                        thetas)  # distinct even for rules whose init_meta ignores the key

  def run(theta):
    opt = lopt.make(theta, num_steps=NUM_STEPS)
    u, _ = opt.update(grads, opt.init(params), params, loss=jnp.float32(2.0))
    return u

  batched_run = jax.jit(jax.vmap(run))
  batched = batched_run(thetas)
  assert jax.tree.leaves(batched)[0].shape[0] == 3 and _finite(batched)
  perm = jnp.asarray([2, 0, 1])
  permuted = batched_run(jax.tree.map(lambda x: x[perm], thetas))
  assert batched_run._cache_size() == 1
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b[perm], rtol=1e-5, atol=1e-8),
               permuted, batched)
  w = batched["w"]
  assert float(jnp.max(jnp.abs(w[0] - w[2]))) > 0, "different thetas gave identical updates"


# Odd leaf shapes: scalars, 1-D, size-1 dims, one large dim.
_SHAPES = [(), (1,), (7,), (1, 1), (1, 6), (5, 1), (3, 1, 2), (2, 1, 1, 3), (4099,), (2, 2050)]


@functools.lru_cache(maxsize=None)
def _jitted_run(name):
  lopt = _lopt(name)
  theta = lopt.init_meta(jax.random.PRNGKey(0))
  opt = lopt.make(theta, num_steps=NUM_STEPS)

  @jax.jit
  def run(params, grads):
    s = opt.init(params)
    p = params
    for t in range(2):  # two steps: the second sees non-zero accumulators
      u, s = opt.update(jax.tree.map(lambda g: g * (t + 1), grads), s, p,
                        loss=jnp.float32(1.0 - 0.1 * t))
      p = optax.apply_updates(p, u)
    return p, u, s
  return run


# Each new tree structure compiles anew, so the default run covers two cheap architectures;
# `make test-slow` covers all.
_FAST_ODD = ("learnable_adam", "mlp")


@pytest.mark.parametrize("name", [
    n if n in _FAST_ODD else pytest.param(n, marks=pytest.mark.slow)
    for n in sorted(SMALL_HPARAMS)])
@hypothesis.settings(max_examples=3, deadline=None, derandomize=True,
                     suppress_health_check=list(hypothesis.HealthCheck))
@hypothesis.given(shapes=st.lists(st.sampled_from(_SHAPES), min_size=1, max_size=3),
                  seed=st.integers(0, 2**16))
def test_odd_pytrees(name, shapes, seed):
  run = _jitted_run(name)
  rng = np.random.default_rng(seed)
  params = {f"p{i}": jnp.asarray(rng.normal(size=s), jnp.float32) for i, s in enumerate(shapes)}
  grads = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape) * 0.1, jnp.float32),
                       params)
  p, u, s = run(params, grads)
  assert _spec(p) == _spec(params) and _spec(u) == _spec(params)
  assert _finite((p, u, s))
