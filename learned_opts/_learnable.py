"""Hyperparameter-only learned rules: Adam and SGD-with-momentum with meta-learned hparams.

As in learned_optimization's `LearnableAdam` / `LearnableSGDM`, theta holds unconstrained
reparameterisations: `log_lr`, `one_minus_beta = log(1 - beta)`, `log_epsilon`. `make(theta)`
is differentiable in theta and cheap, which makes these the test bed for meta-training.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import optax

from lopt.learned_opts._loss import scalar_loss

from lopt.learned_opts import _nn


class LearnableAdamState(NamedTuple):
  mu: Any               # float32, like params
  nu: Any               # float32, like params
  count: jax.Array      # int32 []


class LearnableSGDMState(NamedTuple):
  trace: Any            # float32, like params
  count: jax.Array      # int32 []


def _finite_guard(grads, new_state, old_state, updates, params):
  """Non-finite gradients skip the step: zero update, state unchanged."""
  ok = _nn.tree_all_finite(grads)
  ref = params if params is not None else grads
  updates = jax.tree.map(lambda u, r: jnp.where(ok, u, 0.0).astype(r.dtype), updates, ref)
  return updates, _nn.tree_select(ok, new_state, old_state)


@dataclasses.dataclass(frozen=True)
class LearnableAdam:
  """Adam whose learning rate, betas and epsilon are meta-parameters.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> lopt = LearnableAdam(initial_lr=0.1)
    >>> opt = lopt.make(lopt.init_meta(jax.random.PRNGKey(0)))
    >>> params = {"w": jnp.ones(3)}
    >>> updates, _ = opt.update(params, opt.init(params), params, loss=jnp.float32(0.0))
    >>> [round(float(u), 3) for u in updates["w"]]
    [-0.1, -0.1, -0.1]
  """

  initial_lr: float = 1e-3
  initial_beta1: float = 0.9
  initial_beta2: float = 0.999
  initial_epsilon: float = 1e-8

  name: ClassVar[str] = "learnable_adam"

  def init_meta(self, key: jax.Array) -> dict[str, jax.Array]:
    del key
    f = lambda x: jnp.asarray(x, jnp.float32)
    return {"log_lr": f(jnp.log(self.initial_lr)),
            "one_minus_beta1": f(jnp.log1p(-self.initial_beta1)),
            "one_minus_beta2": f(jnp.log1p(-self.initial_beta2)),
            "log_epsilon": f(jnp.log(self.initial_epsilon))}

  def make(self, theta: Any, *, num_steps: int | None = None, **options: Any
           ) -> optax.GradientTransformationExtraArgs:
    """Returns Adam with the hparams in theta; `num_steps` is accepted and unused."""
    del num_steps
    _nn.no_options(type(self).__name__, options)
    lr = jnp.exp(theta["log_lr"])
    b1 = 1.0 - jnp.exp(theta["one_minus_beta1"])
    b2 = 1.0 - jnp.exp(theta["one_minus_beta2"])
    eps = jnp.exp(theta["log_epsilon"])

    def init_fn(params):
      z = lambda p: jnp.zeros(p.shape, jnp.float32)
      return LearnableAdamState(jax.tree.map(z, params), jax.tree.map(z, params),
                                jnp.zeros([], jnp.int32))

    def update_fn(grads, state, params=None, **extra):
      scalar_loss(type(self).__name__, extra.get("loss"), extra)  # checked, unused
      g32 = _nn.f32(grads)
      mu = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, state.mu, g32)
      nu = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * g * g, state.nu, g32)
      count = state.count + 1
      t = count.astype(jnp.float32)
      c1, c2 = 1.0 - b1 ** t, 1.0 - b2 ** t
      updates = jax.tree.map(lambda m, v: -lr * (m / c1) / (jnp.sqrt(v / c2) + eps), mu, nu)
      return _finite_guard(grads, LearnableAdamState(mu, nu, count), state, updates, params)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


@dataclasses.dataclass(frozen=True)
class LearnableSGDM:
  """SGD with momentum whose learning rate and momentum are meta-parameters.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> lopt = LearnableSGDM(initial_lr=0.5)
    >>> opt = lopt.make(lopt.init_meta(jax.random.PRNGKey(0)))
    >>> params = {"w": jnp.ones(2)}
    >>> updates, _ = opt.update(params, opt.init(params), params)
    >>> [round(float(u), 3) for u in updates["w"]]
    [-0.5, -0.5]
  """

  initial_lr: float = 0.01
  initial_momentum: float = 0.9

  name: ClassVar[str] = "learnable_sgdm"

  def init_meta(self, key: jax.Array) -> dict[str, jax.Array]:
    del key
    return {"log_lr": jnp.asarray(jnp.log(self.initial_lr), jnp.float32),
            "one_minus_momentum": jnp.asarray(jnp.log1p(-self.initial_momentum), jnp.float32)}

  def make(self, theta: Any, *, num_steps: int | None = None, **options: Any
           ) -> optax.GradientTransformationExtraArgs:
    """Heavy-ball momentum: `trace = mom * trace + g; update = -lr * trace`."""
    del num_steps
    _nn.no_options(type(self).__name__, options)
    lr = jnp.exp(theta["log_lr"])
    mom = 1.0 - jnp.exp(theta["one_minus_momentum"])

    def init_fn(params):
      return LearnableSGDMState(jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params),
                                jnp.zeros([], jnp.int32))

    def update_fn(grads, state, params=None, **extra):
      scalar_loss(type(self).__name__, extra.get("loss"), extra)  # checked, unused
      trace = jax.tree.map(lambda t, g: mom * t + g, state.trace, _nn.f32(grads))
      updates = jax.tree.map(lambda t: -lr * t, trace)
      return _finite_guard(grads, LearnableSGDMState(trace, state.count + 1), state, updates,
                           params)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
