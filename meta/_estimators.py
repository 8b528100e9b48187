"""Meta-gradient estimators: one declared protocol, one driver, one unroll-state type.

An estimator is a frozen dataclass (a pytree whose only data is its `Unroller`'s task
family) written for ONE inner problem. It declares its truncation (`num_steps`, whether it
unrolls an antithetic pair, whether its gradient is backprop through the unroll) and
implements three pure functions:

  * `init(theta, key) -> UnrollState`: the problem's initial state;
  * `plan(theta, state, key) -> Plan`: resets, perturbations and the unroll's inputs;
  * `finish(plan, final, out, grad) -> (meta_grad, state, metrics)`: the estimate from the
    unroll's final states and per-step outputs (`grad`: backprop estimators only).

The driver (`estimate_per_task`) runs any list of estimators over their populations:
`plan` vmapped per problem, the unrolls of every estimator with the same `unroll_key()` as
ONE `scan_population` (one loop; the learned-optimizer update of same-shaped families
batched), differentiated for backprop estimators, then `finish` vmapped per problem. The
single-problem `Estimator.estimate` is the same driver on a population of one, so both
paths are one code path. `Multi` (a weighted average of estimators) is the only composite;
the driver expands it into its members.

Estimators:
  * `PES`: truncated Persistent Evolution Strategies (Vicol et al. 2021), antithetic, with
    the accumulated perturbation since the last reset; unbiased for the full-unroll
    objective, also when a reset falls inside a truncation (steps after it are credited
    only with the current perturbation).
  * `TruncatedES`: antithetic ES over each truncation, both halves started from one state.
  * `FullES`: antithetic ES over a whole fresh unroll (loss "avg", "last" or
    "last_recompute" on K batches), optional sign of the loss difference (as VeLO).
  * `TBPTT`: backprop through each truncation (`jax.checkpoint` per step).
  * `Multi`: a weighted average of several estimators (each keeps its own state).

The truncated estimators (PES, TruncatedES, TBPTT) take `loss_type`: "avg" (the mean
meta-loss over the truncation's steps) or "last" (the meta-loss after its last step). What
the meta-loss reads (training loss, a held-out stream of the training data, the validation
split, or a mix) is the `Unroller`'s `meta_loss_split`.

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
from typing import Any, ClassVar, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lopt.meta._unroll import InnerState, Unroller, meta_loss_mix

__all__ = ["UnrollState", "Plan", "Estimator", "PES", "TruncatedES", "FullES", "TBPTT",
           "Multi", "estimate_per_task", "population_init", "population_estimate",
           "population_estimates", "scan_population", "scan_vmapped", "LOSS_TYPES",
           "TRUNCATION_LOSS_TYPES"]

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


class Plan(NamedTuple):
  """One problem's truncation as its estimator planned it (`Estimator.plan`).

  Attributes:
    thetas: the meta-parameters each trajectory runs with: theta +- eps stacked on a
      leading [2] (antithetic estimators), else theta.
    starts: the start states, [2, ...] for antithetic estimators.
    key: the unroll key (shared by an antithetic pair, hence the same data).
    state: the problem's `UnrollState` after the truncation-start resets.
    eps: the perturbation (ES estimators; None otherwise).
    key_extra: a key for work after the unroll (FullES's recomputed loss; else unused).
  """
  thetas: Any
  starts: InnerState
  key: jax.Array
  state: UnrollState
  eps: Any = None
  key_extra: Any = None


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


def _metrics(out, delta=None) -> dict[str, jax.Array]:
  reset = out.reset if out.reset.ndim == 1 else out.reset[0]  # [T]; equal for both halves
  m = {"meta_loss": jnp.mean(out.meta_loss), "inner_loss": jnp.mean(out.loss),
       "resets": jnp.sum(reset).astype(jnp.float32)}
  if delta is not None:
    m["abs_delta_loss"] = jnp.abs(delta)
  return m


def _fresh(u: Unroller, theta: Any) -> UnrollState:
  # The first truncation samples the problems (`Unroller.blank`).
  return UnrollState(_both(u.blank(theta)), jax.tree.map(jnp.zeros_like, theta))


def _both(s: InnerState) -> InnerState:
  """One problem as an equal pair (leading [2])."""
  return jax.tree.map(lambda x: jnp.broadcast_to(x[None], (2,) + jnp.shape(x)), s)


def _estimator(cls):
  """Registers an estimator dataclass as a pytree: `unroller` is data, every other field
  static (read from the dataclass, so no field list is kept by hand)."""
  meta = [f.name for f in dataclasses.fields(cls) if f.name != "unroller"]
  jax.tree_util.register_dataclass(cls, data_fields=["unroller"], meta_fields=meta)
  return cls


class Estimator:
  """The protocol every estimator implements (see the module docstring).

  Class attributes declare the unroll: `antithetic` (a +-eps pair per problem) and
  `backprop` (the driver differentiates the unroll and hands `finish` the gradient).
  """
  unroller: Unroller
  antithetic: ClassVar[bool] = True
  backprop: ClassVar[bool] = False

  @property
  def num_steps(self) -> int:
    """Steps unrolled per `estimate`."""
    raise NotImplementedError

  def unroll_key(self) -> tuple[int, bool, bool]:
    """Estimators with equal keys unroll in one scan."""
    return self.num_steps, self.antithetic, self.backprop

  def step_weights(self) -> jax.Array:
    """[num_steps] weights of the per-step meta-loss in a backprop objective."""
    return jnp.full((self.num_steps,), 1.0 / self.num_steps, jnp.float32)

  def init(self, theta: Any, key: jax.Array) -> UnrollState:
    del key
    return _fresh(self.unroller, theta)

  def plan(self, theta: Any, state: UnrollState, key: jax.Array) -> Plan:
    raise NotImplementedError

  def finish(self, plan: Plan, final: InnerState, out: Any, grad: Any = None):
    raise NotImplementedError

  def estimate(self, theta: Any, state: UnrollState, key: jax.Array):
    """`(meta_grad, state, metrics)` for one problem: the driver on a population of one."""
    return _unbatch(estimate_per_task([self], theta, [_batch(state)], [key[None]])[0])

  def estimate_population(self, theta: Any, states: UnrollState, keys: jax.Array):
    """Per-problem `(meta_grads, states, metrics)` of a population (leading axis [P])."""
    return estimate_per_task([self], theta, [states], [keys])[0]


def _batch(tree: Any) -> Any:
  return jax.tree.map(lambda x: jnp.asarray(x)[None], tree)


def _unbatch(tree: Any) -> Any:
  return jax.tree.map(lambda x: x[0], tree)


@dataclasses.dataclass(frozen=True)
class _Antithetic(Estimator):
  """Fields and planning shared by `PES` and `TruncatedES` (antithetic truncations)."""
  unroller: Unroller
  trunc_length: int = 50
  std: float = 0.01
  clip_delta: float | None = None
  sign_delta: float | None = None
  loss_type: str = "avg"

  def __post_init__(self):
    _step_weights(self.loss_type, self.trunc_length)   # validates

  @property
  def num_steps(self) -> int:
    return self.trunc_length

  def _starts(self, state: UnrollState) -> InnerState:
    raise NotImplementedError

  def plan(self, theta, state: UnrollState, key) -> Plan:
    k_eps, k_unroll, k_begin = jax.random.split(key, 3)
    eps = _perturb(theta, k_eps, self.std)
    state = _begin(self.unroller, theta, state, k_begin)
    return Plan(_antithetic_thetas(theta, eps), self._starts(state), k_unroll, state, eps)


@_estimator
@dataclasses.dataclass(frozen=True)
class PES(_Antithetic):
  """Truncated Persistent Evolution Strategies (antithetic)."""

  def _starts(self, state: UnrollState) -> InnerState:
    return state.pair        # each half continues its own trajectory

  def finish(self, plan: Plan, final: InnerState, out: Any, grad: Any = None):
    del grad
    state, eps = plan.state, plan.eps
    delta = out.meta_loss[0] - out.meta_loss[1]          # [T]
    reset = out.reset[0]                                 # [T], equal for both halves
    before = jnp.cumsum(reset) == 0           # steps still in the accumulated trajectory
    w = _step_weights(self.loss_type, self.trunc_length)
    c_accum = _shape_delta(jnp.sum(jnp.where(before, w * delta, 0.0)), self.clip_delta,
                           self.sign_delta)
    c_eps = _shape_delta(jnp.sum(w * delta), self.clip_delta, self.sign_delta)
    denom = 2 * self.std ** 2
    grad = _add(_scale(state.accum, c_accum / denom), _scale(eps, c_eps / denom))
    any_reset = jnp.any(reset)
    accum = jax.tree.map(lambda a, e: jnp.where(any_reset, e, a + e), state.accum, eps)
    return grad, UnrollState(final, accum), _metrics(out, jnp.mean(delta))


@_estimator
@dataclasses.dataclass(frozen=True)
class TruncatedES(_Antithetic):
  """Antithetic ES per truncation; both halves start from the same (positive) state."""

  def _starts(self, state: UnrollState) -> InnerState:
    return _both(_index(state.pair, 0))

  def finish(self, plan: Plan, final: InnerState, out: Any, grad: Any = None):
    del grad
    w = _step_weights(self.loss_type, self.trunc_length)
    delta = jnp.sum(w * (out.meta_loss[0] - out.meta_loss[1]))
    c = _shape_delta(delta, self.clip_delta, self.sign_delta) / (2 * self.std ** 2)
    return (_scale(plan.eps, c), UnrollState(_both(_index(final, 0)), plan.state.accum),
            _metrics(out, delta))


@_estimator
@dataclasses.dataclass(frozen=True)
class FullES(Estimator):
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

  @property
  def num_steps(self) -> int:
    return self.unroll_length

  def plan(self, theta, state: UnrollState, key) -> Plan:
    k_init, k_eps, k_unroll, k_rec = jax.random.split(key, 4)
    s0 = self.unroller.init(theta, k_init, offset=False, length=self.unroll_length)
    eps = _perturb(theta, k_eps, self.std)
    return Plan(_antithetic_thetas(theta, eps), _both(s0), k_unroll, state, eps, k_rec)

  def finish(self, plan: Plan, final: InnerState, out: Any, grad: Any = None):
    del grad
    if self.loss_type == "avg":
      losses = jnp.mean(out.meta_loss, axis=1)                 # [2]
    elif self.loss_type == "last":
      losses = out.meta_loss[:, -1]
    else:
      losses = jax.vmap(lambda s: self._recompute(s, plan.key_extra))(final)
    delta = losses[0] - losses[1]
    c = _shape_delta(delta, self.clip_delta, self.sign_delta) / (2 * self.std ** 2)
    m = _metrics(out, delta)
    m["meta_loss"] = jnp.mean(losses)
    return _scale(plan.eps, c), plan.state, m

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


@_estimator
@dataclasses.dataclass(frozen=True)
class TBPTT(Estimator):
  """Truncated backprop through time: the exact gradient of each truncation's meta-loss
  (mean or last step) with respect to theta, from the carried state (each step
  rematerialised)."""
  unroller: Unroller
  trunc_length: int = 50
  loss_type: str = "avg"
  antithetic: ClassVar[bool] = False
  backprop: ClassVar[bool] = True

  def __post_init__(self):
    _step_weights(self.loss_type, self.trunc_length)   # validates

  @property
  def num_steps(self) -> int:
    return self.trunc_length

  def step_weights(self) -> jax.Array:
    return _step_weights(self.loss_type, self.trunc_length)

  def plan(self, theta, state: UnrollState, key) -> Plan:
    key, k_begin = jax.random.split(key)
    state = _begin(self.unroller, theta, state, k_begin)
    return Plan(theta, _index(state.pair, 0), key, state)

  def finish(self, plan: Plan, final: InnerState, out: Any, grad: Any = None):
    return grad, UnrollState(_both(final), plan.state.accum), _metrics(out)


@dataclasses.dataclass(frozen=True)
class Multi:
  """A weighted average of estimators; the state is the tuple of their states. The driver
  expands it into its members (their unrolls join the population's scans)."""
  estimators: tuple
  weights: tuple | None = None

  def _w(self) -> list[float]:
    w = self.weights or (1.0,) * len(self.estimators)
    total = float(sum(w))
    return [x / total for x in w]

  def init(self, theta: Any, key: jax.Array) -> tuple:
    keys = jax.random.split(key, len(self.estimators))
    return tuple(e.init(theta, k) for e, k in zip(self.estimators, keys))

  def estimate(self, theta: Any, state: tuple, key: jax.Array):
    return _unbatch(estimate_per_task([self], theta, [_batch(state)], [key[None]])[0])

  def estimate_population(self, theta: Any, states: tuple, keys: jax.Array):
    return estimate_per_task([self], theta, [states], [keys])[0]

  def combine(self, results: Sequence[tuple]) -> tuple:
    """The members' per-task results -> Multi's (weighted gradient, states, metrics)."""
    grad, states, metrics = None, [], {}
    for i, ((g, s, m), w) in enumerate(zip(results, self._w())):
      g = _scale(g, jnp.asarray(w, jnp.float32))
      grad = g if grad is None else _add(grad, g)
      states.append(s)
      metrics.update({f"{i}/{n}": v for n, v in m.items()})
    metrics["meta_loss"] = sum(w * metrics[f"{i}/meta_loss"] for i, w in enumerate(self._w()))
    return grad, tuple(states), metrics


jax.tree_util.register_dataclass(Multi, data_fields=["estimators"], meta_fields=["weights"])


def _expand(estimators: Sequence[Any], states: Sequence[Any], keys: Sequence[jax.Array]):
  """Flattens `Multi`s into their members: `(leaves, rebuild)`, where `leaves` are
  `(estimator, states, keys)` and `rebuild(results)` folds the members' results back."""
  leaves, builders = [], []
  for est, st, ks in zip(estimators, states, keys):
    if isinstance(est, Multi):
      member_keys = jax.vmap(lambda k: jax.random.split(k, len(est.estimators)))(ks)
      sub, sub_build = _expand(est.estimators, st,
                               [member_keys[:, i] for i in range(len(est.estimators))])
      start = len(leaves)
      leaves += sub
      builders.append(lambda r, start=start, n=len(sub), est=est, sub_build=sub_build:
                      est.combine(sub_build(r[start:start + n])))
    else:
      builders.append(lambda r, i=len(leaves): r[i])
      leaves.append((est, st, ks))
  return leaves, lambda results: [b(results) for b in builders]


def estimate_per_task(estimators: Sequence[Any], theta: Any, states: Sequence[Any],
                      keys: Sequence[jax.Array]) -> list[tuple[Any, Any, dict]]:
  """The driver: per-problem (unaveraged) `(meta_grads, states, metrics)` of each
  estimator's population (leading axis [P]; `keys` are per-problem keys [P]).

  Estimators with equal `unroll_key()` unroll in ONE `scan_population`; backprop ones are
  differentiated through it with respect to their per-problem copies of theta.
  """
  leaves, rebuild = _expand(estimators, states, keys)
  plans = [jax.vmap(e.plan, in_axes=(None, 0, 0))(theta, s, k) for e, s, k in leaves]
  groups: dict[tuple, list[int]] = {}
  for i, (e, _, _) in enumerate(leaves):
    groups.setdefault(e.unroll_key(), []).append(i)
  results: list[Any] = [None] * len(leaves)
  for (num_steps, pair, backprop), idx in groups.items():
    ests = [leaves[i][0] for i in idx]
    unroll = lambda thetas: scan_population(
        [e.unroller for e in ests], thetas, [plans[i].starts for i in idx],
        [plans[i].key for i in idx], num_steps, pair=pair, remat=backprop)
    thetas = [plans[i].thetas for i in idx]
    if backprop:
      def objective(ths):
        outs = unroll(ths)
        total = sum(jnp.sum(o.meta_loss * e.step_weights()) for e, (_, o) in zip(ests, outs))
        return total, outs
      grads, outs = jax.grad(objective, has_aux=True)(thetas)
    else:
      grads, outs = [None] * len(idx), unroll(thetas)
    for i, e, g, (final, out) in zip(idx, ests, grads, outs):
      results[i] = jax.vmap(e.finish)(plans[i], final, out, g)
  return rebuild(results)


def population_init(estimator, theta: Any, key: jax.Array, num_tasks: int):
  """Initial unroll states of `num_tasks` inner problems (leading axis [num_tasks])."""
  return jax.vmap(estimator.init, in_axes=(None, 0))(theta, jax.random.split(key, num_tasks))


def population_estimate(estimator, theta: Any, states: Any, key: jax.Array):
  """The driver over one population, averaging the finite per-task estimates.

  Returns `(meta_grad, states, metrics)`; `metrics["nonfinite_tasks"]` counts the tasks
  whose estimate had a NaN/inf (left out of the mean; if all are, the mean is NaN and the
  outer step skips it).
  """
  return population_estimates([estimator], theta, [states], [key])[0]


def population_estimates(estimators: Sequence[Any], theta: Any, states: Sequence[Any],
                         keys: Sequence[jax.Array]) -> list[tuple[Any, Any, dict]]:
  """`population_estimate` of several populations (one per estimator) in one driver call:
  estimators with equal `unroll_key()` unroll in ONE scan (the learned-optimizer update of
  same-shaped families batched and compiled once). Same results as separate calls."""
  task_keys = [jax.random.split(k, jax.tree.leaves(s)[0].shape[0])
               for k, s in zip(keys, states)]
  return [_population_mean(*r) for r in estimate_per_task(estimators, theta, states,
                                                          task_keys)]


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
