"""Meta-gradient estimators sharing one interface and one unroll-state type.

Every estimator is a frozen dataclass (a pytree whose only data is its `Unroller`'s task
family) written for ONE inner problem:

  * `init(theta, key) -> UnrollState`
  * `estimate(theta, state, key) -> (meta_grad, state, metrics)`

`population_init` / `population_estimate` vmap them over a population and average. For a
population the estimators also have `estimate_population` (same result as `vmap(estimate)`):
the problems' unrolls become one `lax.scan` over the vmapped step (`scan_vmapped`), which JAX
traces ~2x faster than a vmapped scan; `population_estimates` runs several populations'
unrolls in one scan (`scan_population`), batching the learned-optimizer update of
same-shaped families.

Estimators:
  * `PES`: truncated Persistent Evolution Strategies (Vicol et al. 2021), antithetic, with
    the accumulated perturbation since the last reset; unbiased for the full-unroll
    objective, also when a reset falls inside a truncation (steps after it are credited
    only with the current perturbation).

The truncated estimators (PES, TruncatedES, TBPTT) take `loss_type`: "avg" (the mean
meta-loss over the truncation's steps) or "last" (the meta-loss after its last step). What
the meta-loss reads (training loss, a held-out stream of the training data, the validation
split, or a mix) is the `Unroller`'s `meta_loss_split`.
  * `TruncatedES`: antithetic ES over each truncation, both halves started from one state.
  * `FullES`: antithetic ES over a whole fresh unroll (loss "avg", "last" or
    "last_recompute" on K batches), optional sign of the loss difference (as VeLO).
  * `TBPTT`: backprop through each truncation (`jax.checkpoint` per step).
  * `Multi`: a weighted average of several estimators (each keeps its own state).

Example:
  >>> import jax
  >>> from lopt.meta import testing, ConstantSchedule, Unroller, PES
  >>> u = Unroller(testing.QuadraticFamily(dim=4), testing.LogLRAdam(), ConstantSchedule(20))
  >>> est = PES(u, trunc_length=5)
  >>> theta = u.lopt.init_meta(jax.random.PRNGKey(0))
  >>> st = est.init(theta, jax.random.PRNGKey(1))
  >>> g, st, m = est.estimate(theta, st, jax.random.PRNGKey(2))
  >>> sorted(g) == sorted(theta)
  True
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lopt.meta._unroll import InnerState, Unroller, meta_loss_mix

__all__ = ["UnrollState", "PES", "TruncatedES", "FullES", "TBPTT", "Multi",
           "population_init", "population_estimate", "population_estimates",
           "scan_population", "scan_vmapped", "LOSS_TYPES"]

LOSS_TYPES = ("avg", "last", "last_recompute")
TRUNCATION_LOSS_TYPES = ("avg", "last")


def _step_weights(loss_type: str, num_steps: int) -> jax.Array:
  """Per-step weights of a truncation's meta-objective: the mean ("avg") or the last step
  ("last", the meta-loss after the truncation's final update)."""
  if loss_type not in TRUNCATION_LOSS_TYPES:
    raise ValueError(f"loss_type must be one of {TRUNCATION_LOSS_TYPES} for truncated "
                     f"estimators, got {loss_type!r}")
  if loss_type == "avg":
    return jnp.full((num_steps,), 1.0 / num_steps, jnp.float32)
  return jnp.zeros((num_steps,), jnp.float32).at[-1].set(1.0)


class UnrollState(NamedTuple):
  """The state every estimator carries for one inner problem.

  `pair` holds the antithetic trajectories (positive, negative) stacked on a leading [2]
  axis (after the population axis in a population: [P, 2, ...]); the two are equal for
  non-antithetic estimators. Kept stacked, the pair enters the vmapped unroll and leaves
  it without per-leaf stack/slice copies. `accum` is PES's accumulated perturbation since
  the last reset (zeros otherwise).
  """
  pair: InnerState
  accum: Any


def _perturb(theta: Any, key: jax.Array, std: float) -> Any:
  """Gaussian noise shaped like theta, from ONE draw (one RNG kernel to compile, not one
  per leaf)."""
  leaves, treedef = jax.tree.flatten(theta)
  sizes = [int(np.prod(jnp.shape(x))) for x in leaves]
  flat = std * jax.random.normal(key, (sum(sizes),), jnp.float32)
  offsets = np.cumsum([0] + sizes)
  eps = [flat[a:b].reshape(jnp.shape(x)).astype(jnp.asarray(x).dtype)
         for a, b, x in zip(offsets[:-1], offsets[1:], leaves)]
  return jax.tree.unflatten(treedef, eps)


def _stack(a: Any, b: Any) -> Any:
  return jax.tree.map(lambda x, y: jnp.stack([x, y]), a, b)


def _index(tree: Any, i: int) -> Any:
  return jax.tree.map(lambda x: x[i], tree)


def _scale(tree: Any, c: jax.Array) -> Any:
  return jax.tree.map(lambda x: (c * x).astype(x.dtype), tree)


def _add(a: Any, b: Any) -> Any:
  return jax.tree.map(jnp.add, a, b)


def _shape_delta(delta: jax.Array, clip: float | None, sign: float | None) -> jax.Array:
  if clip is not None:
    delta = jnp.clip(delta, -clip, clip)
  if sign is not None:
    delta = sign * jnp.sign(delta)
  return delta


def _antithetic_thetas(theta: Any, eps: Any) -> Any:
  return _stack(_add(theta, eps), jax.tree.map(jnp.subtract, theta, eps))


def _antithetic_unroll(u: Unroller, theta: Any, eps: Any, states: InnerState, key: jax.Array,
                       num_steps: int):
  """Unrolls theta+eps and theta-eps (a vmapped pair sharing keys, hence data)."""
  return jax.vmap(lambda th, s: u.unroll(th, s, key, num_steps))(
      _antithetic_thetas(theta, eps), states)


def scan_population(unrollers: Sequence[Unroller], thetas: Sequence[Any],
                    states: Sequence[InnerState], keys: Sequence[jax.Array], num_steps: int,
                    *, pair: bool, remat: bool = False) -> list[tuple[InnerState, Any]]:
  """Populations' unrolls, one per unroller (task family), as ONE scan over steps whose
  body runs each population's vmapped step.

  Computes what vmapping each `u.unroll` over its population (and the antithetic pair)
  computes, with the same keys, but (1) JAX traces the step once under vmap instead of
  batching a scan body once per vmap level (~2x faster tracing), and (2) the learned
  optimizer's update of families whose problems have the same parameter/state shapes
  (`Unroller.update_signature`) runs as one batch, so XLA compiles it once, not once per
  family (the update dominates the compile of small tasks).

  Args:
    unrollers: one per population.
    thetas, states: per population, leading axes [P, 2] when `pair` (the antithetic
      halves), else [P].
    keys: per population, [P] unroll keys (shared by a pair, hence same data).
    remat: `jax.checkpoint` each step (truncated backprop).

  Returns:
    Per population, (final states, StepOut with axes [P, (2,) T]).
  """
  def batched(f, shared_last=False):
    if pair:
      f = jax.vmap(f, in_axes=(0, 0, None) if shared_last else 0)
    return jax.vmap(f)

  # Same-signature populations share one update: their params and optimizer states are
  # carried concatenated along the problem axis (each population reads its slice).
  by_sig: dict[tuple, list[int]] = {}
  for i, (u, s) in enumerate(zip(unrollers, states)):
    by_sig.setdefault(u.update_signature(s), []).append(i)
  groups = list(by_sig.values())
  sizes = [jax.tree.leaves(s)[0].shape[0] for s in states]
  cat = lambda trees: (trees[0] if len(trees) == 1 else
                       jax.tree.map(lambda *xs: jnp.concatenate(xs), *trees))

  def split(tree, idx):
    if len(idx) == 1:
      return {idx[0]: tree}
    out, start = {}, 0
    for i in idx:
      out[i] = jax.tree.map(lambda x: jax.lax.slice_in_dim(x, start, start + sizes[i]), tree)
      start += sizes[i]
    return out

  group_thetas = [cat([thetas[i] for i in idx]) for idx in groups]

  def body(carry, ks):
    shared, rest = carry
    fam: dict[int, InnerState] = {}
    for idx, (params, opt_state) in zip(groups, shared):
      ps, os_ = split(params, idx), split(opt_state, idx)
      fam.update({i: InnerState(ps[i], os_[i], *rest[i]) for i in idx})
    gs = [batched(u.step_grads, shared_last=True)(thetas[i], fam[i], ks[i])
          for i, u in enumerate(unrollers)]
    new_shared, res = [], [None] * len(gs)
    for idx, th in zip(groups, group_thetas):
      params = cat([gs[i].state.params for i in idx])
      opt_state = cat([gs[i].state.opt_state for i in idx])
      updates, opt_state = batched(unrollers[idx[0]].step_update)(
          th, params, opt_state, cat([gs[i].grads for i in idx]),
          cat([gs[i].loss for i in idx]), cat([gs[i].state.length for i in idx]))
      params = optax.apply_updates(params, updates)
      new_shared.append((params, opt_state))
      ps, os_ = split(params, idx), split(opt_state, idx)
      for i in idx:
        res[i] = batched(unrollers[i].step_finish)(gs[i], ps[i], os_[i])
    new_rest = tuple(tuple(r[0])[2:] for r in res)
    return (tuple(new_shared), new_rest), tuple(r[1] for r in res)

  if remat:
    body = jax.checkpoint(body)
  ks = tuple(jnp.swapaxes(jax.vmap(lambda k: jax.random.split(k, num_steps))(k), 0, 1)
             for k in keys)                                              # [T, P, ...]
  init = (tuple((cat([states[i].params for i in idx]), cat([states[i].opt_state for i in idx]))
                for idx in groups),
          tuple(tuple(s)[2:] for s in states))
  (shared, rest), outs = jax.lax.scan(body, init, ks)
  finals: dict[int, InnerState] = {}
  for idx, (params, opt_state) in zip(groups, shared):
    ps, os_ = split(params, idx), split(opt_state, idx)
    finals.update({i: InnerState(ps[i], os_[i], *rest[i]) for i in idx})
  t_axis = 2 if pair else 1
  return [(finals[i], jax.tree.map(lambda x: jnp.moveaxis(x, 0, t_axis), o))
          for i, o in enumerate(outs)]


def scan_vmapped(u: Unroller, thetas: Any, states: InnerState, keys: jax.Array,
                 num_steps: int, *, pair: bool, remat: bool = False):
  """`scan_population` of one population: `(final states, StepOut [P, (2,) T])`."""
  return scan_population([u], [thetas], [states], [keys], num_steps, pair=pair,
                         remat=remat)[0]


def _fresh(u: Unroller, theta: Any, key: jax.Array) -> UnrollState:
  del key  # the first truncation samples the problems (`Unroller.blank`)
  return UnrollState(_both(u.blank(theta)), jax.tree.map(jnp.zeros_like, theta))


def _both(s: InnerState) -> InnerState:
  """One problem as an equal pair (leading [2])."""
  return jax.tree.map(lambda x: jnp.broadcast_to(x[None], (2,) + jnp.shape(x)), s)


def _metrics(out, delta=None) -> dict[str, jax.Array]:
  reset = out.reset if out.reset.ndim == 1 else out.reset[0]  # [T]; equal for both halves
  m = {"meta_loss": jnp.mean(out.meta_loss), "inner_loss": jnp.mean(out.loss),
       "resets": jnp.sum(reset).astype(jnp.float32)}
  if delta is not None:
    m["abs_delta_loss"] = jnp.abs(delta)
  return m


class _AntitheticPopulation:
  """The population path of an antithetic estimator, in three phases: `begin_population`
  (vmapped per problem: resets, noise, thetas +- eps, start states), one unroll scan
  (shared with other estimators of equal `unroll_spec()` by `population_estimates`), and
  `end_population` (vmapped per problem: the estimate)."""

  def _num_steps(self) -> int:
    raise NotImplementedError

  def unroll_spec(self) -> tuple[int, bool]:
    """(steps, antithetic pair): estimators with equal specs can share one unroll scan."""
    return self._num_steps(), True

  def estimate_population(self, theta, states: UnrollState, keys):
    """`vmap(estimate)` over a population, with the unrolls as one `scan_vmapped`."""
    carry = self.begin_population(theta, states, keys)
    thetas, starts, ks = carry[1]
    result = scan_vmapped(self.unroller, thetas, starts, ks, self._num_steps(), pair=True)
    return self.end_population(carry, result)


@dataclasses.dataclass(frozen=True)
class _TruncatedAntithetic(_AntitheticPopulation):
  """Fields and the antithetic truncation shared by `PES` and `TruncatedES`."""
  unroller: Unroller
  trunc_length: int = 50
  std: float = 0.01
  clip_delta: float | None = None
  sign_delta: float | None = None
  loss_type: str = "avg"
  persistent = True   # class constant: PES's negative half carries its own trajectory

  def __post_init__(self):
    _step_weights(self.loss_type, self.trunc_length)   # validates

  def init(self, theta: Any, key: jax.Array) -> UnrollState:
    return _fresh(self.unroller, theta, key)

  def _prepare(self, theta, state: UnrollState, key):
    """Resets finished problems and draws eps; returns (eps, state, starts [2], key)."""
    k_eps, k_unroll, k_begin = jax.random.split(key, 3)
    eps = _perturb(theta, k_eps, self.std)
    state = _begin(self.unroller, theta, state, k_begin)
    starts = state.pair if self.persistent else _both(_index(state.pair, 0))
    return eps, state, starts, k_unroll

  def estimate(self, theta, state: UnrollState, key):
    eps, state, starts, k = self._prepare(theta, state, key)
    result = _antithetic_unroll(self.unroller, theta, eps, starts, k, self.trunc_length)
    return self._finish(eps, state, result)

  def _num_steps(self) -> int:
    return self.trunc_length

  def begin_population(self, theta, states: UnrollState, keys):
    eps, states, starts, ks = jax.vmap(self._prepare, in_axes=(None, 0, 0))(
        theta, states, keys)
    thetas = jax.vmap(_antithetic_thetas, in_axes=(None, 0))(theta, eps)
    return (eps, states), (thetas, starts, ks)

  def end_population(self, carry, result):
    eps, states = carry[0]
    return jax.vmap(self._finish)(eps, states, result)

  def _finish(self, eps, state: UnrollState, result):
    raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class PES(_TruncatedAntithetic):
  """Truncated Persistent Evolution Strategies (antithetic)."""

  def _finish(self, eps, state: UnrollState, result):
    pair, out = result
    losses = out.meta_loss                    # [2, T]
    reset = out.reset[0]                      # [T], equal for both halves
    delta = losses[0] - losses[1]             # [T]
    before = jnp.cumsum(reset) == 0           # steps still in the accumulated trajectory
    w = _step_weights(self.loss_type, self.trunc_length)
    c_accum = _shape_delta(jnp.sum(jnp.where(before, w * delta, 0.0)), self.clip_delta,
                           self.sign_delta)
    c_eps = _shape_delta(jnp.sum(w * delta), self.clip_delta, self.sign_delta)
    denom = 2 * self.std ** 2
    grad = _add(_scale(state.accum, c_accum / denom), _scale(eps, c_eps / denom))
    any_reset = jnp.any(reset)
    accum = jax.tree.map(lambda a, e: jnp.where(any_reset, e, a + e), state.accum, eps)
    return grad, UnrollState(pair, accum), _metrics(out, jnp.mean(delta))


def _begin(u: Unroller, theta: Any, state: UnrollState, key: jax.Array) -> UnrollState:
  """Truncation-start resets (only when the unroller does not reset inside the scan); a
  reset problem starts a new PES accumulation."""
  if u.reset_every_step:
    return state
  pos = _index(state.pair, 0)
  # Both halves share step and length, so they reset together, to the same new problem
  # (built once: half the init code to compile), selected in one pass over the pair.
  reset = pos.step >= pos.length
  fresh = u.fresh(theta, pos, key)
  pair = jax.tree.map(lambda f, x: jnp.where(reset, f[None], x), fresh, state.pair)
  accum = jax.tree.map(lambda a: jnp.where(reset, jnp.zeros_like(a), a), state.accum)
  return UnrollState(pair, accum)


@dataclasses.dataclass(frozen=True)
class TruncatedES(_TruncatedAntithetic):
  """Antithetic ES per truncation; both halves start from the same (positive) state."""

  persistent = False

  def _finish(self, eps, state: UnrollState, result):
    pair, out = result
    w = _step_weights(self.loss_type, self.trunc_length)
    delta = jnp.sum(w * (out.meta_loss[0] - out.meta_loss[1]))
    c = _shape_delta(delta, self.clip_delta, self.sign_delta) / (2 * self.std ** 2)
    return (_scale(eps, c), UnrollState(_both(_index(pair, 0)), state.accum),
            _metrics(out, delta))


@dataclasses.dataclass(frozen=True)
class FullES(_AntitheticPopulation):
  """Antithetic ES over a full unroll of `unroll_length` steps of a freshly sampled problem.

  The unroll state is carried through unchanged (full unrolls keep no state).
  `loss_type`: "avg" (mean meta-loss over the unroll), "last" (the final step's),
  "last_recompute" (the normalised mean loss of the final params on `recompute_samples`
  batches of the unroller's `meta_loss_split`). `sign_delta=1.0` uses only the sign of
  the loss difference, as VeLO.
  """
  unroller: Unroller
  unroll_length: int = 100
  std: float = 0.01
  loss_type: str = "avg"
  recompute_samples: int = 8
  clip_delta: float | None = None
  sign_delta: float | None = None

  def __post_init__(self):
    if self.loss_type not in LOSS_TYPES:
      raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {self.loss_type!r}")

  def init(self, theta: Any, key: jax.Array) -> UnrollState:
    return _fresh(self.unroller, theta, key)

  def _prepare(self, theta, key):
    k_init, k_eps, k_unroll, k_rec = jax.random.split(key, 4)
    s0 = self.unroller.init(theta, k_init, offset=False, length=self.unroll_length)
    eps = _perturb(theta, k_eps, self.std)
    return eps, _both(s0), k_unroll, k_rec

  def estimate(self, theta, state: UnrollState, key):
    eps, starts, k_unroll, k_rec = self._prepare(theta, key)
    result = _antithetic_unroll(self.unroller, theta, eps, starts, k_unroll,
                                self.unroll_length)
    return self._finish(eps, state, result, k_rec)

  def _num_steps(self) -> int:
    return self.unroll_length

  def begin_population(self, theta, states: UnrollState, keys):
    eps, starts, ks, k_rec = jax.vmap(self._prepare, in_axes=(None, 0))(theta, keys)
    thetas = jax.vmap(_antithetic_thetas, in_axes=(None, 0))(theta, eps)
    return (eps, states, k_rec), (thetas, starts, ks)

  def end_population(self, carry, result):
    eps, states, k_rec = carry[0]
    return jax.vmap(self._finish)(eps, states, result, k_rec)

  def _finish(self, eps, state: UnrollState, result, k_rec):
    finals, out = result
    if self.loss_type == "avg":
      losses = jnp.mean(out.meta_loss, axis=1)                 # [2]
    elif self.loss_type == "last":
      losses = out.meta_loss[:, -1]
    else:
      losses = jax.vmap(lambda s: self._recompute(s, k_rec))(finals)
    delta = losses[0] - losses[1]
    c = _shape_delta(delta, self.clip_delta, self.sign_delta) / (2 * self.std ** 2)
    m = _metrics(out, delta)
    m["meta_loss"] = jnp.mean(losses)
    return _scale(eps, c), state, m

  def _recompute(self, s: InnerState, key: jax.Array) -> jax.Array:
    task = self.unroller.family.task(s.cfg)
    total = 0.0
    for split, weight in meta_loss_mix(self.unroller.meta_loss_split):
      split = self.unroller.inner_split if split == "train" else split

      def one(k, split=split):
        k_b, k_l = jax.random.split(k)
        return task.loss(s.params, k_l, task.sample_batch(k_b, split))[0]

      keys = jax.random.split(key, self.recompute_samples)
      total = total + weight * task.normalizer(jnp.mean(jax.lax.map(one, keys)))
    return total


@dataclasses.dataclass(frozen=True)
class TBPTT:
  """Truncated backprop through time: the exact gradient of each truncation's mean
  meta-loss with respect to theta, from the carried state (each step rematerialised)."""
  unroller: Unroller
  trunc_length: int = 50
  loss_type: str = "avg"

  def __post_init__(self):
    _step_weights(self.loss_type, self.trunc_length)   # validates

  def init(self, theta: Any, key: jax.Array) -> UnrollState:
    return _fresh(self.unroller, theta, key)

  def estimate(self, theta, state: UnrollState, key):
    key, k_begin = jax.random.split(key)
    state = _begin(self.unroller, theta, state, k_begin)

    def objective(th):
      final, out = self.unroller.unroll(th, _index(state.pair, 0), key, self.trunc_length,
                                        remat=True)
      return jnp.sum(w * out.meta_loss), (final, out)

    w = _step_weights(self.loss_type, self.trunc_length)
    grad, (final, out) = jax.grad(objective, has_aux=True)(theta)
    return grad, UnrollState(_both(final), state.accum), _metrics(out)

  def estimate_population(self, theta, states: UnrollState, keys):
    """`vmap(estimate)` over a population: per-problem gradients through one
    `scan_vmapped` (theta broadcast to [P], so each problem's gradient is its own)."""
    keys, k_begin = jnp.swapaxes(jax.vmap(jax.random.split)(keys), 0, 1)
    states = jax.vmap(_begin, in_axes=(None, None, 0, 0))(self.unroller, theta, states,
                                                          k_begin)
    n = keys.shape[0]
    thetas = jax.tree.map(lambda x: jnp.broadcast_to(x, (n,) + jnp.shape(x)), theta)

    def objective(ths):
      pos = jax.tree.map(lambda x: x[:, 0], states.pair)
      final, out = scan_vmapped(self.unroller, ths, pos, keys, self.trunc_length,
                                pair=False, remat=True)
      return jnp.sum(out.meta_loss * w), (final, out)

    w = _step_weights(self.loss_type, self.trunc_length)

    grads, (final, out) = jax.grad(objective, has_aux=True)(thetas)
    return grads, UnrollState(jax.vmap(_both)(final), states.accum), jax.vmap(_metrics)(out)


@dataclasses.dataclass(frozen=True)
class Multi:
  """A weighted average of estimators; the state is the tuple of their states."""
  estimators: tuple
  weights: tuple | None = None

  def _w(self):
    w = self.weights or (1.0,) * len(self.estimators)
    total = float(sum(w))
    return [x / total for x in w]

  def init(self, theta: Any, key: jax.Array) -> tuple:
    keys = jax.random.split(key, len(self.estimators))
    return tuple(e.init(theta, k) for e, k in zip(self.estimators, keys))

  def estimate(self, theta, state: tuple, key):
    keys = jax.random.split(key, len(self.estimators))
    grad, states, metrics = None, [], {}
    for i, (e, s, k, w) in enumerate(zip(self.estimators, state, keys, self._w())):
      g, s, m = e.estimate(theta, s, k)
      g = _scale(g, jnp.asarray(w, jnp.float32))
      grad = g if grad is None else _add(grad, g)
      states.append(s)
      metrics.update({f"{i}/{n}": v for n, v in m.items()})
    metrics["meta_loss"] = sum(w * metrics[f"{i}/meta_loss"] for i, w in enumerate(self._w()))
    return grad, tuple(states), metrics

  def estimate_population(self, theta, states: tuple, keys):
    """`vmap(estimate)` over a population, each estimator through its own population path."""
    ks = jax.vmap(lambda k: jax.random.split(k, len(self.estimators)))(keys)
    grad, new, metrics = None, [], {}
    for i, (e, s, w) in enumerate(zip(self.estimators, states, self._w())):
      g, s, m = _estimate_population(e, theta, s, ks[:, i])
      g = _scale(g, jnp.asarray(w, jnp.float32))
      grad = g if grad is None else _add(grad, g)
      new.append(s)
      metrics.update({f"{i}/{n}": v for n, v in m.items()})
    metrics["meta_loss"] = sum(w * metrics[f"{i}/meta_loss"] for i, w in enumerate(self._w()))
    return grad, tuple(new), metrics


for _cls, _meta in ((PES, ["trunc_length", "std", "clip_delta", "sign_delta", "loss_type"]),
                    (TruncatedES, ["trunc_length", "std", "clip_delta", "sign_delta",
                                   "loss_type"]),
                    (FullES, ["unroll_length", "std", "loss_type", "recompute_samples",
                              "clip_delta", "sign_delta"]),
                    (TBPTT, ["trunc_length", "loss_type"])):
  jax.tree_util.register_dataclass(_cls, data_fields=["unroller"], meta_fields=_meta)
jax.tree_util.register_dataclass(Multi, data_fields=["estimators"], meta_fields=["weights"])


def population_init(estimator, theta: Any, key: jax.Array, num_tasks: int):
  """Initial unroll states of `num_tasks` inner problems (leading axis [num_tasks])."""
  return jax.vmap(estimator.init, in_axes=(None, 0))(theta, jax.random.split(key, num_tasks))


def _estimate_population(estimator, theta: Any, states: Any, keys: jax.Array):
  """Per-problem (unaveraged) estimates: the estimator's own population path (one scan over
  the vmapped step) where it has one, else `vmap(estimate)`."""
  if hasattr(estimator, "estimate_population"):
    return estimator.estimate_population(theta, states, keys)
  return jax.vmap(estimator.estimate, in_axes=(None, 0, 0))(theta, states, keys)


def population_estimate(estimator, theta: Any, states: Any, key: jax.Array):
  """Vmaps `estimate` over the population and averages the finite per-task estimates.

  Returns `(meta_grad, states, metrics)`; `metrics["nonfinite_tasks"]` counts the tasks
  whose estimate had a NaN/inf (left out of the mean; if all are, the mean is NaN and the
  outer step skips it).
  """
  return population_estimates([estimator], theta, [states], [key])[0]


def population_estimates(estimators: Sequence[Any], theta: Any, states: Sequence[Any],
                         keys: Sequence[jax.Array]) -> list[tuple[Any, Any, dict]]:
  """`population_estimate` of several populations (one per estimator), where estimators
  with equal `unroll_spec()` run their unrolls in ONE `scan_population` (one loop; the
  learned-optimizer update of same-shaped families batched and compiled once). Same
  results as calling `population_estimate` on each."""
  task_keys = [jax.random.split(k, jax.tree.leaves(s)[0].shape[0])
               for k, s in zip(keys, states)]
  per_task: list[Any] = [None] * len(estimators)
  groups: dict[tuple, list[int]] = {}
  for i, e in enumerate(estimators):
    if hasattr(e, "unroll_spec"):
      groups.setdefault(e.unroll_spec(), []).append(i)
    else:
      per_task[i] = _estimate_population(e, theta, states[i], task_keys[i])
  for (num_steps, pair), idx in groups.items():
    carries = {i: estimators[i].begin_population(theta, states[i], task_keys[i]) for i in idx}
    results = scan_population([estimators[i].unroller for i in idx],
                              *zip(*[carries[i][1] for i in idx]), num_steps, pair=pair)
    for i, r in zip(idx, results):
      per_task[i] = estimators[i].end_population(carries[i], r)
  return [_population_mean(*r) for r in per_task]


def _population_mean(grads: Any, states: Any, metrics: dict):
  n = jax.tree.leaves(states)[0].shape[0]
  finite = jnp.ones((n,), bool)
  for g in jax.tree.leaves(grads):
    finite &= jnp.all(jnp.isfinite(g.reshape(n, -1)), axis=1)
  count = jnp.sum(finite).astype(jnp.float32)  # 0 -> NaN mean: the outer step skips it

  def mean(g):
    mask = finite.reshape((n,) + (1,) * (g.ndim - 1))
    return (jnp.sum(jnp.where(mask, g, 0.0), axis=0) / count).astype(g.dtype)

  metrics = {k: jnp.mean(v) for k, v in metrics.items()}
  metrics["nonfinite_tasks"] = (n - jnp.sum(finite)).astype(jnp.float32)
  return jax.tree.map(mean, grads), states, metrics
