"""One tensor's learned-optimizer update without a materialised feature tensor.

The per-parameter MLPs need, per tensor, the second moment of every input channel before
they can run. Done naively (as in the reference) that is ~20 full-size temporaries and ~20
reductions per tensor. Here:

1. *sums* (blocked): the tensor is cut along its first axis into blocks of about `BLOCK`
   elements; inside a `lax.fori_loop` every per-element channel is computed for the block and
   reduced on its own (cache-resident temporaries; XLA:CPU reduces those fast, whereas a
   concatenated `[C, block]` temporary is built by a slow, branchy loop);
2. *map* (fused): the channels are recomputed elementwise and the MLP runs with the
   normalisers folded into its first layer; the step and the new momentum / RMS come out of
   one XLA loop fusion.

Channels that are broadcasts of a factored accumulator (row/column statistics) are reduced
on their small vectors and enter the first layer as per-row / per-column terms.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from lopt.learned_opts import _accumulators as acc
from lopt.learned_opts import _nn

BLOCK = 8192  # elements per block: ~30 channels x 32 KiB stays in L2


def _rows(x: jax.Array, start, size: int, a: int) -> jax.Array:
  """Rows [start, start+size) of axis 1 of a decay-first array (or x if axis 1 is broadcast)."""
  if x.ndim < 2 or x.shape[1] != a or (size == a):
    return x
  if isinstance(start, int):
    return lax.slice_in_dim(x, start, start + size, axis=1)
  return lax.dynamic_slice_in_dim(x, start, size, axis=1)


def _block_plan(shape: Sequence[int], block: int) -> tuple[int, int, int]:
  """(rows per block, full blocks, tail rows) for a [a, *rest] tensor."""
  a = shape[0]
  row = int(np.prod(shape[1:])) if len(shape) > 1 else 1
  if a * row <= block:
    return a, 1, 0
  br = max(1, min(a, block // max(row, 1)))
  return br, a // br, a % br


def _sum_blocks(fn: Callable, arrays: Sequence[jax.Array], a: int, br: int, nb: int, tail: int
                ) -> jax.Array:
  """sum over row blocks of fn(*blocks) (a list of [c_i, ...] -> [sum c_i]).

  Each group is reduced on its own: XLA:CPU reduces a cache-resident block fast, while a
  concatenated [C, block] temporary is built by a slow, branchy loop."""
  red = lambda ys: jnp.concatenate([jnp.sum(y.reshape(y.shape[0], -1), axis=1) for y in ys])
  if nb == 1 and tail == 0:
    return red(fn(*[_rows(x, 0, br, a) for x in arrays]))
  shape = jax.eval_shape(lambda *xs: red(fn(*xs)), *[_rows(x, 0, br, a) for x in arrays])

  def body(i, s):
    return s + red(fn(*[_rows(x, i * br, br, a) for x in arrays]))

  s = lax.fori_loop(0, nb, body, jnp.zeros(shape.shape, shape.dtype))
  if tail:
    s = s + red(fn(*[_rows(x, nb * br, tail, a) for x in arrays]))
  return s


def _fac_means(g: jax.Array, clipg: Callable, block: int) -> tuple[jax.Array, jax.Array]:
  """mean(g^2 + 1e-30) over the factored axes d0 and d1, in row blocks (no full-size g^2)."""
  d1, d0 = acc.factored_dims(g.shape)
  a = g.shape[0]
  br, nb, tail = _block_plan(g.shape, block)

  def block_sums(gb):
    gb = clipg(gb)
    gsq = gb * gb + 1e-30
    return jnp.sum(gsq, axis=d0), jnp.sum(gsq, axis=d1)

  if nb == 1 and tail == 0:
    s0, s1 = block_sums(g)
  else:
    out0 = jax.eval_shape(block_sums, g[:br])

    def init(d, o):   # reduced over axis 0: an accumulator; else rows written per block
      return jnp.zeros(o.shape if d == 0 else (a,) + o.shape[1:], jnp.float32)

    def put(d, buf, val, start):
      if d == 0:
        return buf + val
      return lax.dynamic_update_slice_in_dim(buf, val, start, axis=0)

    def body(i, c):
      v0, v1 = block_sums(lax.dynamic_slice_in_dim(g, i * br, br, axis=0))
      return put(d0, c[0], v0, i * br), put(d1, c[1], v1, i * br)

    c = lax.fori_loop(0, nb, body, (init(d0, out0[0]), init(d1, out0[1])))
    if tail:
      v0, v1 = block_sums(lax.slice_in_dim(g, nb * br, a, axis=0))
      c = (put(d0, c[0], v0, nb * br), put(d1, c[1], v1, nb * br))
    s0, s1 = c
  return s0 / g.shape[d0], s1 / g.shape[d1]


def tensor_moment_sums(p: jax.Array, m: jax.Array, rms: jax.Array
                       ) -> tuple[jax.Array, ...]:
  """Sums for VeLO's per-tensor features, read straight from the (old) state buffers:
  (sum p^2 [], sum m [k], sum m^2 [k], sum rms [1], sum rms^2 [1]).

  Squares are dot products, so nothing full-size is materialised and no loop has to hold
  the donated state buffers (which would make XLA copy them)."""
  pf = p.reshape(1, -1).astype(jnp.float32)
  mf = m.reshape(m.shape[0], -1)
  rf = rms.reshape(rms.shape[0], -1)
  sq = lambda x: jnp.einsum("kn,kn->k", x, x, precision=lax.Precision.HIGHEST)
  return sq(pf)[0], jnp.sum(mf, axis=1), sq(mf), jnp.sum(rf, axis=1), sq(rf)


def leaf_update(groups_fn: Callable, p: jax.Array, g: jax.Array, m: jax.Array, rms: jax.Array,
                fac: acc.FactoredLeaf, mom_d: jax.Array, rms_d: jax.Array, fac_d: jax.Array,
                w0: Sequence[jax.Array], b0: jax.Array,
                rest: Sequence[tuple[jax.Array, jax.Array]],
                step_fn: Callable[[jax.Array, jax.Array, jax.Array], jax.Array],
                p_channel: int, clip: float | None = None, block: int | None = None,
                ok: jax.Array | None = None):
  """One tensor: accumulators, normalised-feature MLP, step.

  Args:
    groups_fn: `hyper_groups` or `adafac_groups` (p, g, m, rms, FactorInfo) -> groups.
    p, g: the tensor and its raw gradient (clipped to +-`clip` first when given).
    m, rms, fac: previous accumulators (decay axis first).
    w0, b0, rest: MLP weights (first layer split per group, unnormalised).
    step_fn: (direction, magnitude, mean(p^2)) -> step.
    p_channel: index of the `p` group (its mean square gives mean(p^2)).
    ok: optional bool scalar; where False the step is skipped (zero update, accumulators
      unchanged). Selecting inside the fusions that write the new accumulators saves the
      extra pass over the state that a `skip_nonfinite` wrapper costs.

  Returns:
    (update = -step, new m, new rms, new FactoredLeaf).
  """
  block = BLOCK if block is None else block
  shape = p.shape
  nm, nr, nf = m.shape[0], rms.shape[0], fac_d.shape[0]
  s1 = shape or (1,)
  p1 = p.reshape(s1).astype(jnp.float32)
  g1 = g.reshape(s1).astype(jnp.float32)
  m1 = m.reshape((nm,) + s1)
  r1 = rms.reshape((nr,) + s1)
  clipg = (lambda x: jnp.clip(x, -clip, clip)) if clip is not None else (lambda x: x)
  diag = acc.factored_dims(s1) is None

  # New accumulators first, as one elementwise fusion each (in place over donated state);
  # the blocked sums and the MLP then read them.
  keep = (lambda new, old: new) if ok is None else (lambda new, old: jnp.where(ok, new, old))
  gc = clipg(g1)
  m1 = keep(acc.mom_update(m1, gc, mom_d), m1)
  r1 = keep(acc.rms_update(r1, gc, rms_d), r1)
  if diag:
    small, new_fac = [], None
    vd = fac.v_diag.reshape((nf,) + s1)
    carried_extra = [keep(_diag_update(vd, gc, fac_d), vd)]
  else:
    means = _fac_means(g1, clipg, block)
    new_fac, fi = acc.fac_update(fac, g1, fac_d, means=means)   # small vectors
    new_fac = acc.FactoredLeaf(keep(new_fac.v_row, fac.v_row), keep(new_fac.v_col, fac.v_col),
                               fac.v_diag)
    small, carried_extra = [fi.row, fi.col, fi.rf, fi.cf], []

  def groups_of(pb, gb, mb, rb, extra):
    """Channels of one block (mb, rb, extra: the new accumulators' block)."""
    gb = clipg(gb)
    if diag:
      return groups_fn(pb, gb, mb, rb, acc.FactorInfo(extra[0], extra[0], None, None, True))
    return groups_fn(pb, gb, mb, rb, acc.FactorInfo(*extra, False))

  inputs = [p1[None], g1[None], m1, r1] + carried_extra + small
  a = s1[0]
  br, nb, tail = _block_plan(s1, block)

  # Which groups are per element (vs broadcasts of small factored vectors)?
  probe = jax.eval_shape(lambda *xs: groups_of(xs[0][0], xs[1][0], xs[2], xs[3], xs[4:]),
                         *[_rows(x, 0, br, a) for x in inputs])
  blk_full = max((tuple(q.shape[1:]) for q in probe), key=lambda sh: int(np.prod(sh)))
  is_full = [tuple(q.shape[1:]) == blk_full for q in probe]

  # Pass 1: mean squares of the per-element channels (blocked); small ones on the vectors.
  def sq_fn(pb, gb, mb, rb, *extra):
    groups = groups_of(pb[0], gb[0], mb, rb, extra)
    return [jnp.square(q) for q, f in zip(groups, is_full) if f]

  sums = _sum_blocks(sq_fn, inputs, a, br, nb, tail) / float(np.prod(s1))
  ms, off = [], 0
  for q, f in zip(probe, is_full):
    ms.append(sums[off:off + q.shape[0]] if f else None)
    off += q.shape[0] if f else 0
  small_groups = None
  if not all(is_full):
    z = lambda k: jnp.zeros((k,) + (1,) * len(s1), jnp.float32)
    small_groups = groups_fn(z(1)[0], z(1)[0], z(nm), z(nr),
                             acc.FactorInfo(*small, False))
    ms = [_nn.mean_square(sg) if m_ is None else m_ for sg, m_ in zip(small_groups, ms)]
  scales = [jax.lax.rsqrt(1e-5 + x) for x in ms]
  w0s = [w * sc[:, None] for w, sc in zip(w0, scales)]
  mean_p2 = ms[p_channel][0]

  # Broadcast groups' first-layer terms: per unit, one small array per distinct shape.
  n_units = b0.shape[0]
  terms: list[list[jax.Array]] = [[] for _ in range(n_units)]
  if small_groups is not None:
    for k in range(n_units):
      by_shape: dict[tuple, jax.Array] = {}
      for q, w, f in zip(small_groups, w0s, is_full):
        if f:
          continue
        for c in range(q.shape[0]):
          t = q[c] * w[c, k]
          by_shape[t.shape] = by_shape[t.shape] + t if t.shape in by_shape else t
      terms[k] = [t[None] for t in by_shape.values()]     # [1, ...] each
  n_terms = len(terms[0])
  flat_terms = [t for ts in terms for t in ts]

  # Pass 2: MLP, step and new accumulators. Purely elementwise, so XLA fuses it into one loop
  # over the whole tensor (blocking it measured slower: per-iteration overhead, extra copies).
  fw = [w for w, f in zip(w0s, is_full) if f]

  groups = groups_of(p1, g1, m1, r1, carried_extra if diag else small)
  h = _nn.mlp_units([q for q, f in zip(groups, is_full) if f], fw, b0)
  if n_terms:
    h = [x + sum(t[0] for t in flat_terms[k * n_terms:(k + 1) * n_terms])
         for k, x in enumerate(h)]
  h = _nn.relu_all(h)
  for li, (w, b) in enumerate(rest):
    last = li == len(rest) - 1
    h = _nn.dense_units(h, w, b, 2 if last else None)
    if not last:
      h = _nn.relu_all(h)
  outs = (keep(-step_fn(h[0], h[1], mean_p2), 0.0)[None], m1, r1) + tuple(carried_extra)
  upd = outs[0].reshape(shape).astype(p.dtype)
  new_m = outs[1].reshape((nm,) + shape)
  new_r = outs[2].reshape((nr,) + shape)
  if diag:
    new_fac = acc.FactoredLeaf(fac.v_row, fac.v_col, outs[3].reshape(fac.v_diag.shape))
  return upd, new_m, new_r, new_fac


def _diag_update(v: jax.Array, g: jax.Array, decays: jax.Array) -> jax.Array:
  d = jnp.reshape(jnp.clip(decays, 0.0, 1.0), (-1,) + (1,) * g.ndim)
  return d * v + (1 - d) * (g * g + 1e-30)[None]
