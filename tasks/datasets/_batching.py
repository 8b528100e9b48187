"""Sampling batches from device-resident arrays inside jit (no host round trip per step)."""

from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp


def sample_batch(key: jax.Array, data: Mapping[str, jax.Array], batch_size: int) -> dict:
  """Draws `batch_size` examples uniformly with replacement from every array of `data`.

  Args:
    key: a PRNG key.
    data: arrays sharing a leading example axis, e.g. `load("digits", "train")` after
      `jax.device_put`.
    batch_size: a static int.

  Returns:
    The same keys, each `[batch_size, ...]`.

  Example:
    >>> import jax, numpy as np
    >>> data = {"image": np.zeros((10, 8, 8, 1), np.float32), "label": np.arange(10)}
    >>> sample_batch(jax.random.PRNGKey(0), data, 4)["image"].shape
    (4, 8, 8, 1)
  """
  n = jax.tree.leaves(data)[0].shape[0]
  idx = jax.random.randint(key, (batch_size,), 0, n)  # [batch_size]
  return {k: jnp.take(v, idx, axis=0) for k, v in data.items()}


def sample_windows(key: jax.Array, tokens: jax.Array, batch_size: int, length: int) -> jax.Array:
  """Draws `batch_size` random contiguous windows of `length` tokens: `[batch_size, length]`.

  For a language model take `length = seq_len + 1` and use `w[:, :-1]` / `w[:, 1:]`.

  Example:
    >>> import jax, numpy as np
    >>> sample_windows(jax.random.PRNGKey(0), np.arange(100, dtype=np.uint8), 3, 9).shape
    (3, 9)
  """
  tokens = jnp.asarray(tokens)
  if tokens.shape[0] < length:
    raise ValueError(f"need at least {length} tokens, got {tokens.shape[0]}")
  starts = jax.random.randint(key, (batch_size,), 0, tokens.shape[0] - length + 1)
  return jax.vmap(lambda s: jax.lax.dynamic_slice_in_dim(tokens, s, length))(starts)
