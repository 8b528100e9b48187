"""Optimizer-state memory: the bytes of `opt.init(params)`, against Adam's.

Shapes only (`jax.eval_shape`): nothing is allocated, so this works for states far larger
than the machine's memory (e.g. Shampoo's preconditioners on a big model).

Example:
  >>> import jax.numpy as jnp, optax
  >>> params = {"w": jnp.zeros([10, 10])}
  >>> state_bytes(optax.adam(1e-3), params)   # mu and nu (2 x 400 bytes) + an int32 count
  804
  >>> state_bytes(optax.sgd(1e-3), params)
  0
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import numpy as np
import optax


def tree_bytes(tree: Any) -> int:
  """Bytes of every array leaf of `tree` (arrays or `jax.ShapeDtypeStruct`s)."""
  return int(sum(int(np.prod(x.shape, dtype=np.int64)) * np.dtype(x.dtype).itemsize
                 for x in jax.tree.leaves(tree) if hasattr(x, "shape")))


def state_bytes(tx: optax.GradientTransformation, params: Any) -> int:
  """Bytes of the optimizer state `tx.init(params)` (computed from shapes only)."""
  return tree_bytes(jax.eval_shape(tx.init, params))


def state_memory(params: Any, transforms: Mapping[str, optax.GradientTransformation]
                 ) -> dict[str, dict]:
  """State bytes of each transform, and as a multiple of the parameters' and of Adam's.

  Args:
    params: the parameters (e.g. `task.init(key)`), or their `jax.eval_shape`.
    transforms: name -> optax transform (any: a Shampoo transform works the same way).

  Returns:
    name -> `{"state_bytes", "x_params", "x_adam"}`, plus `"params"` -> `{"bytes"}`.
  """
  p_bytes = tree_bytes(params)
  adam = state_bytes(optax.adam(1e-3), params)
  out: dict[str, dict] = {"params": {"bytes": p_bytes}}
  for name, tx in transforms.items():
    b = state_bytes(tx, params)
    out[name] = {"state_bytes": b, "x_params": b / max(p_bytes, 1), "x_adam": b / max(adam, 1)}
  return out
