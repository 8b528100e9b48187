"""Many runs of one task with one compiled program: `train_many`.

Runs that share a task, a budget and an optimizer's update program, and differ only in the
seed or in values the optimizer keeps in its state (a learning rate set through
`optax.inject_hyperparams`, say), train together under `jax.vmap`: one compilation and one
dispatch per chunk for the whole sweep instead of one per run. Each run computes what
`train` computes for it alone (same init, same per-step keys, same freezing after a
non-finite loss, same history truncation); only the float rounding of batched kernels
differs. Where batched kernels are slower per run than single-run ones (on CPU, models with
convolutions or loops), the runs go one after another through one compiled single-run
program instead: one compilation, and `train`'s numbers.

Example:
  >>> import optax
  >>> from lopt.tasks import QuadraticTask
  >>> from lopt.training import train_many
  >>> txs = [optax.inject_hyperparams(optax.adam)(learning_rate=lr) for lr in (0.01, 0.1)]
  >>> results = train_many(QuadraticTask(dim=10), txs, 50, seeds=[0, 0])
  >>> [r.steps_done for r in results]
  [50, 50]
  >>> bool(results[1].history["train_loss"][-1] < results[0].history["train_loss"][-1])
  True

Sweeps that come in stages (an LR grid, then the chosen LR's seeds) can share compiled
programs through a `Programs` cache: a later, smaller group of the same program runs padded
to an earlier group's size when the padded runs cost less than a compilation. `prepare_many`
compiles a group and returns the function that trains it, so the next group can compile
while one trains.

  >>> from lopt.training import Programs
  >>> programs = Programs()
  >>> grid = train_many(QuadraticTask(dim=10), txs, 50, seeds=[0, 0], programs=programs)
  >>> seeds = train_many(QuadraticTask(dim=10), txs[:1], 50, seeds=[1], programs=programs)
  >>> programs.compiled, programs.hits  # two chunk lengths and the evaluation, then reused
  (3, 3)
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Hashable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lopt.tasks.base import Task
from lopt.training._loop import (TrainResult, TrainState, _blocks, _eval_fn, _loss_jaxpr,
                                 _make_chunk, _unroll_block)


def _stack(trees: Sequence[Any]) -> Any:
  return jax.tree.map(lambda *x: jnp.stack(x), *trees)


def _rows(tree: Any, rows: Sequence[int]) -> dict[int, Any]:
  """{r: run r's tree} of a batched tree, sliced on the host: eager device slicing compiles a
  program per leaf shape (dozens per group on CPU)."""
  host = jax.device_get(tree)
  return {r: jax.tree.map(lambda x: jnp.asarray(x[r]), host) for r in rows}


@jax.jit
def _init(task: Task, key: jax.Array) -> Any:
  # One compiled init per task shape, shared by every run and group of the task (the task is
  # an argument, so rebuilt tasks hit the same cache entry) and compiled in a thread beside
  # the group's programs (`prepare_many`); eager init would compile its ops one by one.
  return task.init(key)


@dataclasses.dataclass
class _Size:
  """What one group size of a program costs (wall seconds), measured when it ran."""
  compile_s: float
  run_step_s: float = math.inf  # per run and step, evaluations included


class Programs:
  """Compiled `train_many` programs, kept for later calls in this process.

  A program is found by the text of its lowered computation (and its argument structure),
  so only a computation identical to one compiled before reuses it: same task shapes and
  code, same optimizer update, same group size. A group smaller than one compiled before
  for the same shapes runs padded to that size (copies of its last run, whose results are
  dropped) when the padded runs are estimated, from the earlier group's measured times, to
  cost less than compiling anew. Memory grows with the number of distinct programs; use one
  `Programs` per sweep or benchmark.
  """

  def __init__(self):
    self._compiled: dict[str, Any] = {}  # fingerprint of a lowered program -> executable
    self._sizes: dict[Hashable, dict[int, _Size]] = {}  # shapes -> {group size: costs}
    self.hits = 0  # programs reused instead of compiled
    self.compiled = 0  # programs compiled

  def group_size(self, shapes: Hashable, runs: int, num_steps: int) -> int:
    """The size to run `runs` runs of `num_steps` steps at: a compiled size if padding to
    it is estimated to be cheaper than a compilation, else `runs`."""
    sizes = self._sizes.get(shapes, {})
    if runs in sizes:
      return runs
    for n in sorted(k for k in sizes if k > runs):
      if (n - runs) * num_steps * sizes[n].run_step_s < sizes[n].compile_s:
        return n
    return runs

  def compile(self, lowered: dict[Any, Any]) -> tuple[dict[Any, Any], float]:
    """The executables of `lowered` ({name: jax Lowered}), compiling only the new ones;
    returns them and the wall seconds spent compiling."""
    keys = {k: _fingerprint(v) for k, v in lowered.items()}
    new = {k: v for k, v in lowered.items() if keys[k] not in self._compiled}
    t0 = time.perf_counter()
    for k, c in _compile_all(new).items():
      self._compiled[keys[k]] = c
    self.hits += len(lowered) - len(new)
    self.compiled += len(new)
    return {k: self._compiled[keys[k]] for k in lowered}, time.perf_counter() - t0

  def record(self, shapes: Hashable, size: int, *, compile_s: float | None = None,
             run_step_s: float | None = None) -> None:
    """Notes what a group size cost (compilation: only when it was compiled)."""
    entry = self._sizes.setdefault(shapes, {}).setdefault(size, _Size(0.0))
    if compile_s is not None:
      entry.compile_s = max(entry.compile_s, compile_s)
    if run_step_s is not None:
      entry.run_step_s = run_step_s


def _fingerprint(lowered: Any) -> str:
  # The computation (constants included) and the pytree structure a call must match.
  text = lowered.as_text()
  return hashlib.sha256(f"{lowered.in_tree}|{lowered.out_tree}|{text}".encode()).hexdigest()


def _shapes(task: Task, carry: Any, *settings: Any) -> Hashable:
  """What must match for two groups to possibly share a program, without lowering it."""
  leaves, tree = jax.tree.flatten((task, carry))
  return (str(tree), tuple((jnp.shape(x), str(jnp.result_type(x))) for x in leaves), settings)


_INIT_THREAD = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lopt-init")


def _compile_all(lowered: dict[Any, Any]) -> dict[Any, Any]:
  # XLA compiles without the GIL: two at a time overlap on a 2-core CPU (the chunk programs
  # of a conv task and the evaluation).
  if len(lowered) <= 1:
    return {k: v.compile() for k, v in lowered.items()}
  with ThreadPoolExecutor(max_workers=2) as pool:
    futures = {k: pool.submit(v.compile) for k, v in lowered.items()}
    return {k: f.result() for k, f in futures.items()}


# Per run, XLA:CPU's vmapped kernels cost more than the single-run ones on some models
# (9 Adam runs on the 2-core dev box, docs/benchmarking.md): 1.4-1.7x on 8x8 ConvNets and
# 5-7x on 28x28 ones (a vmapped convolution becomes a grouped one, which XLA:CPU does not
# hand to its fast convolution kernels); 0.97-1.26x on the LSTM (batched matmuls inside the
# recurrent loop: no gain). MLPs and transformers mostly gain from vmap (0.6-0.9x).
def _cpu_loss_jaxpr(task: Task, params: Any) -> str:
  # Traced once per group for both CPU choices (unrolled conv blocks, one by one); "" off CPU.
  return _loss_jaxpr(task, params) if jax.default_backend() == "cpu" else ""


def _one_by_one_default(cpu_jaxpr: str) -> bool:
  return any(op in cpu_jaxpr for op in ("conv_general_dilated", "scan[", "while["))


def one_by_one(task: Task) -> bool:
  """Whether `train_many` runs `task`'s groups one after another by default (`vmap=None`):
  on CPU, when the task's loss has a convolution or a loop; vmapped otherwise.

  Example:
    >>> from lopt.tasks import get_task
    >>> one_by_one(get_task("digits-conv-8-16")), one_by_one(get_task("digits-mlp-32"))
    (True, False)
  """
  params = jax.eval_shape(task.init, jax.random.PRNGKey(0))
  return _one_by_one_default(_cpu_loss_jaxpr(task, params))


def prepare_many(task: Task, optimizers: Sequence[optax.GradientTransformation],
                 num_steps: int, *, seeds: Sequence[int], eval_every: int | None = None,
                 eval_split: str = "valid", eval_batches: int = 8,
                 eval_params: Callable[[Any, Any], Any] | None = None,
                 programs: Programs | None = None,
                 vmap: bool | None = None) -> Callable[[], list[TrainResult]]:
  """`train_many` in two steps: builds, compiles and initialises the group now, and returns
  the function that trains it. A caller can prepare the next group (in a thread) while this
  one trains: compilation is mostly single-threaded, so on a CPU it overlaps with training.

  Arguments as `train_many`. The returned function takes no arguments and returns what
  `train_many` returns; call it once.
  """
  n = len(optimizers)
  if n == 0 or n != len(seeds):
    raise ValueError(f"need one seed per optimizer, got {n} optimizers and {len(seeds)} seeds")
  if not (isinstance(num_steps, (int, np.integer)) and num_steps > 0):
    raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")
  eval_every = min(int(eval_every or max(1, math.ceil(num_steps / 20))), num_steps)
  txs = [optax.with_extra_args_support(t) for t in optimizers]
  # (init, data, eval) keys per run, split as `train` splits them (the same eager programs).
  keys = np.stack([np.asarray(jax.random.split(jax.random.PRNGKey(s), 3)) for s in seeds])
  # A task's first init compiles (~0.5 s on CPU): it runs in a thread while this one lowers
  # and compiles the group's programs from the parameters' shapes.
  inits = _INIT_THREAD.submit(lambda ks: [_init(task, jnp.asarray(k)) for k in ks], keys[:, 0])
  params1 = jax.eval_shape(_init, task, jnp.asarray(keys[0, 0]))
  cpu_jaxpr = _cpu_loss_jaxpr(task, params1)
  one_by_one = _one_by_one_default(cpu_jaxpr) if vmap is None else not vmap
  carry1 = jax.eval_shape(lambda p: TrainState(p, txs[0].init(p), jnp.int32(0), jnp.int32(0)),
                          params1)
  runs, shapes = n, None  # copies of the last run may pad a vmapped group to a compiled size
  if programs is not None and not one_by_one:
    shapes = _shapes(task, carry1, eval_every, eval_split, eval_batches)
    n = programs.group_size(shapes, runs, num_steps)
    txs = txs + [txs[-1]] * (n - runs)
    keys = np.concatenate([keys, np.repeat(keys[-1:], n - runs, axis=0)])
  data_keys, eval_keys = jnp.asarray(keys[:, 1]), jnp.asarray(keys[:, 2])

  @jax.jit
  def start(params):  # one program instead of hundreds of eager dispatches
    return TrainState(_stack(params), _stack([tx.init(p) for tx, p in zip(txs, params)]),
                      jnp.zeros([n], jnp.int32), -jnp.ones([n], jnp.int32))

  chunk = _make_chunk(txs[0], None)
  block = _unroll_block(task, params1, cpu_jaxpr)

  def one_eval(task, c, k):
    p = c.params if eval_params is None else eval_params(c.opt_state, c.params)
    return _eval_fn(task, p, k, eval_split, eval_batches, vectorize=block is not None)

  if one_by_one:  # the single-run programs of `train`, compiled once for all runs
    many, evaluate, carry, key = chunk, jax.jit(one_eval), carry1, data_keys[0]
  else:
    @functools.partial(jax.jit, static_argnames=("length", "unroll"))
    def many(task, carry, keys, length, unroll):
      return jax.vmap(lambda c, k: chunk(task, c, k, length=length, unroll=unroll))(carry, keys)

    evaluate = jax.jit(jax.vmap(one_eval, in_axes=(None, 0, 0)))
    carry, key = jax.eval_shape(start, [params1] * n), data_keys  # shapes only, for now

  eval_steps = list(range(0, num_steps, eval_every)) + [num_steps]
  E = len(eval_steps)

  # Every program of the group, compiled up front (outside the timed region), two at a time.
  plans = [_blocks(eval_steps[i + 1] - eval_steps[i], block) for i in range(E - 1)]
  lowered = {c: many.lower(task, carry, key, length=c, unroll=c if block else 1)
             for c in sorted({c for calls in plans for c in calls})}
  lowered["eval"] = evaluate.lower(task, carry, key if one_by_one else eval_keys)
  if programs is None:
    compiled = _compile_all(lowered)
  else:
    compiled, compile_s = programs.compile(lowered)
    if compile_s > 0 and shapes is not None:
      programs.record(shapes, n, compile_s=compile_s)
  evaluate = compiled.pop("eval")
  params = inits.result()
  carry0 = start(params + [params[-1]] * (n - runs))
  if one_by_one:
    group: _Group = _OneByOne(task, compiled, evaluate, carry0, data_keys, eval_keys)
  else:
    group = _Vmapped(task, compiled, evaluate, carry0, data_keys, eval_keys, runs)

  def train() -> list[TrainResult]:
    train_loss = np.full([n, num_steps], np.nan, np.float32)
    valid = np.full([n, E], np.nan, np.float32)
    acc = np.full([n, E], np.nan, np.float32)
    wall = np.zeros([n, E], np.float64)
    stop_at: list[int | None] = [None] * n  # the chunk index in which a run stopped
    bad_steps = [-1] * n
    kept: list[Any] = [None] * n  # (params, opt_state) at the last finite eval of a stopped run
    t_start = time.perf_counter()

    live = list(range(runs))
    valid[:, 0], acc[:, 0] = group.evaluate(live)
    for i, calls in enumerate(plans):
      previous = group.state
      train_loss[:, eval_steps[i]:eval_steps[i + 1]], seconds = group.run(calls, live)
      wall[:, i + 1] = wall[:, i] + seconds
      bad = group.bad_steps()
      stopping = [r for r in live if bad[r] >= 0]
      if stopping:  # one host copy of the last evaluated state for all runs stopping here
        last = group.rows(previous, stopping)
        for r in stopping:
          stop_at[r], bad_steps[r], kept[r] = i, int(bad[r]), last[r]
        live = [r for r in live if stop_at[r] is None]
      if not live:
        break
      valid[:, i + 1], acc[:, i + 1] = group.evaluate(live)
    if shapes is not None:
      per_step = (time.perf_counter() - t_start) / (n * eval_steps[i + 1])
      programs.record(shapes, n, run_step_s=per_step)

    final = group.rows(group.state, live)  # padded copies are not copied out
    results = []
    for r in range(runs):
      h = {"train_loss": train_loss[r].copy(), "eval_step": np.asarray(eval_steps, np.int64),
           "valid_loss": valid[r].copy(), "valid_accuracy": acc[r].copy(),
           "wall_time": wall[r].copy()}
      stopped, steps_done = None, num_steps
      if stop_at[r] is None:
        p, s = final[r]
      else:
        i = stop_at[r]
        p, s = kept[r]
        h["train_loss"][bad_steps[r]:] = np.nan
        stopped = (f"non-finite loss at step {bad_steps[r]}; stopped and kept the params of "
                   f"step {eval_steps[i]}")
        for k in ("eval_step", "valid_loss", "valid_accuracy", "wall_time"):
          h[k] = h[k][:i + 1]
        steps_done = eval_steps[i]
      results.append(TrainResult(p, s, h, steps_done, stopped))
    return results

  return train


class _Group:
  """How a prepared group steps, evaluates and reads its runs' state."""
  state: Any

  def run(self, calls: Sequence[int], live: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Trains the live runs through compiled calls of `calls` steps; returns the losses
    `[n, sum(calls)]` and the seconds each run took `[n]`."""
    raise NotImplementedError

  def evaluate(self, live: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    raise NotImplementedError  # (valid loss [n], accuracy [n]); NaN where not evaluated

  def bad_steps(self) -> np.ndarray:
    raise NotImplementedError  # [n]: the first non-finite step of each run, or -1

  def rows(self, state: Any, rs: Sequence[int]) -> dict[int, tuple[Any, Any]]:
    raise NotImplementedError  # {r: (params, opt_state)} of `state`


class _Vmapped(_Group):
  """All runs (padded copies included) in one batched state, stepped by vmapped programs;
  each run is charged the group's time divided by the number of real runs."""

  def __init__(self, task, compiled, evaluate, carry, data_keys, eval_keys, runs):
    self.task, self.compiled, self._evaluate = task, compiled, evaluate
    self.state, self.data_keys, self.eval_keys, self.runs = carry, data_keys, eval_keys, runs

  def run(self, calls, live):
    t0 = time.perf_counter()
    parts = []
    for c in calls:
      self.state, part = self.compiled[c](self.task, self.state, self.data_keys)
      parts.append(part)  # [n, c]
    losses = np.concatenate([np.asarray(x) for x in jax.block_until_ready(parts)], axis=1)
    return losses, (time.perf_counter() - t0) / self.runs

  def evaluate(self, live):
    v, a = self._evaluate(self.task, self.state, self.eval_keys)
    return np.asarray(v), np.asarray(a)

  def bad_steps(self):
    return np.asarray(self.state.bad_step)

  def rows(self, state, rs):
    params, opt_states = _rows(state.params, rs), _rows(state.opt_state, rs)
    return {r: (params[r], opt_states[r]) for r in rs}


class _OneByOne(_Group):
  """One state per run, stepped one run after another by the single-run programs (the
  programs `train` runs, so each run's numbers are `train`'s to the bit); runs that stopped
  are not stepped further, and each run is charged its own time."""

  def __init__(self, task, compiled, evaluate, carry, data_keys, eval_keys):
    self.task, self.compiled, self._evaluate = task, compiled, evaluate
    self.data_keys, self.eval_keys = data_keys, eval_keys
    n = len(data_keys)
    host = jax.device_get(carry)  # the batched start state, sliced on the host
    self.state = [jax.tree.map(lambda x: jnp.asarray(x[r]), host) for r in range(n)]

  def run(self, calls, live):
    n = len(self.state)
    losses = np.full([n, sum(calls)], np.nan, np.float32)
    seconds = np.zeros([n])
    state = list(self.state)
    for r in live:
      t0 = time.perf_counter()
      parts = []
      for c in calls:
        state[r], part = self.compiled[c](self.task, state[r], self.data_keys[r])
        parts.append(part)
      losses[r] = np.concatenate([np.asarray(x) for x in jax.block_until_ready(parts)])
      seconds[r] = time.perf_counter() - t0
    self.state = state
    return losses, seconds

  def evaluate(self, live):
    n = len(self.state)
    v, a = np.full([n], np.nan, np.float32), np.full([n], np.nan, np.float32)
    for r in live:
      v[r], a[r] = (np.asarray(x) for x in self._evaluate(self.task, self.state[r],
                                                           self.eval_keys[r]))
    return v, a

  def bad_steps(self):
    return np.asarray([int(s.bad_step) for s in self.state])

  def rows(self, state, rs):
    return {r: (state[r].params, state[r].opt_state) for r in rs}


def train_many(task: Task, optimizers: Sequence[optax.GradientTransformation], num_steps: int,
               *, seeds: Sequence[int], eval_every: int | None = None,
               eval_split: str = "valid", eval_batches: int = 8,
               eval_params: Callable[[Any, Any], Any] | None = None,
               programs: Programs | None = None, vmap: bool | None = None
               ) -> list[TrainResult]:
  """Trains one run per `(optimizer, seed)` pair with one compiled program.

  Args:
    task: the task.
    optimizers: one optax transform per run. They must share one update program: the same
      transform, differing only in the values of their states (hyperparameters injected with
      `optax.inject_hyperparams`); the first one's update is used for every run.
    num_steps: steps per run.
    seeds: one seed per run, as `train`'s `seed` (init, batches, eval batches).
    eval_every, eval_split, eval_batches, eval_params: as in `train`.
    programs: a `Programs` cache shared with other calls: reuse their compiled programs
      (padding a vmapped group to their size when that is cheaper than compiling).
    vmap: True: the runs as one vmapped program. False: the runs one after another through
      one compiled single-run program (`train`'s, so their numbers are `train`'s). None
      (default): vmapped, except on CPU for tasks whose loss has a convolution or a loop,
      where XLA:CPU's batched kernels cost more per run than the single-run ones.

  Returns:
    One `TrainResult` per run, in order; `history["wall_time"]` is the run's own training
    time one by one, and the group's divided by the number of runs when vmapped.
  """
  return prepare_many(task, optimizers, num_steps, seeds=seeds, eval_every=eval_every,
                      eval_split=eval_split, eval_batches=eval_batches,
                      eval_params=eval_params, programs=programs, vmap=vmap)()
