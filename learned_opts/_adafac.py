"""AdafacMLP ("small_fc_lopt"): learned_optimization's `AdafacMLPLOpt` as an optax transform.

A per-parameter ReLU MLP (39 -> 4 -> 4 -> 2) over momentum, RMS and Adafactor-style features
plus 11 absolute-time features; `step = d * exp(0.001 m) * 0.001`. Momentum, RMS and
Adafactor decays are meta-learned offsets in theta. Needs no `num_steps` and no loss.

    >>> import jax, jax.numpy as jnp
    >>> lopt = AdafacMLP()
    >>> opt = lopt.make(lopt.init_meta(jax.random.PRNGKey(0)))
    >>> params = {"w": jnp.ones((3, 2))}
    >>> state = opt.init(params)
    >>> updates, state = opt.update({"w": jnp.ones((3, 2))}, state, params)
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lopt.learned_opts._loss import scalar_loss

from lopt.learned_opts._guard import all_finite

from lopt.learned_opts import _accumulators as acc
from lopt.learned_opts import _nn
from lopt.learned_opts import _leaf


class AdafacMLPState(NamedTuple):
  count: jax.Array   # int32 []
  m: Any             # per leaf [3, *shape]
  rms: Any           # per leaf [1, *shape]
  v_row: Any         # per leaf, see _accumulators.FactoredLeaf
  v_col: Any
  v_diag: Any


@dataclasses.dataclass(frozen=True)
class AdafacMLP:
  """small_fc_lopt (Metz et al. 2022); theta matches `AdafacMLPLOpt().init(key)` key for key."""

  exp_mult: float = 0.001
  step_mult: float = 0.001
  hidden_size: int = 4
  hidden_layers: int = 2
  momentum_decays: tuple[float, ...] = (0.9, 0.99, 0.999)
  rms_decays: tuple[float, ...] = (0.999,)
  adafactor_decays: tuple[float, ...] = (0.9, 0.99, 0.999)

  name: str = dataclasses.field(default="adafac_mlp", init=False)

  def _n_inputs(self) -> int:
    nm, nr, nf = len(self.momentum_decays), len(self.rms_decays), len(self.adafactor_decays)
    return 2 + nm + nr + nm + nr + nf + 5 * nf + 11

  def init_meta(self, key: jax.Array) -> dict:
    sizes = [self._n_inputs()] + [self.hidden_size] * self.hidden_layers + [2]
    ws = _nn.truncated_normals(key, [((a, b), 1.0 / a ** 0.5)
                                      for a, b in zip(sizes[:-1], sizes[1:])])
    nn = {}
    for i, (w, b) in enumerate(zip(ws, sizes[1:])):
      nn[f"w{i}"] = w
      nn[f"b{i}"] = jnp.zeros((b,), jnp.float32)
    return {"momentum_decays": jnp.zeros([len(self.momentum_decays)], jnp.float32),
            "rms_decays": jnp.zeros([len(self.rms_decays)], jnp.float32),
            "adafactor_decays": jnp.zeros([len(self.adafactor_decays)], jnp.float32),
            "nn": {"~": nn}}

  def make(self, theta: Any, *, num_steps: int | None = None, **options: Any
           ) -> optax.GradientTransformationExtraArgs:
    """`num_steps` is accepted and unused (time enters as absolute-step features)."""
    if options:
      raise TypeError(f"AdafacMLP.make got unknown options {sorted(options)}; it takes none.")
    nm, nr, nf = len(self.momentum_decays), len(self.rms_decays), len(self.adafactor_decays)
    if nr != 1:
      raise ValueError("AdafacMLP supports exactly one RMS decay, as the reference does.")

    def init_fn(params):
      leaves, tree = jax.tree_util.tree_flatten(params)
      facs = [acc.fac_init(p, nf) for p in leaves]
      un = lambda xs: jax.tree_util.tree_unflatten(tree, list(xs))
      return AdafacMLPState(
          count=jnp.zeros([], jnp.int32),
          m=un(jnp.zeros((nm,) + p.shape, jnp.float32) for p in leaves),
          rms=un(jnp.zeros((nr,) + p.shape, jnp.float32) for p in leaves),
          v_row=un(f.v_row for f in facs), v_col=un(f.v_col for f in facs),
          v_diag=un(f.v_diag for f in facs))

    def update_fn(grads, state, params=None, **extra):
      if params is None:
        raise ValueError("AdafacMLP needs params: call update(grads, state, params).")
      # Non-finite guard (as `skip_nonfinite`), applied inside the per-leaf fusions.
      ok = all_finite(grads, scalar_loss("AdafacMLP", extra.get("loss"), extra))
      nn = theta["nn"]["~"]
      mom_d = acc.decays_from_offsets(self.momentum_decays, theta["momentum_decays"])
      rms_d = acc.decays_from_offsets(self.rms_decays, theta["rms_decays"])
      fac_d = acc.decays_from_offsets(self.adafactor_decays, theta["adafactor_decays"])
      tfeat = _nn.tanh_embedding(state.count)                           # [11]
      n_norm = nn["w0"].shape[0] - tfeat.shape[0]
      b0 = nn["b0"] + tfeat @ nn["w0"][n_norm:]                         # time folded into bias
      widths = [1, 1, nm, nr, nm, nr, nf, nf, nf, nf, nf, nf]
      splits = jnp.split(nn["w0"][:n_norm], np.cumsum(widths)[:-1].tolist())
      rest = [(nn[f"w{i}"], nn[f"b{i}"]) for i in range(1, self.hidden_layers + 1)]

      leaves, tree = jax.tree_util.tree_flatten(params)
      gl = tree.flatten_up_to(grads)
      outs = {k: [] for k in ("u", "m", "rms", "fac")}

      def step_fn(d, mag, mean_p2):
        del mean_p2
        return d * jnp.exp(mag * self.exp_mult) * self.step_mult

      for p, g, m, v, vr, vc, vd in zip(
          leaves, gl, tree.flatten_up_to(state.m), tree.flatten_up_to(state.rms),
          tree.flatten_up_to(state.v_row), tree.flatten_up_to(state.v_col),
          tree.flatten_up_to(state.v_diag)):
        u, m, v, fl = _leaf.leaf_update(_nn.adafac_groups, p, g, m, v,
                                        acc.FactoredLeaf(vr, vc, vd), mom_d, rms_d, fac_d,
                                        splits, b0, rest, step_fn, p_channel=1, ok=ok)
        outs["u"].append(u)
        outs["m"].append(m)
        outs["rms"].append(v)
        outs["fac"].append(fl)
      un = lambda xs: jax.tree_util.tree_unflatten(tree, xs)
      fac = outs["fac"]
      return un(outs["u"]), AdafacMLPState(
          jnp.where(ok, state.count + 1, state.count), un(outs["m"]), un(outs["rms"]),
          un([f.v_row for f in fac]), un([f.v_col for f in fac]), un([f.v_diag for f in fac]))

    # Non-finite steps are skipped inside update_fn (same semantics as `skip_nonfinite`).
    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
