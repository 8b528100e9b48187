"""Meta-gradient estimators sharing one interface and one unroll-state type.

Every estimator is a frozen dataclass (a pytree whose only data is its `Unroller`'s task
family) written for ONE inner problem:

  * `init(theta, key) -> UnrollState`
  * `estimate(theta, state, key) -> (meta_grad, state, metrics)`

`population_init` / `population_estimate` vmap them over a population and average.

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
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lopt.meta._unroll import InnerState, Unroller, tree_where

__all__ = ["UnrollState", "PES", "TruncatedES", "FullES", "TBPTT", "Multi",
           "population_init", "population_estimate", "LOSS_TYPES"]

LOSS_TYPES = ("avg", "last", "last_recompute")


class UnrollState(NamedTuple):
  """The state every estimator carries for one inner problem.

  `pos`/`neg` are the antithetic trajectories (equal for non-antithetic estimators);
  `accum` is PES's accumulated perturbation since the last reset (zeros otherwise).
  """
  pos: InnerState
  neg: InnerState
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


def _antithetic_unroll(u: Unroller, theta: Any, eps: Any, states: InnerState, key: jax.Array,
                       num_steps: int):
  """Unrolls theta+eps and theta-eps (a vmapped pair sharing keys, hence data)."""
  thetas = _stack(_add(theta, eps), jax.tree.map(jnp.subtract, theta, eps))
  return jax.vmap(lambda th, s: u.unroll(th, s, key, num_steps))(thetas, states)


def _fresh(u: Unroller, theta: Any, key: jax.Array) -> UnrollState:
  del key  # the first truncation samples the problems (`Unroller.blank`)
  s = u.blank(theta)
  return UnrollState(s, s, jax.tree.map(jnp.zeros_like, theta))


def _metrics(out, delta=None) -> dict[str, jax.Array]:
  reset = out.reset if out.reset.ndim == 1 else out.reset[0]  # [T]; equal for both halves
  m = {"meta_loss": jnp.mean(out.meta_loss), "inner_loss": jnp.mean(out.loss),
       "resets": jnp.sum(reset).astype(jnp.float32)}
  if delta is not None:
    m["abs_delta_loss"] = jnp.abs(delta)
  return m


@dataclasses.dataclass(frozen=True)
class _TruncatedAntithetic:
  """Fields and the antithetic truncation shared by `PES` and `TruncatedES`."""
  unroller: Unroller
  trunc_length: int = 50
  std: float = 0.01
  clip_delta: float | None = None
  sign_delta: float | None = None

  def init(self, theta: Any, key: jax.Array) -> UnrollState:
    return _fresh(self.unroller, theta, key)

  def _unroll_pair(self, theta, state: UnrollState, key, *, persistent: bool):
    """Resets finished problems, then unrolls theta +- eps for one truncation: from the
    carried positive/negative states (`persistent`) or both from the positive one."""
    k_eps, k_unroll, k_begin = jax.random.split(key, 3)
    eps = _perturb(theta, k_eps, self.std)
    state = _begin(self.unroller, theta, state, k_begin)
    starts = _stack(state.pos, state.neg if persistent else state.pos)
    (pos, neg), out = _pair(_antithetic_unroll(self.unroller, theta, eps, starts, k_unroll,
                                               self.trunc_length))
    return eps, state, pos, neg, out


@dataclasses.dataclass(frozen=True)
class PES(_TruncatedAntithetic):
  """Truncated Persistent Evolution Strategies (antithetic)."""

  def estimate(self, theta, state: UnrollState, key):
    eps, state, pos, neg, out = self._unroll_pair(theta, state, key, persistent=True)
    losses = out.meta_loss                    # [2, T]
    reset = out.reset[0]                      # [T], equal for both halves
    delta = losses[0] - losses[1]             # [T]
    before = jnp.cumsum(reset) == 0           # steps still in the accumulated trajectory
    t = self.trunc_length
    c_accum = _shape_delta(jnp.sum(jnp.where(before, delta, 0.0)) / t, self.clip_delta,
                           self.sign_delta)
    c_eps = _shape_delta(jnp.sum(delta) / t, self.clip_delta, self.sign_delta)
    denom = 2 * self.std ** 2
    grad = _add(_scale(state.accum, c_accum / denom), _scale(eps, c_eps / denom))
    any_reset = jnp.any(reset)
    accum = jax.tree.map(lambda a, e: jnp.where(any_reset, e, a + e), state.accum, eps)
    return grad, UnrollState(pos, neg, accum), _metrics(out, jnp.mean(delta))


def _begin(u: Unroller, theta: Any, state: UnrollState, key: jax.Array) -> UnrollState:
  """Truncation-start resets (only when the unroller does not reset inside the scan); a
  reset problem starts a new PES accumulation."""
  if u.reset_every_step:
    return state
  pos, reset = u.begin(theta, state.pos, key)
  # Both halves share step and length, so they reset together, to the same new problem
  # (built once: half the init code to compile).
  neg = tree_where(reset, pos, state.neg)
  accum = jax.tree.map(lambda a: jnp.where(reset, jnp.zeros_like(a), a), state.accum)
  return UnrollState(pos, neg, accum)


def _pair(result):
  states, out = result
  return (_index(states, 0), _index(states, 1)), out


@dataclasses.dataclass(frozen=True)
class TruncatedES(_TruncatedAntithetic):
  """Antithetic ES per truncation; both halves start from the same (positive) state."""

  def estimate(self, theta, state: UnrollState, key):
    eps, state, pos, _, out = self._unroll_pair(theta, state, key, persistent=False)
    delta = jnp.mean(out.meta_loss[0] - out.meta_loss[1])
    c = _shape_delta(delta, self.clip_delta, self.sign_delta) / (2 * self.std ** 2)
    return _scale(eps, c), UnrollState(pos, pos, state.accum), _metrics(out, delta)


@dataclasses.dataclass(frozen=True)
class FullES:
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

  def estimate(self, theta, state: UnrollState, key):
    u = self.unroller
    k_init, k_eps, k_unroll, k_rec = jax.random.split(key, 4)
    s0 = u.init(theta, k_init, offset=False, length=self.unroll_length)
    eps = _perturb(theta, k_eps, self.std)
    finals, out = _antithetic_unroll(u, theta, eps, _stack(s0, s0), k_unroll,
                                     self.unroll_length)
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
    split = self.unroller.meta_loss_split

    def one(k):
      k_b, k_l = jax.random.split(k)
      return task.loss(s.params, k_l, task.sample_batch(k_b, split))[0]

    return task.normalizer(jnp.mean(jax.lax.map(one, jax.random.split(key,
                                                                      self.recompute_samples))))


@dataclasses.dataclass(frozen=True)
class TBPTT:
  """Truncated backprop through time: the exact gradient of each truncation's mean
  meta-loss with respect to theta, from the carried state (each step rematerialised)."""
  unroller: Unroller
  trunc_length: int = 50

  def init(self, theta: Any, key: jax.Array) -> UnrollState:
    return _fresh(self.unroller, theta, key)

  def estimate(self, theta, state: UnrollState, key):
    key, k_begin = jax.random.split(key)
    state = _begin(self.unroller, theta, state, k_begin)

    def objective(th):
      final, out = self.unroller.unroll(th, state.pos, key, self.trunc_length, remat=True)
      return jnp.mean(out.meta_loss), (final, out)

    grad, (final, out) = jax.grad(objective, has_aux=True)(theta)
    return grad, UnrollState(final, final, state.accum), _metrics(out)


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


for _cls, _meta in ((PES, ["trunc_length", "std", "clip_delta", "sign_delta"]),
                    (TruncatedES, ["trunc_length", "std", "clip_delta", "sign_delta"]),
                    (FullES, ["unroll_length", "std", "loss_type", "recompute_samples",
                              "clip_delta", "sign_delta"]),
                    (TBPTT, ["trunc_length"])):
  jax.tree_util.register_dataclass(_cls, data_fields=["unroller"], meta_fields=_meta)
jax.tree_util.register_dataclass(Multi, data_fields=["estimators"], meta_fields=["weights"])


def population_init(estimator, theta: Any, key: jax.Array, num_tasks: int):
  """Initial unroll states of `num_tasks` inner problems (leading axis [num_tasks])."""
  return jax.vmap(estimator.init, in_axes=(None, 0))(theta, jax.random.split(key, num_tasks))


def population_estimate(estimator, theta: Any, states: Any, key: jax.Array):
  """Vmaps `estimate` over the population and averages the finite per-task estimates.

  Returns `(meta_grad, states, metrics)`; `metrics["nonfinite_tasks"]` counts the tasks
  whose estimate had a NaN/inf (left out of the mean; if all are, the mean is NaN and the
  outer step skips it).
  """
  n = jax.tree.leaves(states)[0].shape[0]
  grads, states, metrics = jax.vmap(estimator.estimate, in_axes=(None, 0, 0))(
      theta, states, jax.random.split(key, n))
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
