"""Celo and Celo-Adam (Moudgil et al., TMLR 2025) as optax transforms.

* `Celo`: a learned LSTM scheduler (input: training fraction + loss EMAs, 18 features) scales a
  learned per-parameter MLP update rule (VeLO's 30 features; one MLP, `param_inits=1`):
  `step = exp(lstm_lr) * 0.1 * d * exp(0.001 m) * 0.001 * rms(p)`.
* `CeloAdam`: the same scheduler sets the learning rate of bias-corrected Adam:
  `lr = exp(lstm_lr) * 0.1 * 0.001`.

Both need `num_steps` (training-fraction and loss-EMA features) and the loss at every step.
Theta matches amoudgl/celo's `theta.state` files key for key.

    >>> import jax, jax.numpy as jnp
    >>> lopt = CeloAdam(lstm_hidden_size=8)
    >>> opt = lopt.make(lopt.init_meta(jax.random.PRNGKey(0)), num_steps=100)
    >>> params = {"w": jnp.ones((3, 2))}
    >>> state = opt.init(params)
    >>> updates, state = opt.update({"w": jnp.ones((3, 2))}, state, params, loss=1.0)
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from lopt.learned_opts._loss import scalar_loss

from lopt.learned_opts._guard import all_finite

from lopt.learned_opts import _accumulators as acc
from lopt.learned_opts import _nn
from lopt.learned_opts import _hyper

CeloState = _hyper.HyperState


@dataclasses.dataclass(frozen=True)
class Celo:
  """Celo with the published configuration (`celo.factory.get_optimizer("celo")`)."""

  lstm_hidden_size: int = 64
  param_inits: int = 1
  ff_hidden_size: int = 4
  ff_hidden_layers: int = 2
  momentum_decays: tuple[float, ...] = (0.9, 0.99, 0.999)
  rms_decays: tuple[float, ...] = (0.999,)
  adafactor_decays: tuple[float, ...] = (0.9, 0.99, 0.999)
  exp_mult: float = 0.001
  step_mult: float = 0.001

  name: str = dataclasses.field(default="celo", init=False)

  def init_meta(self, key: jax.Array) -> dict:
    return _hyper.init_theta_for(self, key, n_lstm_in=18)

  def make(self, theta: Any, *, num_steps: int | None = None, **options: Any
           ) -> optax.GradientTransformationExtraArgs:
    """Returns the transform; `update(grads, state, params, loss=...)` needs params and loss."""
    if options:
      raise TypeError(f"Celo.make got unknown options {sorted(options)}; it takes none.")
    if len(self.rms_decays) != 1:
      raise ValueError("Celo supports exactly one RMS decay, as the reference does.")
    num_steps = _hyper.need_num_steps("Celo", num_steps)
    spec = _hyper.HyperSpec("celo", tuple(self.momentum_decays), tuple(self.rms_decays),
                            tuple(self.adafactor_decays), self.ff_hidden_layers, self.exp_mult,
                            self.step_mult)
    return _hyper.make_transform("Celo", spec, theta, acc.loss_decays(num_steps), num_steps)


class CeloAdamState(NamedTuple):
  count: jax.Array        # int32 []
  mu: Any                 # first moment, parameter-shaped
  nu: Any                 # second moment, parameter-shaped
  lstm_hidden: jax.Array  # [n_leaves, H]
  lstm_cell: jax.Array    # [n_leaves, H]
  loss_means: jax.Array   # [10]
  loss_min: jax.Array     # [10]


@dataclasses.dataclass(frozen=True)
class CeloAdam:
  """Celo's learned scheduler driving Adam (`celo.factory.get_optimizer("celo_adam")`)."""

  lstm_hidden_size: int = 64
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8
  step_mult: float = 0.001

  name: str = dataclasses.field(default="celo_adam", init=False)

  def init_meta(self, key: jax.Array) -> dict:
    return _hyper.init_theta(key, n_lstm_in=18, hidden=self.lstm_hidden_size, param_inits=0,
                             widths=[], ff_hidden=0, ff_layers=0, with_bank=False)

  def make(self, theta: Any, *, num_steps: int | None = None, **options: Any
           ) -> optax.GradientTransformationExtraArgs:
    """Returns the transform; `update(grads, state, params, loss=...)` needs the loss."""
    if options:
      raise TypeError(f"CeloAdam.make got unknown options {sorted(options)}; it takes none.")
    num_steps = _hyper.need_num_steps("CeloAdam", num_steps)
    decays = acc.loss_decays(num_steps)
    b1, b2, eps, step_mult = self.b1, self.b2, self.eps, self.step_mult

    # Not `_hyper.make_transform`: only the scheduler (loss/time features -> LSTM -> one lr per
    # tensor) is Celo's; the update is Adam's, needs no params, and keeps Adam moments
    # instead of HyperState's accumulators, so the shared pieces are the scheduler helpers.
    def init_fn(params):
      n = len(jax.tree_util.tree_leaves(params))
      zeros = lambda: jax.tree_util.tree_map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
      return CeloAdamState(jnp.zeros([], jnp.int32), zeros(), zeros(),
                           *_hyper.scheduler_init(theta, n))

    def update_fn(grads, state, params=None, *, loss=None, **extra):
      del params
      loss = scalar_loss("CeloAdam", loss, extra, required=True)
      loss = jnp.asarray(loss, jnp.float32)
      ok = all_finite(grads, loss)   # else: zero update, state unchanged
      keep = lambda new, old: jnp.where(ok, new, old)
      means, rmin, x = _hyper.time_loss_features(state.count, state.loss_means, state.loss_min,
                                                 loss, decays, num_steps)
      x = x[None]                                                                # [1, 18]
      gl, tree = jax.tree_util.tree_flatten(grads)
      n = len(gl)
      rnn = theta["rnn_params"]
      out, h, c = _nn.mix_lstm(rnn, jnp.tile(x, (n, 1)), state.lstm_hidden, state.lstm_cell)
      lr = jnp.exp((out @ rnn["step_size"]["w"] + rnn["step_size"]["b"])[:, 0]) * 0.1 * step_mult
      t = state.count + 1
      d1, d2 = jnp.float32(b1), jnp.float32(b2)
      bc1 = 1 - b1 ** t
      bc2 = 1 - b2 ** t
      us, mus, nus = [], [], []
      for i, (g, mu, nu) in enumerate(zip(gl, tree.flatten_up_to(state.mu),
                                          tree.flatten_up_to(state.nu))):
        g32 = jnp.clip(g.astype(jnp.float32), -1000.0, 1000.0)
        new_mu = d1 * mu + (1 - d1) * g32          # float32 decays, as the reference's vmap
        new_nu = d2 * nu + (1 - d2) * (g32 * g32)
        step = (new_mu / bc1) * (lr[i] / (eps + jnp.sqrt(new_nu / bc2 + 1e-10)))
        us.append(jnp.where(ok, -step, 0.0).astype(g.dtype))
        mus.append(keep(new_mu, mu))
        nus.append(keep(new_nu, nu))
      un = lambda xs: jax.tree_util.tree_unflatten(tree, xs)
      return un(us), CeloAdamState(keep(t, state.count), un(mus), un(nus), keep(h, state.lstm_hidden),
                                   keep(c, state.lstm_cell), keep(means, state.loss_means),
                                   keep(rmin, state.loss_min))

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
