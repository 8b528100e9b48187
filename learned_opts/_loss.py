"""The loss a learned update rule reads: `loss=` (lopt's name) or `value=` (optax's name).

optax's value-aware transforms (`reduce_on_plateau`, `scale_by_zoom_linesearch`,
`polyak_sgd`) take the objective as `value=`; the learned rules accept either, so one
`opt.update(grads, state, params, value=loss)` call feeds a whole `optax.chain`.

    >>> import jax.numpy as jnp
    >>> float(scalar_loss("Celo", None, {"value": jnp.float32(2.0)}))
    2.0
    >>> scalar_loss("Celo", jnp.ones(3), {})
    Traceback (most recent call last):
    ...
    ValueError: Celo: the loss must be a scalar, got shape (3,); pass the mean over the batch (e.g. loss.mean())
"""

from __future__ import annotations

from typing import Any

import numpy as np


def scalar_loss(name: str, loss: Any, extra: dict[str, Any], *, required: bool = False) -> Any:
  """`loss`, else `extra["value"]`; checked to be a scalar (a static shape check, jit-safe).

  Raises:
    ValueError: `required` and neither was given, or the loss is not a scalar.
  """
  if loss is None:
    loss = extra.get("value")
  if loss is None:
    if required:
      raise ValueError(f"{name} needs params and the current loss: update(grads, state, "
                       "params, loss=loss) (or value=loss, optax's name).")
    return None
  if np.ndim(loss) != 0:
    raise ValueError(f"{name}: the loss must be a scalar, got shape {tuple(np.shape(loss))}; "
                     "pass the mean over the batch (e.g. loss.mean())")
  return loss
