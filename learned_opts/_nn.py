"""The neural-network building blocks of every learned optimizer in this package.

Parameters use haiku's layout and initialisers (`{"w": [in, out], "b": [out]}`, truncated
normal with stddev `1/sqrt(fan_in)`), so theta trees match learned_optimization checkpoints
key for key, without running haiku at update time. Sections: initialisers, dense layers and
the LSTM, time embeddings, tree helpers (finite checks, `f32`), and the fused per-parameter
MLP of the reference rules.

The fused MLP: the reference builds a `[*shape, 30]` (VeLO/Celo) or `[*shape, 39]`
(AdafacMLP) feature tensor, normalises every channel to unit second moment over the tensor,
and runs a tiny MLP with matmuls. Here the same function is computed without that tensor:

* each channel's normaliser `rsqrt(1e-5 + mean(x_c^2))` is a per-tensor scalar, so it is folded
  into the first layer's weights (`W0[c] * s_c`);
* channels that are broadcasts of a factored accumulator (`v_row`, `v_col` and their rsqrt)
  contribute a per-row / per-column term computed on the small vector, then broadcast;
* time features that are constant over the tensor fold into the first bias;
* the first layer is written as scalar-weight multiply-adds over parameter-shaped arrays, so
  XLA emits one elementwise loop per tensor instead of materialised features and GEMMs.

    >>> import jax.numpy as jnp
    >>> h = mlp_units([jnp.ones((2, 3))], [jnp.ones((2, 4))], jnp.zeros(4))  # 2 channels
    >>> len(h), h[0].shape, float(h[0][0])
    (4, (3,), 2.0)
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from lopt.learned_opts._accumulators import FactorInfo, safe_rsqrt

# --- initialisers (haiku's) ----------------------------------------------------------------

# haiku's TruncatedNormal divides by the stddev of a unit normal truncated to [-2, 2].
_TRUNC_STD = 0.87962566103423978


def truncated_normal(key: jax.Array, shape: Sequence[int], stddev: float) -> jax.Array:
  """haiku.initializers.TruncatedNormal(stddev): N(0, stddev) truncated at two sigma."""
  return jax.random.truncated_normal(key, -2.0, 2.0, tuple(shape), jnp.float32) * (
      stddev / _TRUNC_STD)


def truncated_normals(key: jax.Array, specs: Sequence[tuple[Sequence[int], float]]
                      ) -> list[jax.Array]:
  """Several TruncatedNormal(stddev) arrays from ONE draw (cheap to compile)."""
  sizes = [int(np.prod(shape)) for shape, _ in specs]
  flat = truncated_normal(key, (sum(sizes),), 1.0)
  out, start = [], 0
  for (shape, std), n in zip(specs, sizes):
    out.append(flat[start:start + n].reshape(tuple(shape)) * std)
    start += n
  return out


def variance_scaling(key: jax.Array, shape: Sequence[int]) -> jax.Array:
  """haiku.initializers.VarianceScaling() (scale 1, fan_in, truncated normal)."""
  fan_in = 1 if len(shape) < 1 else (shape[0] if len(shape) == 1 else int(np.prod(shape[:-1])))
  return truncated_normal(key, shape, float(np.sqrt(1.0 / max(1, fan_in))))


def linear_init(key: jax.Array, n_in: int, n_out: int) -> dict[str, jax.Array]:
  """hk.Linear's default parameters: w ~ TruncatedNormal(1/sqrt(n_in)), b = 0."""
  return {"w": truncated_normal(key, (n_in, n_out), 1.0 / np.sqrt(n_in)),
          "b": jnp.zeros((n_out,), jnp.float32)}


# --- dense layers and the LSTM -------------------------------------------------------------

def linear(p: dict[str, jax.Array], x: jax.Array) -> jax.Array:
  return x @ p["w"] + p["b"]


def mlp_init(key: jax.Array, n_in: int, sizes: Sequence[int], prefix: str = "mlp"
             ) -> dict[str, dict[str, jax.Array]]:
  """hk.nets.MLP(sizes) parameters, keyed `mlp/~/linear_i` like haiku."""
  keys = jax.random.split(key, len(sizes))
  out, d = {}, n_in
  for i, (k, n) in enumerate(zip(keys, sizes)):
    out[f"{prefix}/~/linear_{i}"] = linear_init(k, d, n)
    d = n
  return out


def mlp(p: dict[str, dict[str, jax.Array]], x: jax.Array, prefix: str = "mlp") -> jax.Array:
  """hk.nets.MLP forward: ReLU between layers, none after the last."""
  n = len(p)
  for i in range(n):
    x = linear(p[f"{prefix}/~/linear_{i}"], x)
    if i < n - 1:
      x = jax.nn.relu(x)
  return x


def lstm(p: dict[str, jax.Array], x: jax.Array, hidden: jax.Array, cell: jax.Array
         ) -> tuple[jax.Array, jax.Array]:
  """One step of hk.LSTM (gate order i, g, f, o; forget bias +1). Returns (hidden, cell)."""
  gated = linear(p, jnp.concatenate([x, hidden], axis=-1))  # [b, 4h]
  i, g, f, o = jnp.split(gated, 4, axis=-1)
  cell = jax.nn.sigmoid(f + 1.0) * cell + jax.nn.sigmoid(i) * jnp.tanh(g)
  hidden = jax.nn.sigmoid(o) * jnp.tanh(cell)
  return hidden, cell


def second_moment_normalizer(x: jax.Array, axis: Any, eps: float = 1e-5) -> jax.Array:
  return x * jax.lax.rsqrt(eps + jnp.mean(jnp.square(x), axis=axis, keepdims=True))


# --- time embeddings ------------------------------------------------------------------------

TIMESCALES = (1, 3, 10, 30, 100, 300, 1000, 3000, 10000, 30000, 100000)


def tanh_embedding(iteration: jax.Array) -> jax.Array:
  """[11] features `tanh(t / s - 1)` over absolute timescales s (no horizon needed)."""
  t = jnp.asarray(iteration, jnp.float32)
  return jnp.tanh(t / jnp.asarray(TIMESCALES, jnp.float32) - 1.0)


def sin_embedding(iteration: jax.Array) -> jax.Array:
  """[11] features `sin(t / (s * pi))` over absolute timescales s."""
  t = jnp.asarray(iteration, jnp.float32)
  return jnp.sin(t / (jnp.asarray(TIMESCALES, jnp.float32) * jnp.pi))


def rolling_moments(m: jax.Array, x: jax.Array, decays: jax.Array) -> jax.Array:
  """EMA of `x` at several decays; the decay axis is last: `[*shape, n_decays]`."""
  return m * decays + (1.0 - decays) * x[..., None]


# --- tree helpers ---------------------------------------------------------------------------

def tree_all_finite(*trees: Any) -> jax.Array:
  """A scalar bool: every leaf of every tree is finite."""
  leaves = [x for t in trees for x in jax.tree.leaves(t)]
  if not leaves:
    return jnp.asarray(True)
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def tree_select(pred: jax.Array, on_true: Any, on_false: Any) -> Any:
  """`jnp.where(pred, a, b)` leaf by leaf (vmap-friendly alternative to lax.cond)."""
  return jax.tree.map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)


def f32(tree: Any) -> Any:
  return jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), tree)


def require_params(params: Any, name: str) -> None:
  if params is None:
    raise ValueError(f"{name}: update() needs `params` (the learned rule reads them); call "
                     "opt.update(grads, state, params, loss=loss)")


def no_options(name: str, options: dict[str, Any]) -> None:
  if options:
    raise TypeError(f"{name}.make got unknown options {sorted(options)}; it takes none "
                    "besides num_steps")


# --- the fused per-parameter MLP (see the module docstring) --------------------------------

def mean_square(x: jax.Array, n_lead: int = 1) -> jax.Array:
  """Mean of x^2 over all but the first `n_lead` axes: [c, ...] -> [c]."""
  return jnp.mean(jnp.square(x), axis=tuple(range(n_lead, x.ndim)))


def norm_scale(x: jax.Array) -> jax.Array:
  """The reference's per-channel `second_moment_normalizer` factor. x: [c, ...] -> [c]."""
  return jax.lax.rsqrt(1e-5 + mean_square(x))


def mlp_units(groups: Sequence[jax.Array], weights: Sequence[jax.Array], bias: jax.Array
              ) -> list[jax.Array]:
  """First MLP layer over channel groups, as scalar-weight multiply-adds.

  Args:
    groups: arrays `[c_i, ...]` whose trailing shape broadcasts to the tensor shape.
    weights: matching `[c_i, n_units]` (already scaled by the channel normalisers).
    bias: `[n_units]`.

  Returns:
    `n_units` pre-activations, each broadcast to the largest trailing shape.
  """
  # lax ops on pre-sliced rows: the same HLO as `x[c] * w[c, k]`, but a fraction of the
  # Python tracing cost (hundreds of ops per tensor; it dominated the meta step's trace).
  n_units = bias.shape[0]
  full = max((x.shape[1:] for x in groups), key=lambda s: int(np.prod(s)))
  rows = [_unstack(x) for x in groups]
  cols = [[_unstack(c) for c in _unstack(w, 1)] for w in weights]   # [k][c] scalars
  bs = _unstack(bias)
  out = []
  for k in range(n_units):
    acc_full = None
    acc_small = []
    for xs, wk in zip(rows, cols):
      for x, w in zip(xs, wk[k]):
        t = _scale(x, w)
        if x.shape == full:
          acc_full = t if acc_full is None else lax.add(acc_full, t)
        else:
          acc_small.append(t)
    # Broadcast terms: sum same-shaped small terms before broadcasting.
    by_shape: dict[tuple, jax.Array] = {}
    for t in acc_small:
      by_shape[t.shape] = lax.add(by_shape[t.shape], t) if t.shape in by_shape else t
    acc = lax.add(acc_full, _bcast(bs[k], acc_full.shape))
    for t in by_shape.values():
      acc = acc + t
    out.append(acc)
  return out


def _unstack(x: jax.Array, axis: int = 0) -> list[jax.Array]:
  return [lax.index_in_dim(x, i, axis, keepdims=False) for i in range(x.shape[axis])]


def _bcast(s: jax.Array, shape: tuple) -> jax.Array:
  return lax.broadcast_in_dim(s, shape, ())


def _scale(x: jax.Array, s: jax.Array) -> jax.Array:
  """x * s for a 0-d s, as jnp would emit it."""
  return lax.mul(x, _bcast(s, x.shape))


def dense_units(xs: Sequence[jax.Array], w: jax.Array, b: jax.Array, n_out: int | None = None
                ) -> list[jax.Array]:
  """A small dense layer over a list of arrays: out_j = b_j + sum_i xs_i w[i, j]."""
  n_out = w.shape[1] if n_out is None else n_out
  cols = [_unstack(c) for c in _unstack(w, 1)]
  bs = _unstack(b)
  out = []
  for j in range(n_out):
    acc = _scale(xs[0], cols[j][0])
    for i in range(1, len(xs)):
      acc = lax.add(acc, _scale(xs[i], cols[j][i]))
    out.append(lax.add(acc, _bcast(bs[j], acc.shape)))
  return out


def relu_all(xs: Sequence[jax.Array]) -> list[jax.Array]:
  return [jax.nn.relu(x) for x in xs]


def hyper_groups(p: jax.Array, g: jax.Array, m: jax.Array, rms: jax.Array, fi: FactorInfo
                 ) -> list[jax.Array]:
  """The 14 input groups (30 channels) of HyperV2 / Celo's per-parameter MLP, in the
  reference's order (`w0__0` ... `w0__13`). m: [3, *s], rms: [1, *s] (new accumulators)."""
  r = jax.lax.rsqrt(rms + 1e-6)                       # [1, *s]
  if fi.diag:
    fac_g = g[None] * safe_rsqrt(fi.row + 1e-9)
    fac_mom = m * fi.row ** -0.5
  else:
    fac_g = g[None] * fi.rf * fi.cf
    fac_mom = m * fi.rf * fi.cf
  return [g[None], jnp.clip(g, -0.1, 0.1)[None], p[None], m, rms, m * r, r, fac_g,
          g[None] * r, fi.row, fi.col, jax.lax.rsqrt(fi.row + 1e-8),
          jax.lax.rsqrt(fi.col + 1e-8), fac_mom]


def adafac_groups(p: jax.Array, g: jax.Array, m: jax.Array, rms: jax.Array, fi: FactorInfo
                  ) -> list[jax.Array]:
  """AdafacMLPLOpt's 12 normalised input groups (28 channels), reference order."""
  r = jax.lax.rsqrt(rms + 1e-6)
  if fi.diag:
    fac_g = g[None] * safe_rsqrt(fi.row + 1e-9)
    fac_mom = m * (fi.row + 1e-6) ** -0.5
  else:
    fac_g = g[None] * fi.rf * fi.cf
    fac_mom = m * fi.rf * fi.cf
  return [g[None], p[None], m, rms, m * r, r, fac_g, fi.row, fi.col,
          jax.lax.rsqrt(fi.row + 1e-8), jax.lax.rsqrt(fi.col + 1e-8), fac_mom]


def normalized_mlp(groups: Sequence[jax.Array], w0: Sequence[jax.Array], b0: jax.Array,
                   rest: Sequence[tuple[jax.Array, jax.Array]], n_out: int = 2
                   ) -> list[jax.Array]:
  """Per-channel normalised inputs -> ReLU MLP -> the first `n_out` outputs."""
  w0s = [w * norm_scale(x)[:, None] for x, w in zip(groups, w0)]
  h = relu_all(mlp_units(groups, w0s, b0))
  for li, (w, b) in enumerate(rest):
    last = li == len(rest) - 1
    h = dense_units(h, w, b, n_out if last else None)
    if not last:
      h = relu_all(h)
  return h


# --- the reference rules' per-tensor trunk (haiku layout) ---------------------------------

def mix_lstm(rnn: dict, x: jax.Array, hidden: jax.Array, cell: jax.Array
             ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """HyperV2's `_rnn_forward` trunk: mix layers across tensors, then the LSTM.

  `rnn["linear"]` is the reference's dead first mix layer: created, never used.
  Returns (lstm output [n, H], new hidden, new cell).
  """
  mix = jax.nn.relu(x @ rnn["linear_1"]["w"] + rnn["linear_1"]["b"])
  v = jnp.max(mix, axis=0, keepdims=True)
  x = x @ rnn["linear_2"]["w"] + rnn["linear_2"]["b"] + v
  h, c = lstm(rnn["rnn/linear"], x, hidden, cell)
  return h, h, c


def rnn_init(key: jax.Array, n_in: int, hidden: int, extra: dict[str, int]) -> dict:
  """Haiku-layout params of `_rnn_forward`: linear, linear_1, linear_2, rnn/linear, extras."""
  fans = {"linear": (n_in, hidden), "linear_1": (n_in, hidden), "linear_2": (n_in, hidden),
          "rnn/linear": (2 * hidden, 4 * hidden)}
  fans.update({name: (hidden, n_out) for name, n_out in extra.items()})
  ws = truncated_normals(key, [(shape, 1.0 / np.sqrt(shape[0])) for shape in fans.values()])
  return {name: {"w": w, "b": jnp.zeros((shape[1],), jnp.float32)}
          for (name, shape), w in zip(fans.items(), ws)}
