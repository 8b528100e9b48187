"""Step hooks: how an optimizer that changes the loop's schedule talks to `train`.

The loop knows optax only. An optimizer that needs more (nowcasting skips the backward pass
before a nowcast step, and runs that step as its own compiled call) hands `train(hooks=...)`
an object with these two methods; `lopt.learned_opts.nino.NOWCAST_HOOKS` is one, and
`lopt.optimizers.make_optimizer` returns it as `info.hooks`. The protocol is structural:
implementers do not import `lopt.training`.

Example:
  >>> import jax.numpy as jnp
  >>> class EveryStep:
  ...   def needs_gradients(self, opt_state): return jnp.asarray(True)
  ...   def schedule(self, opt_state): return None
  >>> isinstance(EveryStep(), StepHooks)
  True
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import jax

__all__ = ["StepHooks"]


@runtime_checkable
class StepHooks(Protocol):
  """What `train` asks of an optimizer with a schedule of its own."""

  def needs_gradients(self, opt_state: Any) -> jax.Array:
    """bool[] (traced): whether the next update uses gradients (else the loop skips the
    backward pass and passes zeros)."""

  def schedule(self, opt_state: Any) -> tuple[int, int] | None:
    """On the host: `(updates before the next special step, period)` so the loop can run
    that step as its own compiled call, or None when there is no fixed period."""
