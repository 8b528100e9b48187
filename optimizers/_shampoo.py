"""Shampoo with Adam grafting, as an optax transform (Gupta et al. 2018; Anil et al. 2020).

Why our own: PyPI's JAX Shampoo (`optax-shampoo` 0.0.6) is a 2022 snapshot of
`distributed_shampoo` that nobody maintains, and optax (0.2.8) ships no Shampoo or SOAP. This
is the single-device core of distributed Shampoo, small enough to check against a NumPy
reference (tests/test_optimizers_strong.py):

For a parameter whose gradient reshapes to a matrix `G` [m, n] (kernels: all dims but the
last folded into m) with `m, n <= max_precond_dim`:

    L <- beta2 L + (1 - beta2) G G^T           R <- beta2 R + (1 - beta2) G^T G
    every `precondition_every` steps:  PL = (L + eps_L I)^(-1/4),  PR = (R + eps_R I)^(-1/4)
    S = PL G PR                                # Shampoo direction
    A = Adam direction (bias-corrected, b1 = 0) from v <- b2 v + (1 - b2) G^2
    D = S * ||A|| / ||S||                      # layer-wise grafting: Adam's step size
    mu <- b1 mu + (1 - b1) D;  update = -lr mu

`eps_X = matrix_eps * max eigenvalue of X` (relative damping). Other parameters (biases,
LayerNorm scales, too-large matrices) take `D = A`. The first step computes the roots.

Example:
  >>> import jax.numpy as jnp, optax
  >>> tx = shampoo(1e-2)
  >>> params = {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}
  >>> state = tx.init(params)
  >>> updates, state = tx.update(params, state, params)
  >>> updates["w"].shape
  (3, 2)
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax


class ShampooState(NamedTuple):
  count: jax.Array  # int32 []: steps taken
  mu: Any           # momentum of the grafted direction (params' shapes)
  nu: Any           # Adam second moment for grafting (params' shapes)
  stats: Any        # per leaf: (L [m, m], R [n, n]) or () when not preconditioned
  roots: Any        # per leaf: (L^-1/4, R^-1/4) or ()


def _matrix_shape(shape: tuple[int, ...], max_dim: int) -> tuple[int, int] | None:
  if len(shape) < 2:
    return None
  m, n = math.prod(shape[:-1]), shape[-1]
  return (m, n) if max(m, n) <= max_dim and min(m, n) > 1 else None


def _inv_fourth_root(mat: jax.Array, matrix_eps: float) -> jax.Array:
  """(mat + eps I)^(-1/4) for a symmetric PSD `mat`, eps = matrix_eps * its largest
  eigenvalue (eigendecomposition in float32)."""
  w, v = jnp.linalg.eigh(mat)
  w = jnp.maximum(w, 0.0)
  eps = matrix_eps * jnp.maximum(jnp.max(w), 1e-30)
  return (v * (w + eps) ** -0.25) @ v.T


def _roots_or_keep(refresh: jax.Array, L: jax.Array, R: jax.Array, old: tuple,
                   matrix_eps: float) -> tuple[jax.Array, jax.Array]:
  """`(L^-1/4, R^-1/4)` when `refresh`, else `old`: a `lax.cond` that stays a cond under vmap.

  Under `jax.vmap` a batched predicate turns `lax.cond` into a select that computes both
  branches on every step: the eigendecompositions would run every step of a vectorised LR
  sweep (measured >10x slower). The runs of one sweep take their steps in lockstep, so the
  batched rule below branches on "any run refreshes" and selects per run: exactly the
  one-run result, with the roots computed only on refresh steps.
  """
  @jax.custom_batching.custom_vmap
  def f(refresh, L, R, old_l, old_r):
    return jax.lax.cond(refresh, lambda: (_inv_fourth_root(L, matrix_eps),
                                          _inv_fourth_root(R, matrix_eps)),
                        lambda: (old_l, old_r))

  @f.def_vmap
  def rule(axis_size, in_batched, refresh, L, R, old_l, old_r):
    bcast = lambda x, b: x if b else jnp.broadcast_to(x, (axis_size,) + x.shape)  # noqa: E731
    refresh, L, R, old_l, old_r = map(bcast, (refresh, L, R, old_l, old_r), in_batched)
    # One eigendecomposition at a time (`lax.map`, not a batched eigh): batched LAPACK
    # calls inside the vmapped scan hung XLA:CPU now and then on a loaded 2-core box.
    roots = lambda m: jax.lax.map(lambda x: _inv_fourth_root(x, matrix_eps), m)  # noqa: E731
    new = jax.lax.cond(jnp.any(refresh), lambda: (roots(L), roots(R)), lambda: (old_l, old_r))
    pick = lambda n, o: jnp.where(refresh[:, None, None], n, o)  # noqa: E731
    return (pick(new[0], old_l), pick(new[1], old_r)), (True, True)

  return f(refresh, L, R, *old)


def scale_by_shampoo(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
                     beta2_stats: float = 0.999, matrix_eps: float = 1e-6,
                     precondition_every: int = 10, max_precond_dim: int = 1024
                     ) -> optax.GradientTransformation:
  """Shampoo's preconditioned, Adam-grafted, momentum direction (no learning rate).

  Args:
    b1: momentum of the grafted direction.
    b2: Adam's second-moment decay (grafting).
    eps: Adam's epsilon (grafting).
    beta2_stats: decay of the Kronecker factors L and R.
    matrix_eps: damping relative to the largest eigenvalue of L or R.
    precondition_every: steps between recomputing the inverse fourth roots.
    max_precond_dim: matrices with a larger side use the Adam direction.
  """

  def init_fn(params):
    def stats(p):
      ms = _matrix_shape(p.shape, max_precond_dim)
      if ms is None:
        return ()
      m, n = ms
      return (jnp.zeros((m, m), jnp.float32), jnp.zeros((n, n), jnp.float32))

    def roots(p):
      ms = _matrix_shape(p.shape, max_precond_dim)
      if ms is None:
        return ()
      m, n = ms
      return (jnp.eye(m, dtype=jnp.float32), jnp.eye(n, dtype=jnp.float32))

    zeros = lambda p: jnp.zeros(p.shape, jnp.float32)  # noqa: E731
    return ShampooState(jnp.zeros([], jnp.int32), jax.tree.map(zeros, params),
                        jax.tree.map(zeros, params), jax.tree.map(stats, params),
                        jax.tree.map(roots, params))

  def update_fn(updates, state, params=None):
    del params
    count = state.count + 1
    refresh = (state.count % precondition_every) == 0
    leaves, treedef = jax.tree.flatten(updates)
    mu, nu = treedef.flatten_up_to(state.mu), treedef.flatten_up_to(state.nu)
    stats, roots = treedef.flatten_up_to(state.stats), treedef.flatten_up_to(state.roots)
    out, new_mu, new_nu, new_stats, new_roots = [], [], [], [], []
    c = count.astype(jnp.float32)
    for g, m_, v_, st, rt in zip(leaves, mu, nu, stats, roots):
      g32 = g.astype(jnp.float32)
      v = b2 * v_ + (1 - b2) * g32 ** 2
      adam = g32 / (jnp.sqrt(v / (1 - b2 ** c)) + eps)
      if len(st) == 0:
        direction, st_new, rt_new = adam, (), ()
      else:
        G = g32.reshape(st[0].shape[0], st[1].shape[0])  # [m, n]
        L = beta2_stats * st[0] + (1 - beta2_stats) * G @ G.T
        R = beta2_stats * st[1] + (1 - beta2_stats) * G.T @ G
        PL, PR = _roots_or_keep(refresh, L, R, rt, matrix_eps)
        S = (PL @ G @ PR).reshape(g.shape)
        scale = jnp.linalg.norm(adam) / jnp.maximum(jnp.linalg.norm(S), 1e-30)
        direction, st_new, rt_new = S * scale, (L, R), (PL, PR)
      m = b1 * m_ + (1 - b1) * direction
      out.append(m.astype(g.dtype))
      new_mu.append(m)
      new_nu.append(v)
      new_stats.append(st_new)
      new_roots.append(rt_new)
    unflat = lambda xs: jax.tree.unflatten(treedef, xs)  # noqa: E731
    return unflat(out), ShampooState(count, unflat(new_mu), unflat(new_nu), unflat(new_stats),
                                     unflat(new_roots))

  return optax.GradientTransformation(init_fn, update_fn)


def shampoo(learning_rate: float = 1e-3, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
            beta2_stats: float = 0.999, matrix_eps: float = 1e-6, precondition_every: int = 10,
            max_precond_dim: int = 1024) -> optax.GradientTransformation:
  """Shampoo (Adam-grafted) with a constant learning rate; see the module docstring."""
  return optax.chain(
      scale_by_shampoo(b1=b1, b2=b2, eps=eps, beta2_stats=beta2_stats, matrix_eps=matrix_eps,
                       precondition_every=precondition_every, max_precond_dim=max_precond_dim),
      optax.scale_by_learning_rate(learning_rate))


def state_bytes(optimizer: optax.GradientTransformation, params: Any) -> int:
  """Bytes of `optimizer`'s state for `params` (shapes only: nothing is allocated).

  Example:
    >>> import jax.numpy as jnp, optax
    >>> params = {"w": jnp.zeros((64, 32)), "b": jnp.zeros(32)}
    >>> state_bytes(optax.adam(1e-3), params)  # two f32 moments (2 x 2080 x 4 bytes) and an int32 step count
    16644
  """
  shapes = jax.eval_shape(optimizer.init, params)
  return int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(shapes)))
