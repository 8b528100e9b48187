"""The shared update of HyperV2-style learned optimizers (VeLO and Celo).

One step, for a pytree of parameters:

1. the loss goes into a 10-EMA buffer, giving 9 loss features;
2. a per-tensor feature vector (VeLO: 30 = time, loss, moment statistics, rank; Celo: 18 =
   time, loss) runs through mix layers and an LSTM whose batch axis is the tensors;
3. the LSTM output gives, per tensor, mixing coefficients over a bank of per-parameter MLPs
   and a learning-rate multiplier;
4. each tensor's mixed MLP maps 30 normalised per-parameter features to a step.

Written after learned_optimization's `hyper_v2.HyperV2` and amoudgl/celo's `Celo`, quirks
included (dead first mix layer, 3-wide `var_rms`, raw VeLO `lr_mult`, `param_scale` epsilon,
loss features zero for the first two steps).

`make_transform` is the one optax factory of VeLO and Celo; Celo-Adam shares the scheduler
pieces (`scheduler_init`, `time_loss_features`, the LSTM trunk) but not the transform.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lopt.learned_opts import _accumulators as acc
from lopt.learned_opts import _nn
from lopt.learned_opts import _leaf
from lopt.learned_opts._guard import all_finite
from lopt.learned_opts._loss import scalar_loss

# The reference's initial running minimum of the loss EMAs ("no loss seen yet").
_NO_LOSS_YET = 999999999999.0

# Widths of the 14 per-parameter input groups (w0__0 .. w0__13) for (n_mom, n_rms, n_fac).
def ff_widths(nm: int, nr: int, nf: int) -> list[int]:
  return [1, 1, 1, nm, nr, nm, nr, nf, 1, nf, nf, nf, nf, nm]


class HyperState(NamedTuple):
  """State of VeLO / Celo. Accumulators keep the decay axis first (`m: [3, *shape]`)."""
  count: jax.Array        # int32 [], steps taken
  m: Any                  # per leaf [n_mom, *shape]
  rms: Any                # per leaf [n_rms, *shape]
  v_row: Any              # per leaf factored accumulators (see _accumulators.FactoredLeaf)
  v_col: Any
  v_diag: Any
  lstm_hidden: jax.Array  # [n_leaves, H]
  lstm_cell: jax.Array    # [n_leaves, H]
  loss_means: jax.Array   # [10]
  loss_min: jax.Array     # [10]


@dataclasses.dataclass(frozen=True)
class HyperSpec:
  """Static description of one variant (hashable)."""
  variant: str                       # "velo" | "celo"
  momentum_decays: tuple[float, ...]
  rms_decays: tuple[float, ...]
  adafactor_decays: tuple[float, ...]
  hidden_layers: int
  exp_mult: float
  step_mult: float
  bugged_next_lstm_state: bool = False


def _clip_log_abs(v: jax.Array) -> jax.Array:
  return jnp.clip(jnp.log(1e-8 + jnp.abs(v * 10.0)), -5, 5) * 0.5


def velo_tensor_features(p: jax.Array, m: jax.Array, rms: jax.Array, time_loss: jax.Array
                         ) -> jax.Array:
  """HyperV2's per-tensor LSTM input (30): sorted keys fraction_left, loss_features,
  mean_rms, rank, var_m, var_rms. Uses the *previous* m [k, *s] and rms [1, *s]."""
  if p.size <= _leaf.BLOCK:   # exact two-pass statistics, as the reference
    axes = tuple(range(1, m.ndim))
    nmult = jax.lax.rsqrt(jnp.maximum(1e-9, jnp.mean(p ** 2)))
    m = m * nmult
    rms = rms * nmult
    mean_m = jnp.mean(m, axis=axes, keepdims=True)                   # [k, 1...]
    var_m = jnp.mean(jnp.square(m - mean_m), axis=axes)              # [k]
    mean_rms = jnp.mean(rms, axis=axes)                              # [1]
    var_rms = jnp.mean(jnp.square(rms - mean_m), axis=axes)          # [k]: the 3-wide quirk
  else:                        # one blocked pass of sums (large tensors)
    n = float(p.size)
    sp2, sm, sm2, sr, sr2 = _leaf.tensor_moment_sums(p, m, rms)
    nmult = jax.lax.rsqrt(jnp.maximum(1e-9, sp2 / n))
    mu = sm / n                                                      # unscaled mean of m
    var_m = jnp.maximum(sm2 / n - mu * mu, 0.0) * nmult ** 2
    mean_rms = sr / n * nmult
    var_rms = (sr2 / n - 2 * (sr / n) * mu + mu * mu) * nmult ** 2   # E[(rms - mean_m)^2]
  n_rank = int(np.sum(np.asarray(p.shape) > 1))
  rank = jax.nn.one_hot(n_rank, 5, dtype=jnp.float32)
  return jnp.concatenate([time_loss, _clip_log_abs(mean_rms), rank, _clip_log_abs(var_m),
                          _clip_log_abs(var_rms)])


def need_num_steps(name: str, num_steps: int | None) -> int:
  """`num_steps` as an int >= 1 (a traced length passes through), else a ValueError."""
  if isinstance(num_steps, jax.core.Tracer):   # meta-training: a sampled, traced length
    return num_steps
  if num_steps is None or int(num_steps) < 1:
    raise ValueError(f"{name} needs the training length: make(theta, num_steps=N) with N >= 1 "
                     "(it sets the training-fraction and loss-EMA features of its scheduler).")
  return int(num_steps)


def scheduler_init(theta: Any, n_leaves: int
                   ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """`(lstm_hidden [n, H], lstm_cell [n, H], loss_means [10], loss_min [10])` at step 0."""
  init = theta["lstm_init_state"]
  return (jnp.tile(jnp.asarray(init["hidden"], jnp.float32), (n_leaves, 1)),
          jnp.tile(jnp.asarray(init["cell"], jnp.float32), (n_leaves, 1)),
          jnp.zeros([10], jnp.float32), _NO_LOSS_YET * jnp.ones([10], jnp.float32))


def time_loss_features(count: jax.Array, loss_means: jax.Array, loss_min: jax.Array,
                       loss: jax.Array, loss_decays: jax.Array, num_steps: int
                       ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """`(new loss_means, new loss_min, features [18])`: 9 training-fraction, 9 loss features."""
  means, rmin = acc.loss_update(loss_means, loss_min, count, loss, loss_decays)
  loss_feat = acc.loss_features(means, rmin, count + 1, loss_decays)
  frac = count / jnp.asarray(num_steps, jnp.float32)
  return means, rmin, jnp.concatenate([acc.fractional_tanh_embed(frac), loss_feat])


def init_state(spec: HyperSpec, theta: Any, params: Any, num_steps: int) -> HyperState:
  del num_steps
  leaves, tree = jax.tree_util.tree_flatten(params)
  nm, nr, nf = (len(spec.momentum_decays), len(spec.rms_decays), len(spec.adafactor_decays))
  facs = [acc.fac_init(p, nf) for p in leaves]
  un = lambda xs: jax.tree_util.tree_unflatten(tree, list(xs))
  hidden, cell, loss_means, loss_min = scheduler_init(theta, len(leaves))
  return HyperState(
      count=jnp.zeros([], jnp.int32),
      m=un(jnp.zeros((nm,) + p.shape, jnp.float32) for p in leaves),
      rms=un(jnp.zeros((nr,) + p.shape, jnp.float32) for p in leaves),
      v_row=un(f.v_row for f in facs), v_col=un(f.v_col for f in facs),
      v_diag=un(f.v_diag for f in facs),
      lstm_hidden=hidden, lstm_cell=cell, loss_means=loss_means, loss_min=loss_min)


def update(spec: HyperSpec, theta: Any, loss_decays: jax.Array, num_steps: int,
           grads: Any, state: HyperState, params: Any, loss: jax.Array
           ) -> tuple[Any, HyperState]:
  """One step; returns (updates = new_params - params, new state)."""
  nm, nr, nf = (len(spec.momentum_decays), len(spec.rms_decays), len(spec.adafactor_decays))
  loss = jnp.asarray(loss, jnp.float32)
  ok = all_finite(grads, loss)   # else: zero update, state unchanged (selected in the fusions)
  means, rmin, time_loss = time_loss_features(state.count, state.loss_means, state.loss_min,
                                             loss, loss_decays, num_steps)   # [18]

  leaves, tree = jax.tree_util.tree_flatten(params)
  gl = tree.flatten_up_to(grads)   # clipped to +-1000 inside each tensor's blocks
  ml, rl = tree.flatten_up_to(state.m), tree.flatten_up_to(state.rms)
  n = len(leaves)

  # --- per-tensor LSTM -------------------------------------------------------------------
  if spec.variant == "velo":
    x = jnp.stack([velo_tensor_features(p, m, r, time_loss) for p, m, r in zip(leaves, ml, rl)])
  else:
    x = jnp.tile(time_loss[None], (n, 1))
  rnn = theta["rnn_params"]
  out, h, c = _nn.mix_lstm(rnn, x, state.lstm_hidden, state.lstm_cell)
  if spec.bugged_next_lstm_state:
    h, c = state.lstm_hidden, state.lstm_cell
  step_out = (out @ rnn["step_size"]["w"] + rnn["step_size"]["b"])[:, 0]          # [n]
  controls = out @ rnn["rnn_to_controls"]["w"] + rnn["rnn_to_controls"]["b"]      # [n, P]
  if spec.variant == "velo":
    lr_mult, mult = step_out, 100.0
  else:
    lr_mult, mult = jnp.exp(step_out) * 0.1, 1.0
    controls = jax.nn.softmax(controls, axis=-1)

  bank = theta["ff_mod_stack"]["~"]

  def mix(w):  # [P, ...] -> [n, ...]: mult * mean_p(w_p * c_p), as the reference computes it
    c = controls.reshape(controls.shape + (1,) * (w.ndim - 1))
    return mult * jnp.mean(w[None] * c, axis=1)

  ff = {k: mix(jnp.asarray(v)) for k, v in bank.items()}

  # --- per-parameter MLP -----------------------------------------------------------------
  mom_d = jnp.asarray(spec.momentum_decays, jnp.float32)
  rms_d = jnp.asarray(spec.rms_decays, jnp.float32)
  fac_d = jnp.asarray(spec.adafactor_decays, jnp.float32)
  vrl, vcl, vdl = (tree.flatten_up_to(state.v_row), tree.flatten_up_to(state.v_col),
                   tree.flatten_up_to(state.v_diag))
  outs = {k: [] for k in ("u", "m", "rms", "fac")}
  for i, (p, g, m, v, vr, vc, vd) in enumerate(zip(leaves, gl, ml, rl, vrl, vcl, vdl)):
    w0 = [ff[f"w0__{j}"][i] for j in range(14)]
    rest = [(ff[f"w{j}"][i], ff[f"b{j}"][i]) for j in range(1, spec.hidden_layers + 1)]

    def step_fn(d, mag, mean_p2, lr=lr_mult[i]):
      param_scale = jnp.sqrt(mean_p2 + 1e-9)
      return lr * (d * (param_scale * jnp.exp(mag * spec.exp_mult)) * spec.step_mult)

    u, m, v, fl = _leaf.leaf_update(_nn.hyper_groups, p, g, m, v, acc.FactoredLeaf(vr, vc, vd),
                                    mom_d, rms_d, fac_d, w0, ff["b0"][i], rest, step_fn,
                                    p_channel=2, clip=1000.0, ok=ok)
    outs["u"].append(u)
    outs["m"].append(m)
    outs["rms"].append(v)
    outs["fac"].append(fl)

  un = lambda xs: jax.tree_util.tree_unflatten(tree, xs)
  keep = lambda new, old: jnp.where(ok, new, old)
  new_state = HyperState(keep(state.count + 1, state.count), un(outs["m"]), un(outs["rms"]),
                         un([f.v_row for f in outs["fac"]]), un([f.v_col for f in outs["fac"]]),
                         un([f.v_diag for f in outs["fac"]]), keep(h, state.lstm_hidden),
                         keep(c, state.lstm_cell), keep(means, state.loss_means),
                         keep(rmin, state.loss_min))
  return un(outs["u"]), new_state


def init_theta(key: jax.Array, *, n_lstm_in: int, hidden: int, param_inits: int,
               widths: list[int], ff_hidden: int, ff_layers: int, with_bank: bool = True
               ) -> dict:
  """Haiku-layout theta: lstm_init_state, rnn_params, ff_mod_stack (keys as the reference)."""
  k_bank, k_rnn = jax.random.split(key)
  extra = {"rnn_to_controls": param_inits, "step_size": 1} if with_bank else {"step_size": 1}
  theta = {"lstm_init_state": {"hidden": jnp.zeros([1, hidden], jnp.float32),
                               "cell": jnp.zeros([1, hidden], jnp.float32)},
           "rnn_params": _nn.rnn_init(k_rnn, n_lstm_in, hidden, extra)}
  if with_bank:
    n_in = sum(widths)
    sizes = [ff_hidden] * ff_layers + [3]
    shapes = {f"w0__{j}": ((w, ff_hidden), n_in) for j, w in enumerate(widths)}
    shapes.update({f"w{li}": ((sizes[li - 1], sizes[li]), sizes[li - 1])
                   for li in range(1, len(sizes))})
    ws = _nn.truncated_normals(k_bank, [((param_inits,) + shape, 1.0 / np.sqrt(fan_in))
                                         for shape, fan_in in shapes.values()])
    bank = dict(zip(shapes, ws))
    bank.update({f"b{li}": jnp.zeros([param_inits, s], jnp.float32) for li, s in enumerate(sizes)})
    theta["ff_mod_stack"] = {"~": bank}
  return theta


def init_theta_for(lopt: Any, key: jax.Array, *, n_lstm_in: int) -> dict:
  """`init_theta` with the sizes of a VeLO/Celo dataclass (`lopt`'s decays and widths)."""
  widths = ff_widths(len(lopt.momentum_decays), len(lopt.rms_decays),
                     len(lopt.adafactor_decays))
  return init_theta(key, n_lstm_in=n_lstm_in, hidden=lopt.lstm_hidden_size,
                    param_inits=lopt.param_inits, widths=widths, ff_hidden=lopt.ff_hidden_size,
                    ff_layers=lopt.ff_hidden_layers)


def make_transform(name: str, spec: HyperSpec, theta: Any, loss_decays: jax.Array,
                   num_steps: int) -> optax.GradientTransformationExtraArgs:
  """The optax transform of a HyperV2-style rule (VeLO, Celo): `init_state` then `update`.

  `update(grads, state, params, loss=loss)` needs both params (per-parameter features) and
  the loss (scheduler features); non-finite steps are skipped inside `update`'s fused pass.
  """

  def init_fn(params):
    return init_state(spec, theta, params, num_steps)

  def update_fn(grads, state, params=None, *, loss=None, **extra):
    loss = scalar_loss(name, loss, extra, required=True)
    if params is None:
      raise ValueError(f"{name} needs params and the current loss: "
                       "update(grads, state, params, loss=loss).")
    return update(spec, theta, loss_decays, num_steps, grads, state, params, loss)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
