"""Nowcasting reads flax linen and nnx parameter trees as it reads haiku ones: the neural
graph of a flax MLP / ConvNet equals the haiku model's, and predictions agree."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lopt.learned_opts import nino
from lopt.learned_opts.nino import layout

flax = pytest.importorskip("flax")
from flax import linen, nnx  # noqa: E402


def _same_graph(a, b):
  assert (a.n_nodes, a.n_params, a.max_feat) == (b.n_nodes, b.n_params, b.max_feat)
  for field in ("edge_index", "edge_type", "gather_idx", "param_slot"):
    np.testing.assert_array_equal(np.asarray(getattr(a, field)), np.asarray(getattr(b, field)))


def _haiku_mlp():
  return {"mlp/~/linear_0": {"w": jnp.ones((6, 8)), "b": jnp.zeros(8)},
          "mlp/~/linear_1": {"w": jnp.ones((8, 3)), "b": jnp.zeros(3)}}


def _haiku_conv():
  return {"conv2_d": {"w": jnp.ones((3, 3, 1, 4)), "b": jnp.zeros(4)},
          "conv2_d_1": {"w": jnp.ones((3, 3, 4, 8)), "b": jnp.zeros(8)},
          "linear": {"w": jnp.ones((8, 3)), "b": jnp.zeros(3)}}


class LinenMLP(linen.Module):
  @linen.compact
  def __call__(self, x):
    x = jax.nn.relu(linen.Dense(8)(x))  # created first: Dense_0
    return linen.Dense(3)(x)


class LinenConv(linen.Module):
  @linen.compact
  def __call__(self, x):
    x = jax.nn.relu(linen.Conv(4, (3, 3))(x))
    x = jax.nn.relu(linen.Conv(8, (3, 3))(x))
    return linen.Dense(3)(x.mean(axis=(1, 2)))


def test_linen_mlp_and_convnet_graphs_match_haiku():
  mlp = LinenMLP().init(jax.random.PRNGKey(0), jnp.ones((1, 6)))
  _same_graph(nino.build_graph(mlp), nino.build_graph(_haiku_mlp()))
  conv = LinenConv().init(jax.random.PRNGKey(0), jnp.ones((1, 8, 8, 1)))
  _same_graph(nino.build_graph(conv), nino.build_graph(_haiku_conv()))


class NnxMLP(nnx.Module):
  def __init__(self, rngs):
    self.linear_0 = nnx.Linear(6, 8, rngs=rngs)
    self.linear_1 = nnx.Linear(8, 3, rngs=rngs)


class NnxConv(nnx.Module):
  def __init__(self, rngs):
    self.conv_0 = nnx.Conv(1, 4, (3, 3), rngs=rngs)
    self.conv_1 = nnx.Conv(4, 8, (3, 3), rngs=rngs)
    self.head = nnx.Linear(8, 3, rngs=rngs)


def test_nnx_mlp_and_convnet_graphs_match_haiku():
  for model, haiku in ((NnxMLP(nnx.Rngs(0)), _haiku_mlp()), (NnxConv(nnx.Rngs(0)), _haiku_conv())):
    for tree in (nnx.state(model, nnx.Param), nnx.to_pure_dict(nnx.state(model, nnx.Param))):
      _same_graph(nino.build_graph(tree), nino.build_graph(haiku))


def test_layernorm_with_an_explicit_arch():
  class LN(linen.Module):
    @linen.compact
    def __call__(self, x):
      x = linen.LayerNorm()(linen.Dense(8)(x))
      return linen.Dense(3)(x)
  params = LN().init(jax.random.PRNGKey(0), jnp.ones((1, 6)))
  with pytest.raises(ValueError, match="pass arch="):
    nino.build_graph(params)
  arch = {"kind": "sequential", "layers": ["Dense_0", "LayerNorm_0", "Dense_1"]}
  haiku = {"linear_0": {"w": jnp.ones((6, 8)), "b": jnp.zeros(8)},
           "ln": {"scale": jnp.ones(8), "offset": jnp.zeros(8)},
           "linear_1": {"w": jnp.ones((8, 3)), "b": jnp.zeros(3)}}
  _same_graph(nino.build_graph(params, arch),
              nino.build_graph(haiku, {"kind": "sequential",
                                       "layers": ["linear_0", "ln", "linear_1"]}))


def test_prediction_on_flax_equals_prediction_on_haiku():
  nc = nino.resolve_nowcaster("wnnp_lopt")
  ctx = nc.config.ctx
  params = LinenMLP().init(jax.random.PRNGKey(0), jnp.ones((1, 6)))
  history = jax.tree.map(lambda p: jnp.stack([p * (1 + 0.01 * i) for i in range(ctx)]), params)
  view, back = layout.to_modules(history)
  pred_flax = nc.predict(history, 3)
  pred_haiku = nc.predict(view, 3)
  assert jax.tree.structure(pred_flax) == jax.tree.structure(params)
  for a, b in zip(jax.tree.leaves(pred_flax), jax.tree.leaves(back(pred_haiku))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_nowcast_wrapper_trains_a_linen_model():
  model = LinenMLP()
  x = jax.random.normal(jax.random.PRNGKey(1), (32, 6))
  y = jax.random.normal(jax.random.PRNGKey(2), (32, 3))
  params = model.init(jax.random.PRNGKey(0), x)
  opt = nino.nowcast(optax.adam(1e-2), nino.resolve_nowcaster("wnnp_lopt"), period=10,
                     max_steps=30)
  state = opt.init(params)
  loss_fn = lambda p: jnp.mean((model.apply(p, x) - y) ** 2)

  @jax.jit
  def step(params, state):
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, state = opt.update(grads, state, params, value=loss)
    return optax.apply_updates(params, updates), state, loss
  first = None
  for _ in range(30):
    params, state, loss = step(params, state)
    first = loss if first is None else first
  assert int(state.nowcasts) >= 2 and float(loss) < float(first)
