"""A guard shared by every learned update rule: skip steps with non-finite inputs."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from lopt.learned_opts import _nn
from lopt.learned_opts._loss import scalar_loss


def all_finite(grads: Any, loss: Any = None) -> jax.Array:
  """True (a bool scalar) when every gradient entry and the loss (if given) are finite."""
  return _nn.tree_all_finite(grads, loss)  # a None loss has no leaves


def skip_nonfinite(opt: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
  """Skips steps whose gradients (or `loss`) are not finite: zero updates, state unchanged.

  Unlike `optax.apply_if_finite` it never gives up after repeated failures, and it selects
  with `jnp.where` (no `lax.cond`), so it batches cleanly under `vmap`. The built-in rules
  (AdafacMLP, VeLO, Celo, Celo-Adam) do the same check inline with `all_finite` and select
  inside their fused passes (`_leaf.leaf_update(ok=...)`), which saves the extra pass over the
  state that this wrapper costs; use it for other transforms.

  Example:
    opt = skip_nonfinite(lopt.make(theta, num_steps=1000))
  """
  inner = optax.with_extra_args_support(opt)

  def update(updates, state, params=None, **extra):
    ok = all_finite(updates, scalar_loss("skip_nonfinite", extra.get("loss"), extra))
    new_updates, new_state = inner.update(updates, state, params, **extra)
    new_updates = jax.tree.map(lambda u: jnp.where(ok, u, jnp.zeros_like(u)), new_updates)
    new_state = jax.tree.map(lambda a, b: jnp.where(ok, a, b), new_state, state)
    return new_updates, new_state

  return optax.GradientTransformationExtraArgs(inner.init, update)
