"""The learned-optimizer contract.

A learned optimizer is meta-parameters (`theta`, a pytree of float32 arrays) plus a function
that makes an optax transform from them. Implementations are frozen dataclasses whose
fields are architecture hyperparameters (hashable by value, so they can be jit-static):

    lopt = VeLO(lstm_hidden_size=512, param_inits=256)
    theta = lopt.init_meta(jax.random.PRNGKey(0))
    opt = lopt.make(theta, num_steps=1000)       # optax.GradientTransformationExtraArgs
    state = opt.init(params)
    updates, state = opt.update(grads, state, params, loss=loss)

State is a NamedTuple of arrays only (step counters are int32 arrays).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import jax
import optax

Theta = Any


@runtime_checkable
class LearnedOptimizer(Protocol):
  """Meta-parameters plus a maker of optax transforms."""

  name: str

  def init_meta(self, key: jax.Array) -> Theta:
    """Returns freshly initialised meta-parameters."""
    ...

  def make(self, theta: Theta, *, num_steps: int | None = None, **options: Any
           ) -> optax.GradientTransformationExtraArgs:
    """Returns the optax transform; `update(..., loss=...)` takes the current loss."""
    ...
