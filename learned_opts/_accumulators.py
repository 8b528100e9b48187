"""Gradient accumulators shared by the reference learned optimizers (VeLO, Celo, AdafacMLP).

Pure functions on one leaf at a time. The decay axis comes FIRST (`m: [k, *shape]`), so each
decay is a contiguous parameter-shaped plane that XLA fuses with the elementwise update
(learned_optimization keeps it last; the numbers are the same).

Factored (Adafactor-style) second moments follow learned_optimization's `factored_dims`:
`(d1, d0) = argsort(shape)[-2:]` (ties resolved by numpy's argsort), `v_row` averages over
`d0` (the largest axis) and `v_col` over `d1`. Leaves of rank < 2 keep a full `v_diag`.

    >>> import jax.numpy as jnp
    >>> factored_dims((3, 3, 2, 4))
    (1, 3)
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

_FAC_EPS = 1e-30  # added to g*g before averaging, as in learned_optimization


def factored_dims(shape: Sequence[int]) -> tuple[int, int] | None:
  """`(d1, d0)`: the two largest axes (d0 the largest), or None below rank 2."""
  if len(shape) < 2:
    return None
  order = np.argsort(np.asarray(shape))
  return int(order[-2]), int(order[-1])


def _col(decays: jax.Array, ndim: int) -> jax.Array:
  """[k] -> [k, 1, ..., 1] for broadcasting against [k, *shape]."""
  return jnp.reshape(decays, (-1,) + (1,) * ndim)


def mom_update(m: jax.Array, g: jax.Array, decays: jax.Array) -> jax.Array:
  """m_j <- d_j m_j + (1 - d_j) g.  m: [k, *shape]."""
  d = _col(decays, g.ndim)
  return d * m + (1 - d) * g[None]


def rms_update(v: jax.Array, g: jax.Array, decays: jax.Array) -> jax.Array:
  """v_j <- d_j v_j + (1 - d_j) g^2, with d clipped to [0, 1].  v: [k, *shape]."""
  d = _col(jnp.clip(decays, 0.0, 1.0), g.ndim)
  return d * v + (1 - d) * (g * g)[None]


class FactoredLeaf(NamedTuple):
  """One leaf's factored accumulator; unused fields hold a `[1]` placeholder (never read).

  Not `[k, 0]`: orbax (and other checkpointers) refuse zero-size arrays, so a state with
  them could not be saved with `ocp.StandardCheckpointer`."""
  v_row: jax.Array   # [k, *shape without d0] or [1]
  v_col: jax.Array   # [k, *shape without d1] or [1]
  v_diag: jax.Array  # [k, *shape] (rank < 2) or [1]


def fac_init(p: jax.Array, k: int) -> FactoredLeaf:
  empty = lambda: jnp.zeros((1,), jnp.float32)  # distinct buffers, so state can be donated
  fd = factored_dims(p.shape)
  if fd is None:
    return FactoredLeaf(empty(), empty(), jnp.zeros((k,) + p.shape, jnp.float32))
  d1, d0 = fd
  row = tuple(np.delete(np.asarray(p.shape), d0))
  col = tuple(np.delete(np.asarray(p.shape), d1))
  return FactoredLeaf(jnp.zeros((k,) + row, jnp.float32), jnp.zeros((k,) + col, jnp.float32),
                      empty())


def safe_rsqrt(x: jax.Array) -> jax.Array:
  return jax.lax.rsqrt(jnp.maximum(x, 1e-9))


class FactorInfo(NamedTuple):
  """What the per-parameter features need from a factored accumulator, broadcastable to
  `[k, *shape]`: `row`/`col` the raw accumulators, `rf`/`cf` the row and column factors (so
  `fac_g = g * rf * cf`). For a rank < 2 leaf, `row = col = v_diag` and `rf = cf = None`."""
  row: jax.Array
  col: jax.Array
  rf: jax.Array | None
  cf: jax.Array | None
  diag: bool


def fac_update(acc: FactoredLeaf, g: jax.Array, decays: jax.Array,
               means: tuple[jax.Array, jax.Array] | None = None
               ) -> tuple[FactoredLeaf, FactorInfo]:
  """Updates one leaf's factored accumulator; returns it and the broadcast views.

  `means` optionally gives precomputed `(mean(g^2 + eps, d0), mean(g^2 + eps, d1))`."""
  d = jnp.clip(decays, 0.0, 1.0)
  gsq = g * g + _FAC_EPS
  fd = factored_dims(g.shape)
  if fd is None:
    dd = _col(d, g.ndim)
    v = dd * acc.v_diag + (1 - dd) * gsq[None]
    return acc._replace(v_diag=v), FactorInfo(v, v, None, None, True)
  d1, d0 = fd
  dr = _col(d, g.ndim - 1)
  mean0, mean1 = means if means is not None else (jnp.mean(gsq, axis=d0), jnp.mean(gsq, axis=d1))
  v_row = dr * acc.v_row + (1 - dr) * mean0[None]
  v_col = dr * acc.v_col + (1 - dr) * mean1[None]
  reduced_d1 = d1 - 1 if d1 > d0 else d1
  row_mean = jnp.mean(v_row, axis=1 + reduced_d1, keepdims=True)
  row_f = jnp.expand_dims(safe_rsqrt(v_row / (row_mean + 1e-9)), 1 + d0)
  col_f = jnp.expand_dims(safe_rsqrt(v_col), 1 + d1)
  row_b = jnp.expand_dims(v_row, 1 + d0)
  col_b = jnp.expand_dims(v_col, 1 + d1)
  return FactoredLeaf(v_row, v_col, acc.v_diag), FactorInfo(row_b, col_b, row_f, col_f, False)


def decays_from_offsets(initial: Sequence[float], offset: jax.Array) -> jax.Array:
  """learned_optimization's meta-learned decay reparametrisation:
  `1 - exp(10 * (log(1 - d0) / 10 + offset))`."""
  base = jnp.log(1 - jnp.asarray(initial, jnp.float32)) / 10.0
  return 1 - jnp.exp((base + offset) * 10.0)


# --- loss EMA buffer (HyperV2 / Celo `BufferLossAccumulators`) -------------------------------

def loss_decays(num_steps: int) -> jax.Array:
  """10 EMA decays with half-lives logspace(1, log10(num_steps), 10)."""
  halflife = jnp.logspace(1, jnp.log10(jnp.asarray(num_steps, jnp.int32)), 10)
  return jnp.exp(-1.0 / halflife)


def loss_update(means: jax.Array, running_min: jax.Array, count: jax.Array, loss: jax.Array,
                decays: jax.Array) -> tuple[jax.Array, jax.Array]:
  """One loss into the EMA buffer; `count` is the number of losses seen before this one."""
  cor = means / (1 - decays ** (count + 1))
  approx_max = jnp.where(count == 0, loss, jnp.max(cor))
  loss = jnp.minimum(jnp.abs(approx_max) * 2, loss)
  means = means * decays + loss * (1.0 - decays)
  cor = means / (1 - decays ** (count + 1))
  return means, jnp.minimum(running_min, cor)


def loss_features(means: jax.Array, running_min: jax.Array, count: jax.Array,
                  decays: jax.Array) -> jax.Array:
  """9 loss features, zero while `count <= 2` (count = losses seen, after the update)."""
  cor = means / (1 - decays ** count)
  approx_max, cor, rmin = cor[1:], cor[:-1], running_min[:-1]
  den = jnp.maximum(1e-8, approx_max - rmin)
  f = jnp.clip((cor - rmin) / den - 1.0, -1, 1)
  return jnp.where(count <= 2, f * 0, f)


def fractional_tanh_embed(x: jax.Array) -> jax.Array:
  """9 features tanh(10 (fraction_trained - tau))."""
  taus = jnp.asarray([0.03, 0.1, 0.2, 0.4, 0.6, 0.8, 0.9, 1.0, 1.1], jnp.float32)
  return jnp.tanh((x - taus) * 10)
