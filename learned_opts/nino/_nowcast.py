"""Nowcasting as an optax wrapper: `nowcast(base, nowcaster, ...)`.

Every `period` steps, one step of the base optimizer is replaced by a jump to the
parameters a nowcaster predicts from `ctx` earlier snapshots (NiNo, Knyazev et al. 2025;
WNN, Jang et al. 2023). The base optimizer's state (e.g. Adam moments) is kept as is, as
in the reference `optim/nino.py`, and the nowcast counts as one step.

Timeline with `period=1000, ctx=5` (spacing = period // ctx = 200), `count` = number of
`update` calls so far (0-based index of the current call):

* on calls with `(count + 1) % 200 == 0` the current params are written to the snapshot
  buffer (slot `((count + 1) // 200 - 1) % 5`), *before* this call's update;
* on calls with `(count + 1) % 1000 == 0` (the buffer is then full, oldest first) the
  update is `nowcaster.predict(history, k) - params` instead of the base update, with
  `k = k_schedule[min(count // period, len - 1)]`;
* gradients are not used on those calls: `needs_gradients(state)` tells a training loop
  whether the *next* call needs them, so it can skip the backward pass.

A nowcaster is any object with `predict(history, k) -> params`, where `history` is the
params pytree with a leading `[ctx]` axis (oldest first) and `k` an int32 scalar (traced)
horizon in units of the snapshot spacing; optional attributes `ctx` and `max_k`. It must be
jittable; graph construction happens at trace time (static per params structure).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lopt.learned_opts import _hub
from lopt.learned_opts.nino.graph import graph_arch  # re-exported: the one task translator

__all__ = [
    "NowcasterLike",
    "NowcastState",
    "LinearNowcaster",
    "nowcast",
    "needs_gradients",
    "calls_to_next_nowcast",
    "NowcastHooks",
    "NOWCAST_HOOKS",
    "k_schedule",
    "default_period",
    "SHIPPED",
    "resolve_nowcaster",
    "graph_arch",
]


class NowcasterLike(Protocol):
  """What `nowcast` needs: predicts future parameters from a history of snapshots.

  (`nino.Nowcaster`, the NiNo / WNN+ model, is one; `LinearNowcaster` another.)
  """

  def predict(self, history: Any, k: jax.Array) -> Any:
    """history: params pytree with a leading [ctx] axis (oldest first); k: horizon >= 1."""
    ...


class NowcastState(NamedTuple):
  """State of `nowcast`: arrays only.

  Attributes:
    base: the wrapped optimizer's state (untouched on nowcast steps).
    history: params pytree with a leading [ctx] axis: the snapshot buffer, oldest first
      once full (float32 by default).
    count: int32, number of `update` calls so far.
    nowcasts: int32, number of nowcasts applied (non-finite predictions are skipped).
    next_nowcast: bool, whether the next `update` call is a nowcast (no gradients needed).
    period: int32, steps between nowcasts (constant; lets a training loop plan on the host,
      see `calls_to_next_nowcast`).
  """
  base: Any
  history: Any
  count: jax.Array
  nowcasts: jax.Array
  next_nowcast: jax.Array
  period: jax.Array


def k_schedule(max_steps: int, period: int = 1000, *, max_k: int = 40,
               k_decay: float = 2.0) -> np.ndarray:
  """The reference's decaying horizon schedule, one k per nowcast.

  `k_i = round(linspace(max_k ** (1/p), 1, max(1, max_steps // period)) ** p)`, p = k_decay:
  far jumps early in training, short ones late.

  Example:
    >>> k_schedule(10_000, 1000).tolist()
    [40, 33, 26, 21, 16, 11, 8, 5, 3, 1]
  """
  if max_steps < 1 or period < 1 or max_k < 1 or k_decay <= 0:
    raise ValueError(f"k_schedule needs max_steps, period, max_k >= 1 and k_decay > 0; got "
                     f"max_steps={max_steps}, period={period}, max_k={max_k}, k_decay={k_decay}")
  n = max(1, max_steps // period)
  ks = np.linspace(max_k ** (1.0 / k_decay), 1.0, num=n) ** k_decay
  return np.maximum(1, np.round(ks)).astype(np.int32)


def default_period(num_steps: int, *, ctx: int = 5, full: int = 1000,
                  nowcasts: int = 10) -> int:
  """Period scaled to the run length, as in the reference's toy checks.

  Runs of >= `full * nowcasts` steps use `full` (the paper's 1000); shorter runs use
  `num_steps // nowcasts` rounded down to a multiple of `ctx` (at least `ctx`), e.g.
  1000 steps -> period 100, 2000 -> 200.
  """
  p = min(full, num_steps // nowcasts)
  return max(ctx, (p // ctx) * ctx)


@dataclasses.dataclass(frozen=True)
class LinearNowcaster:
  """Baseline nowcaster: least-squares line through the snapshots, extrapolated.

  Each parameter is fitted independently against snapshot times 0..ctx-1 and moved to time
  `ctx - 1 + scale * k` (units of the snapshot spacing). The learned nowcasters predict
  jumps far shorter than k spacings (they saturate), so the default `scale` is small.

  Example:
    >>> h = {"w": jnp.arange(5.0)[:, None] * jnp.ones((5, 3))}   # w_t = t
    >>> LinearNowcaster(scale=1.0).predict(h, 2)["w"].tolist()
    [6.0, 6.0, 6.0]
  """
  scale: float = 0.25
  ctx: int = 5
  max_k: int = 40
  name: str = "linear"

  def predict(self, history, k):
    def one(h):  # h: [ctx, ...]
      n = h.shape[0]
      t = jnp.arange(n, dtype=jnp.float32) - (n - 1) / 2.0     # centred times
      t = t.reshape((n,) + (1,) * (h.ndim - 1))
      hf = h.astype(jnp.float32)
      slope = jnp.sum(t * (hf - hf.mean(0)), 0) / jnp.sum(t * t)
      mean = hf.mean(0)
      horizon = (n - 1) / 2.0 + self.scale * jnp.asarray(k, jnp.float32)
      return (mean + slope * horizon).astype(h.dtype)
    return jax.tree_util.tree_map(one, history)


def _attr(nowcaster, name: str, config_name: str):
  """`nowcaster.<name>`, else `nowcaster.config.<config_name>`, else None."""
  if getattr(nowcaster, name, None) is not None:
    return getattr(nowcaster, name)
  return getattr(getattr(nowcaster, "config", None), config_name, None)


# Nowcasters trained by lopt on its own trajectories: the weights hub's bundled nowcaster rows
# (`learned_opts/checkpoints/<name>/`, written by `save_nowcaster`), name -> description.
SHIPPED = {name: ci.description for name, ci in _hub.NOWCASTERS.items() if ci.format == "orbax"}


def shipped_dir() -> pathlib.Path:
  """Where the shipped nowcasters live: the weights hub's bundled folder (`<name>/`)."""
  return _hub.bundled_dir()


def resolve_nowcaster(name_or_path: str | os.PathLike, **load_kwargs):
  """A nowcaster by name or path: "linear" (`LinearNowcaster`), a shipped name (`SHIPPED`),
  an official name ("nino", "wnnp", "wnnp_h32"), a `.pt` file or a saved directory.

  Example:
    >>> resolve_nowcaster("linear").name
    'linear'
  """
  name = os.fspath(name_or_path)
  if name == "linear":
    return LinearNowcaster()
  if name.startswith("linear@"):
    return LinearNowcaster(scale=float(name.split("@", 1)[1]))
  from lopt.learned_opts.nino.nowcaster import load_nowcaster
  if name in SHIPPED:
    path = shipped_dir() / name
    if not path.is_dir():
      raise FileNotFoundError(f"shipped nowcaster {name!r} is missing from this install "
                              f"({path}); reinstall lopt or fit one with `lopt nowcast fit`")
    return load_nowcaster(path)
  return load_nowcaster(name, **load_kwargs)


def nowcast(base: optax.GradientTransformation, nowcaster: NowcasterLike, *, max_steps: int,
            period: int = 1000, ctx: int | None = None, k_decay: float = 2.0,
            max_k: int | None = None, history_dtype: Any = jnp.float32,
            arch: dict | None = None) -> optax.GradientTransformationExtraArgs:
  """Wraps `base` so that every `period`-th step jumps to nowcasted parameters.

  Args:
    base: any optax transform (Adam, a baseline, or a learned optimizer's `make(...)`);
      extra keyword arguments to `update` (e.g. `loss=`) are passed through to it.
    nowcaster: an object with `predict(history, k)` (see module docstring), e.g.
      `lopt.learned_opts.nino.load_nowcaster("nino")` or `LinearNowcaster()`.
    max_steps: the planned run length; only shapes the k schedule.
    period: steps between nowcasts; must be a multiple of `ctx`.
    ctx: snapshots per nowcast, taken every `period // ctx` steps (default: the
      nowcaster's `ctx`, else 5).
    k_decay: power `p` of the k schedule (see `k_schedule`).
    max_k: largest horizon (default: the nowcaster's `max_k`, else 40).
    history_dtype: dtype of the snapshot buffer.
    arch: optional architecture description passed to `nowcaster.predict(..., arch=)` (the
      neural-graph format of `nino.graph`); None lets the nowcaster infer it.

  Returns:
    An `optax.GradientTransformationExtraArgs` whose state is a `NowcastState`. Its
    `update` takes an optional static `nowcast_phase=`: None (default) decides per call
    with `lax.cond`; "base" / "nowcast" skip the cond when the caller knows (from
    `calls_to_next_nowcast`) which kind of call this is, so that unrolled loops do not
    trace the nowcaster into every step.

  Example:
    >>> import optax
    >>> opt = nowcast(optax.adam(1e-2), LinearNowcaster(), max_steps=100, period=10, ctx=5)
    >>> params = {"w": jnp.ones(3)}
    >>> state = opt.init(params)
    >>> updates, state = opt.update({"w": jnp.ones(3)}, state, params)
    >>> bool(needs_gradients(state))
    True
  """
  want_ctx = _attr(nowcaster, "ctx", "ctx")
  ctx = int(ctx if ctx is not None else (want_ctx or 5))
  if want_ctx is not None and int(want_ctx) != ctx:
    raise ValueError(f"nowcast: ctx={ctx} but the nowcaster was trained with ctx={want_ctx}; "
                     "omit ctx or pass the nowcaster's value")
  if ctx < 1 or period < ctx or period % ctx:
    raise ValueError(f"nowcast: period ({period}) must be a positive multiple of ctx ({ctx}); "
                     f"e.g. period={max(ctx, period // ctx * ctx)}")
  max_k = int(max_k if max_k is not None else (_attr(nowcaster, "max_k", "seq_len") or 40))
  ks = jnp.asarray(k_schedule(max_steps, period, max_k=max_k, k_decay=k_decay))
  spacing = period // ctx
  base = optax.with_extra_args_support(base)

  def init_fn(params):
    history = jax.tree_util.tree_map(
        lambda p: jnp.zeros((ctx,) + jnp.shape(p), history_dtype), params)
    return NowcastState(base=base.init(params), history=history,
                        count=jnp.zeros([], jnp.int32), nowcasts=jnp.zeros([], jnp.int32),
                        next_nowcast=jnp.asarray(period == 1),
                        period=jnp.asarray(period, jnp.int32))

  def update_fn(updates, state, params=None, *, nowcast_phase: str | None = None,
                **extra_args):
    if nowcast_phase not in (None, "base", "nowcast"):
      raise ValueError(f"nowcast: nowcast_phase must be None, 'base' or 'nowcast', got "
                       f"{nowcast_phase!r}")
    if params is None:
      raise ValueError("nowcast: update(...) needs params: call opt.update(grads, state, params)")
    count = state.count
    snap = (count + 1) % spacing == 0
    slot = ((count + 1) // spacing - 1) % ctx

    def write(h, p):  # h: [ctx, ...]; O(size of p), in place under jit
      old = jax.lax.dynamic_index_in_dim(h, slot, 0, keepdims=False)
      new = jnp.where(snap, p.astype(h.dtype), old)
      return jax.lax.dynamic_update_index_in_dim(h, new, slot, 0)

    history = jax.tree_util.tree_map(write, state.history, params)
    is_nowcast = (count + 1) % period == 0

    def base_step(_):
      new_updates, new_base = base.update(updates, state.base, params, **extra_args)
      return new_updates, new_base, jnp.zeros([], jnp.int32)

    out_shape = jax.eval_shape(base_step, None)[0]

    def nowcast_step(_):
      k = ks[jnp.minimum(count // period, ks.shape[0] - 1)]
      pred = (nowcaster.predict(history, k) if arch is None
              else nowcaster.predict(history, k, arch=arch))
      ok = jnp.all(jnp.stack([jnp.all(jnp.isfinite(x))
                              for x in jax.tree_util.tree_leaves(pred)]))
      jump = jax.tree_util.tree_map(
          lambda pr, p, s: jnp.where(ok, pr.astype(jnp.float32) - p.astype(jnp.float32),
                                     0.0).astype(s.dtype), pred, params, out_shape)
      return jump, state.base, ok.astype(jnp.int32)

    if nowcast_phase == "base":          # the caller guarantees this is not a nowcast call
      new_updates, new_base, applied = base_step(None)
    elif nowcast_phase == "nowcast":     # ... or that it is one
      new_updates, new_base, applied = nowcast_step(None)
    else:
      new_updates, new_base, applied = jax.lax.cond(is_nowcast, nowcast_step, base_step, None)
    new_count = count + 1
    return new_updates, NowcastState(
        base=new_base, history=history, count=new_count, nowcasts=state.nowcasts + applied,
        next_nowcast=(new_count + 1) % period == 0, period=state.period)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _nowcast_states(opt_state: Any) -> list[NowcastState]:
  return [s for s in jax.tree_util.tree_leaves(
      opt_state, is_leaf=lambda x: isinstance(x, NowcastState)) if isinstance(s, NowcastState)]


def calls_to_next_nowcast(opt_state: Any) -> int | None:
  """On the host: how many `update` calls come before the next nowcast (0: the next call
  is one); None when `opt_state` holds no `NowcastState`. Reads device values (syncs).

  Example:
    >>> opt = nowcast(optax.sgd(0.1), LinearNowcaster(), max_steps=100, period=10, ctx=5)
    >>> calls_to_next_nowcast(opt.init({"w": jnp.ones(3)}))
    9
  """
  found = _nowcast_states(opt_state)
  if not found:
    return None
  return min(int(s.period) - 1 - int(s.count) % int(s.period) for s in found)


def needs_gradients(opt_state: Any) -> jax.Array:
  """Whether the next `update` call needs gradients (False right before a nowcast).

  Searches `opt_state` (possibly nested in `optax.chain` tuples) for `NowcastState`s;
  returns True when there is none. Use it to skip the backward pass::

      grads = jax.lax.cond(needs_gradients(state), lambda: jax.grad(loss)(params),
                           lambda: jax.tree_util.tree_map(jnp.zeros_like, params))
  """
  found = _nowcast_states(opt_state)
  if not found:
    return jnp.asarray(True)
  return jnp.logical_not(jnp.any(jnp.stack([s.next_nowcast for s in found])))


class NowcastHooks:
  """The step hooks (`lopt.training.StepHooks`) of a nowcast wrapper: skip the backward pass
  before a nowcast and run each nowcast step as its own compiled call when the state holds
  exactly one period."""

  def needs_gradients(self, opt_state: Any) -> jax.Array:
    return needs_gradients(opt_state)

  def schedule(self, opt_state: Any) -> tuple[int, int] | None:
    periods = {int(s.period) for s in _nowcast_states(opt_state)}
    if len(periods) != 1:
      return None
    return calls_to_next_nowcast(opt_state), periods.pop()


NOWCAST_HOOKS = NowcastHooks()


def __getattr__(name: str) -> Any:
  if name == "Nowcaster":  # the Protocol's old name; `nino.Nowcaster` is the model class
    import warnings
    warnings.warn("the nowcaster Protocol is now `NowcasterLike`; `Nowcaster` in this module "
                  "is deprecated (`lopt.learned_opts.nino.Nowcaster` is the NiNo/WNN+ model)",
                  DeprecationWarning, stacklevel=2)
    return NowcasterLike
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
