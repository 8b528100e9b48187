"""RNNMLP: a per-tensor LSTM that conditions a per-parameter MLP.

The architecture of learned_optimization's `learned_optimizers/rnn_mlp_lopt.py` (Metz et al.,
"Tasks, stability, architecture, and compute", arXiv 2009.11243):

* gradients pass a dynamic clipper (EMA of the gradient RMS, clip at 10x);
* momentum and RMS at five decays (0.5 ... 0.9999);
* per tensor, 18 summary features + 16 values sent up by the MLP + 18 values mixed across
  tensors at the previous step feed an LSTM (tensors form its batch);
* per parameter, 37 features + 17 values from the LSTM feed an MLP (54 -> 32 -> 32 -> 18)
  whose first two outputs give the step `d * exp(magnitude_rate * m) * step_multiplier` and
  whose remaining 16, averaged over the tensor, go back to the LSTM next step.

The reference's `is_valid` path (validation-loss updates) is not exposed: the validation loss
feature stays at its initial value, as in a training-only run of the reference.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lopt.learned_opts._loss import scalar_loss

from lopt.learned_opts import _nn

_TENSOR_FEATURES = 18
_MLP_FEATURES = 37


class LossNormState(NamedTuple):
  mean: jax.Array     # f32 []
  var: jax.Array      # f32 []
  updates: jax.Array  # int32 []


class RNNMLPState(NamedTuple):
  """Accumulators (`[*shape, n_decays]`), LSTM state (`[n_tensors, H]`) and loss/clip stats."""
  mom: Any
  rms: Any
  iteration: jax.Array          # int32 []
  lstm_hidden: jax.Array        # [n_tensors, H]
  lstm_cell: jax.Array          # [n_tensors, H]
  from_mlp: Any                 # per leaf [from_mlp_size]
  from_lstm: jax.Array          # [from_lstm_size]
  train_loss: LossNormState
  valid_loss: LossNormState
  clip_iteration: jax.Array     # f32 []
  clip_value: jax.Array         # f32 []


def _loss_norm_init() -> LossNormState:
  return LossNormState(jnp.zeros([], jnp.float32), jnp.zeros([], jnp.float32),
                       jnp.zeros([], jnp.int32))


def _loss_norm_next(s: LossNormState, loss: jax.Array, decay: float) -> LossNormState:
  mean = decay * s.mean + (1.0 - decay) * loss
  var = decay * s.var + (1.0 - decay) * jnp.square(mean - loss)
  return LossNormState(mean, var, s.updates + 1)


def _loss_norm_weight(s: LossNormState, loss: jax.Array, decay: float) -> jax.Array:
  c = 1.0 / (1.0 - decay ** s.updates.astype(jnp.float32) + 1e-8)
  return jnp.clip((loss - s.mean * c) * jax.lax.rsqrt(s.var * c + 1e-8), -5.0, 5.0)


def _loss_norm_mean(s: LossNormState, decay: float) -> jax.Array:
  # Before any update the mean is 0; guard it, as XLA may fold `1 - 1 + 1e-8` to 0 (0/0).
  t = jnp.maximum(s.updates, 1).astype(jnp.float32)
  return jnp.where(s.updates > 0, s.mean / (1.0 - decay ** t + 1e-8), 0.0)


def _clip_log_abs(x: jax.Array) -> jax.Array:
  return jnp.clip(jnp.log(1e-8 + jnp.abs(x)), -5.0, 5.0)


def _norm(x: jax.Array) -> jax.Array:
  return jnp.sqrt(jnp.sum(jnp.square(x)))


@dataclasses.dataclass(frozen=True)
class RNNMLP:
  """Per-tensor LSTM + per-parameter MLP learned optimizer (learned_optimization RNNMLPLOpt).

  `update` needs `loss=` (train-loss features). A non-finite gradient or loss skips the step:
  zero update, state unchanged.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> lopt = RNNMLP(lstm_hidden_size=8)
    >>> opt = lopt.make(lopt.init_meta(jax.random.PRNGKey(0)))
    >>> params = {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}
    >>> state = opt.init(params)
    >>> updates, state = opt.update(params, state, params, loss=jnp.float32(1.0))
    >>> updates["b"].shape
    (2,)
  """

  step_multiplier: float = 0.001
  magnitude_rate: float = 0.001
  hidden_size: int = 32
  hidden_layer: int = 2
  from_mlp_size: int = 16
  from_lstm_size: int = 18
  lstm_to_ff: int = 17
  lstm_hidden_size: int = 64
  decays: tuple[float, ...] = (0.5, 0.9, 0.99, 0.999, 0.9999)

  name: ClassVar[str] = "rnn_mlp"

  def init_meta(self, key: jax.Array) -> dict[str, Any]:
    k1, k2, k3, k4, k5, k6 = jax.random.split(key, 6)
    h = self.lstm_hidden_size
    rnn_in = _TENSOR_FEATURES + self.from_lstm_size + self.from_mlp_size
    mlp_in = _MLP_FEATURES + self.lstm_to_ff
    return {
        "initial_from_lstm": _nn.variance_scaling(k1, (self.from_lstm_size,)),
        "initial_from_mlp": _nn.variance_scaling(k2, (self.from_mlp_size,)),
        "lstm_init_state": {"hidden": jnp.zeros((1, h), jnp.float32),
                            "cell": jnp.zeros((1, h), jnp.float32)},
        "rnn_params": {"rnn/linear": _nn.linear_init(k3, rnn_in + h, 4 * h)},
        "rnn_to_ff_params": {"rnn_to_ff": _nn.linear_init(k4, h, self.lstm_to_ff)},
        "rnn_to_in_params": {"rnn_to_in": _nn.linear_init(k5, h, self.from_lstm_size)},
        "ffmod_params": _nn.mlp_init(
            k6, mlp_in, [self.hidden_size] * self.hidden_layer + [2 + self.from_mlp_size]),
    }

  def make(self, theta: Any, *, num_steps: int | None = None, **options: Any
           ) -> optax.GradientTransformationExtraArgs:
    """Returns the optax transform. `num_steps` is accepted and unused (time is absolute)."""
    del num_steps
    _nn.no_options(type(self).__name__, options)
    decays = jnp.asarray(self.decays, jnp.float32)
    nd = len(self.decays)
    clip_alpha, clip_mult = 0.99, 10.0
    train_decay, valid_decay = 0.9, 0.95

    def init_fn(params):
      n = len(jax.tree.leaves(params))
      h0 = theta["lstm_init_state"]
      zeros_nd = lambda p: jnp.zeros(p.shape + (nd,), jnp.float32)
      return RNNMLPState(
          mom=jax.tree.map(zeros_nd, params),
          rms=jax.tree.map(zeros_nd, params),
          iteration=jnp.zeros([], jnp.int32),
          lstm_hidden=jnp.tile(h0["hidden"], (n, 1)),
          lstm_cell=jnp.tile(h0["cell"], (n, 1)),
          from_mlp=jax.tree.map(lambda _: theta["initial_from_mlp"], params),
          from_lstm=theta["initial_from_lstm"],
          train_loss=_loss_norm_init(),
          valid_loss=_loss_norm_init(),
          clip_iteration=jnp.ones([], jnp.float32),
          clip_value=jnp.asarray(1.0 - clip_alpha, jnp.float32))

    def tensor_features(m, r, g, v, from_mlp, from_lstm, train_feat, valid_feat):
      feats = {}
      mean_m = jnp.mean(m)
      feats["mean_ms_mag"], feats["mean_ms_sign"] = _clip_log_abs(mean_m), jnp.sign(mean_m)
      feats["var_ms"] = _clip_log_abs(jnp.mean(jnp.square(m - mean_m)))
      mean_r = jnp.mean(r)
      feats["mean_rms"], feats["mean_sign"] = _clip_log_abs(mean_r), jnp.sign(mean_r)
      feats["var_rms"] = _clip_log_abs(jnp.mean(jnp.square(r - mean_r)))
      mean_v = jnp.mean(v)
      feats["mean_v_mag"], feats["mean_v_sign"] = _clip_log_abs(mean_v), jnp.sign(mean_v)
      feats["var_v"] = _clip_log_abs(jnp.mean(jnp.square(v - mean_v)))
      feats["norm_weight"] = _clip_log_abs(_norm(v))
      feats["g_norm"] = _clip_log_abs(_norm(g))
      feats["is_scalar"] = jnp.float32(1.0 if v.ndim == 0 else -1.0)
      dims = (list(v.shape) + [1] * 4)[:4]
      for j in range(4):
        feats[f"shape_{j}"] = jnp.float32(np.log(dims[j]) - 1.0)
      feats["train_loss_feat"], feats["valid_loss_feat"] = train_feat, valid_feat
      feats["from_mlp"], feats["from_lstm"] = from_mlp, from_lstm
      return jnp.concatenate([jnp.reshape(feats[k], (-1,)) for k in sorted(feats)])  # [52]

    def mlp_features(m, r, g, v, ff_in, iteration, n_tensors):
      n = int(np.prod(v.shape))
      flat_g, flat_v = g.reshape(n, 1), v.reshape(n, 1)
      m, r = m.reshape(n, nd), r.reshape(n, nd)
      rsqrt = jax.lax.rsqrt(r + 1e-6)
      per = {"flat_g": flat_g, "flat_v": flat_v, "log_abs_v": jnp.log(jnp.abs(flat_v) + 1e-8),
             "m": m, "rms_scaled_g": m * rsqrt, "rms": r, "rsqrt": rsqrt}
      x = _nn.second_moment_normalizer(
          jnp.concatenate([per[k] for k in sorted(per)], axis=1), axis=0)  # [n, 23]
      tiled = jnp.concatenate([
          _nn.sin_embedding(iteration),                       # [11]
          jnp.reshape(np.log(float(n_tensors)) - 1.0, (1,)),
          jnp.reshape(jnp.log(_norm(flat_v) + 1e-8), (1,)),
          jnp.reshape(np.log(float(n)), (1,)),
          ff_in,                                                 # [lstm_to_ff]
      ]).astype(jnp.float32)
      return jnp.concatenate([x, jnp.broadcast_to(tiled, (n,) + tiled.shape)], axis=1)

    def update_fn(grads, state, params=None, *, loss=None, **extra):
      _nn.require_params(params, "RNNMLP")
      loss = scalar_loss("RNNMLP", loss, extra, required=True)
      loss = jnp.asarray(loss, jnp.float32)
      g32, p32 = _nn.f32(grads), _nn.f32(params)
      leaves_p, treedef = jax.tree.flatten(p32)

      train_loss = _loss_norm_next(state.train_loss, loss, train_decay)
      train_feat = _loss_norm_weight(train_loss, loss, train_decay)
      valid_feat = _loss_norm_weight(train_loss, _loss_norm_mean(state.valid_loss, valid_decay),
                                     train_decay)

      # Dynamic gradient clipping: clip to 10x a bias-corrected EMA of the gradient RMS.
      clip_amount = state.clip_value / (1.0 - clip_alpha ** state.clip_iteration) * clip_mult
      g32 = jax.tree.map(lambda g: jnp.clip(g, -clip_amount, clip_amount), g32)
      leaves_g = jax.tree.leaves(g32)
      avg_sq = sum(jnp.mean(jnp.square(g)) for g in leaves_g) / len(leaves_g)
      clip_value = state.clip_value * clip_alpha + jnp.sqrt(1e-8 + avg_sq) * (1.0 - clip_alpha)

      mom = jax.tree.map(lambda m, g: _nn.rolling_moments(m, g, decays), state.mom, g32)
      rms = jax.tree.map(lambda r, g: _nn.rolling_moments(r, g * g, decays), state.rms, g32)
      leaves_m, leaves_r = treedef.flatten_up_to(mom), treedef.flatten_up_to(rms)
      leaves_fm = treedef.flatten_up_to(state.from_mlp)

      rnn_in = jnp.stack([
          tensor_features(m, r, g, v, fm, state.from_lstm, train_feat, valid_feat)
          for m, r, g, v, fm in zip(leaves_m, leaves_r, leaves_g, leaves_p, leaves_fm)])
      hidden, cell = _nn.lstm(theta["rnn_params"]["rnn/linear"], rnn_in,
                                state.lstm_hidden, state.lstm_cell)  # [n_tensors, H]
      from_lstm = jnp.mean(_nn.linear(theta["rnn_to_in_params"]["rnn_to_in"], hidden), axis=0)
      ff_in = _nn.linear(theta["rnn_to_ff_params"]["rnn_to_ff"], hidden)  # [n_tensors, 17]

      n_tensors = len(leaves_p)
      updates, from_mlp = [], []
      for i, (m, r, g, v) in enumerate(zip(leaves_m, leaves_r, leaves_g, leaves_p)):
        feats = mlp_features(m, r, g, v, ff_in[i], state.iteration, n_tensors)
        out = _nn.mlp(theta["ffmod_params"], feats)  # [n, 2 + from_mlp_size]
        step = out[:, 0] * jnp.exp(out[:, 1] * self.magnitude_rate) * self.step_multiplier
        updates.append(-step.reshape(v.shape))
        from_mlp.append(jnp.mean(out[:, 2:], axis=0))

      ok = _nn.tree_all_finite(grads, loss)
      new = RNNMLPState(
          mom=mom, rms=rms, iteration=state.iteration + 1, lstm_hidden=hidden, lstm_cell=cell,
          from_mlp=treedef.unflatten(from_mlp), from_lstm=from_lstm, train_loss=train_loss,
          valid_loss=state.valid_loss, clip_iteration=state.clip_iteration + 1.0,
          clip_value=clip_value)
      new = _nn.tree_select(ok, new, state)
      updates = jax.tree.map(lambda u, p: jnp.where(ok, u, 0.0).astype(p.dtype),
                             treedef.unflatten(updates), params)
      return updates, new

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
