"""MLPLOpt ("LOLv2"): a per-parameter MLP learned optimizer.

The architecture of learned_optimization's `learned_optimizers/mlp_lopt.py` (Metz et al.,
"Understanding and correcting pathologies in the training of learned optimizers",
arXiv 1810.10180). Per parameter, 19 features: gradient, parameter and momentum at six
decays (each normalised to unit second moment over the tensor) plus an 11-wide tanh
embedding of the step number. An MLP (19 -> 32 -> 32 -> 2) gives a direction `d` and a
magnitude `m`; the step is `d * exp(exp_mult * m) * step_mult`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import optax

from lopt.learned_opts._loss import scalar_loss

from lopt.learned_opts import _nn

_DECAYS = (0.1, 0.5, 0.9, 0.99, 0.999, 0.9999)
_N_FEATURES = 2 + len(_DECAYS) + len(_nn.TIMESCALES)  # 19


class MLPLOptState(NamedTuple):
  """Momentum at each decay (`[*param.shape, 6]`, float32) and the step counter."""
  mom: Any
  iteration: jax.Array  # int32 []


@dataclasses.dataclass(frozen=True)
class MLPLOpt:
  """LOLv2: per-parameter MLP over gradient, parameter, momentum and time features.

  A non-finite gradient skips the step: zero update, state unchanged.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> lopt = MLPLOpt()
    >>> opt = lopt.make(lopt.init_meta(jax.random.PRNGKey(0)))
    >>> params = {"w": jnp.ones((3, 2))}
    >>> state = opt.init(params)
    >>> updates, state = opt.update(params, state, params, loss=jnp.float32(1.0))
    >>> updates["w"].shape
    (3, 2)
  """

  exp_mult: float = 0.001
  step_mult: float = 0.001
  hidden_size: int = 32
  hidden_layers: int = 2

  name: ClassVar[str] = "mlp"

  def init_meta(self, key: jax.Array) -> dict[str, Any]:
    sizes = [self.hidden_size] * self.hidden_layers + [2]
    return _nn.mlp_init(key, _N_FEATURES, sizes)

  def make(self, theta: Any, *, num_steps: int | None = None, **options: Any
           ) -> optax.GradientTransformationExtraArgs:
    """Returns the optax transform. `num_steps` is accepted and unused (time is absolute)."""
    del num_steps
    _nn.no_options(type(self).__name__, options)
    decays = jnp.asarray(_DECAYS, jnp.float32)

    def init_fn(params):
      mom = jax.tree.map(lambda p: jnp.zeros(p.shape + (len(_DECAYS),), jnp.float32), params)
      return MLPLOptState(mom=mom, iteration=jnp.zeros([], jnp.int32))

    def update_fn(grads, state, params=None, **extra):
      scalar_loss("MLPLOpt", extra.get("loss"), extra)  # checked, not a feature here
      _nn.require_params(params, "MLPLOpt")
      g32 = _nn.f32(grads)
      mom = jax.tree.map(lambda m, g: _nn.rolling_moments(m, g, decays), state.mom, g32)
      time_feat = _nn.tanh_embedding(state.iteration)  # [11]

      def step_one(p, g, m):
        shape = p.shape
        p = jnp.asarray(p, jnp.float32).reshape(shape or (1,))
        g = g.reshape(p.shape)
        m = m.reshape(p.shape + (len(_DECAYS),))
        x = jnp.concatenate([g[..., None], p[..., None], m], axis=-1)  # [*shape, 8]
        x = _nn.second_moment_normalizer(x, axis=tuple(range(p.ndim)))
        t = jnp.broadcast_to(time_feat, p.shape + time_feat.shape)
        out = _nn.mlp(theta, jnp.concatenate([x, t], axis=-1))  # [*shape, 2]
        step = out[..., 0] * jnp.exp(out[..., 1] * self.exp_mult) * self.step_mult
        return (-step).reshape(shape)

      updates = jax.tree.map(step_one, params, g32, mom)
      ok = _nn.tree_all_finite(g32)
      updates = jax.tree.map(lambda u, p: jnp.where(ok, u, 0.0).astype(p.dtype), updates, params)
      new_state = MLPLOptState(mom=_nn.tree_select(ok, mom, state.mom),
                               iteration=state.iteration + ok.astype(jnp.int32))
      return updates, new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
