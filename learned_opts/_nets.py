"""Small pure-JAX building blocks shared by the learned optimizers in this package.

Parameters use haiku's layout and initialisers (`{"w": [in, out], "b": [out]}`, truncated
normal with stddev `1/sqrt(fan_in)`), so theta trees match learned_optimization checkpoints
key for key, without running haiku at update time.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

# haiku's TruncatedNormal divides by the stddev of a unit normal truncated to [-2, 2].
_TRUNC_STD = 0.87962566103423978


def truncated_normal(key: jax.Array, shape: Sequence[int], stddev: float) -> jax.Array:
  """haiku.initializers.TruncatedNormal(stddev): N(0, stddev) truncated at two sigma."""
  return jax.random.truncated_normal(key, -2.0, 2.0, tuple(shape), jnp.float32) * (
      stddev / _TRUNC_STD)


def variance_scaling(key: jax.Array, shape: Sequence[int]) -> jax.Array:
  """haiku.initializers.VarianceScaling() (scale 1, fan_in, truncated normal)."""
  fan_in = 1 if len(shape) < 1 else (shape[0] if len(shape) == 1 else int(np.prod(shape[:-1])))
  return truncated_normal(key, shape, float(np.sqrt(1.0 / max(1, fan_in))))


def linear_init(key: jax.Array, n_in: int, n_out: int) -> dict[str, jax.Array]:
  """hk.Linear's default parameters: w ~ TruncatedNormal(1/sqrt(n_in)), b = 0."""
  return {"w": truncated_normal(key, (n_in, n_out), 1.0 / np.sqrt(n_in)),
          "b": jnp.zeros((n_out,), jnp.float32)}


def linear(p: dict[str, jax.Array], x: jax.Array) -> jax.Array:
  return x @ p["w"] + p["b"]


def mlp_init(key: jax.Array, n_in: int, sizes: Sequence[int], prefix: str = "mlp"
             ) -> dict[str, dict[str, jax.Array]]:
  """hk.nets.MLP(sizes) parameters, keyed `mlp/~/linear_i` like haiku."""
  keys = jax.random.split(key, len(sizes))
  out, d = {}, n_in
  for i, (k, n) in enumerate(zip(keys, sizes)):
    out[f"{prefix}/~/linear_{i}"] = linear_init(k, d, n)
    d = n
  return out


def mlp(p: dict[str, dict[str, jax.Array]], x: jax.Array, prefix: str = "mlp") -> jax.Array:
  """hk.nets.MLP forward: ReLU between layers, none after the last."""
  n = len(p)
  for i in range(n):
    x = linear(p[f"{prefix}/~/linear_{i}"], x)
    if i < n - 1:
      x = jax.nn.relu(x)
  return x


def lstm(p: dict[str, jax.Array], x: jax.Array, hidden: jax.Array, cell: jax.Array
         ) -> tuple[jax.Array, jax.Array]:
  """One step of hk.LSTM (gate order i, g, f, o; forget bias +1). Returns (hidden, cell)."""
  gated = linear(p, jnp.concatenate([x, hidden], axis=-1))  # [b, 4h]
  i, g, f, o = jnp.split(gated, 4, axis=-1)
  cell = jax.nn.sigmoid(f + 1.0) * cell + jax.nn.sigmoid(i) * jnp.tanh(g)
  hidden = jax.nn.sigmoid(o) * jnp.tanh(cell)
  return hidden, cell


def second_moment_normalizer(x: jax.Array, axis: Any, eps: float = 1e-5) -> jax.Array:
  return x * jax.lax.rsqrt(eps + jnp.mean(jnp.square(x), axis=axis, keepdims=True))


TIMESCALES = (1, 3, 10, 30, 100, 300, 1000, 3000, 10000, 30000, 100000)


def tanh_embedding(iteration: jax.Array) -> jax.Array:
  """[11] features `tanh(t / s - 1)` over absolute timescales s (no horizon needed)."""
  t = jnp.asarray(iteration, jnp.float32)
  return jnp.tanh(t / jnp.asarray(TIMESCALES, jnp.float32) - 1.0)


def sin_embedding(iteration: jax.Array) -> jax.Array:
  """[11] features `sin(t / (s * pi))` over absolute timescales s."""
  t = jnp.asarray(iteration, jnp.float32)
  return jnp.sin(t / (jnp.asarray(TIMESCALES, jnp.float32) * jnp.pi))


def rolling_moments(m: jax.Array, x: jax.Array, decays: jax.Array) -> jax.Array:
  """EMA of `x` at several decays; the decay axis is last: `[*shape, n_decays]`."""
  return m * decays + (1.0 - decays) * x[..., None]


def tree_all_finite(*trees: Any) -> jax.Array:
  """A scalar bool: every leaf of every tree is finite."""
  leaves = [x for t in trees for x in jax.tree.leaves(t)]
  if not leaves:
    return jnp.asarray(True)
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def tree_select(pred: jax.Array, on_true: Any, on_false: Any) -> Any:
  """`jnp.where(pred, a, b)` leaf by leaf (vmap-friendly alternative to lax.cond)."""
  return jax.tree.map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)


def f32(tree: Any) -> Any:
  return jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), tree)


def require_params(params: Any, name: str) -> None:
  if params is None:
    raise ValueError(f"{name}: update() needs `params` (the learned rule reads them); call "
                     "opt.update(grads, state, params, loss=loss)")


def no_options(name: str, options: dict[str, Any]) -> None:
  if options:
    raise TypeError(f"{name}.make got unknown options {sorted(options)}; it takes none "
                    "besides num_steps")
