"""A guard shared by every learned update rule: skip steps with non-finite inputs."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def skip_nonfinite(opt: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
  """Skips steps whose gradients (or `loss`) are not finite: zero updates, state unchanged.

  Unlike `optax.apply_if_finite` it never gives up after repeated failures, and it selects
  with `jnp.where` (no `lax.cond`), so it batches cleanly under `vmap`. VeLO's, Celo's and
  Celo-Adam's `make` apply it; AdafacMLP selects inside its fused pass instead, which saves
  the extra pass over the state (`_leaf.leaf_update(ok=...)`).

  Example:
    opt = skip_nonfinite(lopt.make(theta, num_steps=1000))
  """
  inner = optax.with_extra_args_support(opt)

  def update(updates, state, params=None, **extra):
    checked = [updates] + ([extra["loss"]] if extra.get("loss") is not None else [])
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(checked)]
    ok = jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)
    new_updates, new_state = inner.update(updates, state, params, **extra)
    new_updates = jax.tree.map(lambda u: jnp.where(ok, u, jnp.zeros_like(u)), new_updates)
    new_state = jax.tree.map(lambda a, b: jnp.where(ok, a, b), new_state, state)
    return new_updates, new_state

  return optax.GradientTransformationExtraArgs(inner.init, update)
