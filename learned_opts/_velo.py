"""VeLO (learned_optimization's `HyperV2`) as an optax transform.

A per-tensor LSTM (hidden 512) reads 30 features per tensor (training fraction, loss EMAs,
momentum/RMS statistics, rank) and emits, per tensor, 256 coefficients that mix a bank of
per-parameter MLPs (30 -> 4 -> 4 -> 3) plus a learning-rate multiplier. Theta has the
reference's haiku layout, so VeLO-format checkpoints (`{"params": theta, ...}` msgpack) load
key for key.

`num_steps` is required (it sets the training-fraction and loss-EMA features). Above
`max_training_steps` (150k, as `prefab.LearnedOptimizer`) the transform does what the reference
does: it accumulates `k = ceil(num_steps / max_training_steps)` gradients (and losses) and
applies VeLO, made for `num_steps // k` steps, once every `k` calls (zero updates between).

    >>> import jax, jax.numpy as jnp
    >>> lopt = VeLO(lstm_hidden_size=8, param_inits=4)
    >>> opt = lopt.make(lopt.init_meta(jax.random.PRNGKey(0)), num_steps=100)
    >>> params = {"w": jnp.ones((3, 2))}
    >>> state = opt.init(params)
    >>> updates, state = opt.update({"w": jnp.ones((3, 2))}, state, params, loss=1.0)
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from lopt.learned_opts._loss import scalar_loss


from lopt.learned_opts import _accumulators as acc
from lopt.learned_opts import _hyper

VeLOState = _hyper.HyperState


class AccumulateState(NamedTuple):
  """Gradient-accumulation wrapper state (used above `max_training_steps`)."""
  inner: Any
  grad_sum: Any
  loss_sum: jax.Array   # f32 []
  mini_step: jax.Array  # int32 [], calls since the last applied step


def accumulate(inner: optax.GradientTransformationExtraArgs, every: int
               ) -> optax.GradientTransformationExtraArgs:
  """learned_optimization's `GradientAccumulator`: average `every` grads and losses, then
  apply `inner` once; zero updates in between."""

  def init_fn(params):
    return AccumulateState(inner.init(params), jax.tree_util.tree_map(jnp.zeros_like, params),
                           jnp.zeros([], jnp.float32), jnp.zeros([], jnp.int32))

  def update_fn(grads, state, params=None, *, loss=None, **extra):
    loss = scalar_loss("VeLO", loss, extra, required=True)
    extra.pop("value", None)
    gsum = jax.tree_util.tree_map(jnp.add, state.grad_sum, grads)
    lsum = state.loss_sum + loss
    step = state.mini_step + 1

    def apply(_):
      g = jax.tree_util.tree_map(lambda x: x / every, gsum)
      u, s = inner.update(g, state.inner, params, loss=lsum / every, **extra)
      return u, AccumulateState(s, jax.tree_util.tree_map(jnp.zeros_like, gsum),
                                jnp.zeros_like(lsum), jnp.zeros_like(step))

    def wait(_):
      return (jax.tree_util.tree_map(jnp.zeros_like, grads),
              AccumulateState(state.inner, gsum, lsum, step))

    return jax.lax.cond(step % every == 0, apply, wait, None)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


@dataclasses.dataclass(frozen=True)
class VeLO:
  """VeLO / HyperV2. Defaults are the published VeLO size (LSTM 512, 256 MLPs in the bank).

  `use_bugged_next_lstm_state` / `use_bugged_loss_features` reproduce the reference flags for
  older checkpoints (VeLO's large-scale configs use False for both, the default here).
  """

  lstm_hidden_size: int = 512
  param_inits: int = 256
  ff_hidden_size: int = 4
  ff_hidden_layers: int = 2
  momentum_decays: tuple[float, ...] = (0.9, 0.99, 0.999)
  rms_decays: tuple[float, ...] = (0.999,)
  adafactor_decays: tuple[float, ...] = (0.9, 0.99, 0.999)
  exp_mult: float = 0.001
  step_mult: float = 0.001
  use_bugged_next_lstm_state: bool = False
  use_bugged_loss_features: bool = False
  max_training_steps: int = 150_000

  name: str = dataclasses.field(default="velo", init=False)

  def _spec(self) -> _hyper.HyperSpec:
    if len(self.rms_decays) != 1:
      raise ValueError("VeLO supports exactly one RMS decay, as the reference does.")
    return _hyper.HyperSpec("velo", tuple(self.momentum_decays), tuple(self.rms_decays),
                            tuple(self.adafactor_decays), self.ff_hidden_layers, self.exp_mult,
                            self.step_mult, self.use_bugged_next_lstm_state)

  def init_meta(self, key: jax.Array) -> dict:
    return _hyper.init_theta_for(self, key, n_lstm_in=30)

  def make(self, theta: Any, *, num_steps: int | None = None, **options: Any
           ) -> optax.GradientTransformationExtraArgs:
    """Returns the transform; `update(grads, state, params, loss=...)` needs params and loss."""
    if options:
      raise TypeError(f"VeLO.make got unknown options {sorted(options)}; it takes none.")
    num_steps = int(_hyper.need_num_steps("VeLO", num_steps))  # int(): no traced length here
    if num_steps > self.max_training_steps:
      every = math.ceil(num_steps / self.max_training_steps)
      return accumulate(self._make(theta, num_steps // every), every)
    return self._make(theta, num_steps)

  def _make(self, theta: Any, num_steps: int) -> optax.GradientTransformationExtraArgs:
    decays = acc.loss_decays(10 if self.use_bugged_loss_features else num_steps)
    return _hyper.make_transform("VeLO", self._spec(), theta, decays, num_steps)
