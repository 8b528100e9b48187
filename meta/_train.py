"""The outer loop: one jitted outer step over a sharded population, plus the run loop
(metrics, evaluation, checkpoints, resume).

`MetaTrainer` holds a tuple of estimators (one per task family, each vmapped over its
`num_tasks` inner problems) and an optax outer optimizer. The population is sharded along
its leading axis over a 1-D mesh `("pop",)` of all devices (of all processes after
`jax.distributed.initialize`); theta and the outer optimizer state are replicated. jit
inserts the cross-device mean of the meta-gradient.

Example:
  >>> import jax, optax
  >>> from lopt.meta import testing, ConstantSchedule, Unroller, PES, MetaTrainer
  >>> u = Unroller(testing.QuadraticFamily(dim=4), testing.LogLRAdam(), ConstantSchedule(20))
  >>> trainer = MetaTrainer(u.lopt, [PES(u, trunc_length=5)], [8], optax.adam(1e-2))
  >>> state = trainer.init(jax.random.PRNGKey(0))
  >>> state, metrics = trainer.step(state)
  >>> int(state.step)
  1
"""

from __future__ import annotations

import pathlib
import time
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from lopt.meta._checkpoint import SMALL_STATE, load_small, save_small
from lopt.rundir import Checkpointer, MetricsWriter, to_host
from lopt.meta._estimators import population_estimates, population_init

__all__ = ["MetaState", "MetaTrainer", "outer_optimizer", "run", "MetricsWriter"]


class MetaState(NamedTuple):
  """Everything an outer step reads and writes; checkpointed whole."""
  theta: Any
  opt_state: Any
  unroll: tuple        # one population state per estimator, leading axis [num_tasks]
  key: jax.Array
  step: jax.Array      # int32 [], outer steps done
  skipped: jax.Array   # int32 [], outer steps skipped for a non-finite meta-gradient


def outer_optimizer(learning_rate: float = 3e-4, *, clip_value: float | None = None,
                    clip_norm: float | None = None, accumulate: int = 1,
                    weight_decay: float = 0.0, b1: float = 0.9, b2: float = 0.999
                    ) -> optax.GradientTransformation:
  """Adam(W) on theta with optional clipping (by value, then by global norm) and gradient
  accumulation over `accumulate` outer steps (optax.MultiSteps)."""
  parts = []
  if clip_value is not None:
    parts.append(optax.clip(clip_value))
  if clip_norm is not None:
    parts.append(optax.clip_by_global_norm(clip_norm))
  if weight_decay:
    parts.append(optax.adamw(learning_rate, b1=b1, b2=b2, weight_decay=weight_decay))
  else:
    parts.append(optax.adam(learning_rate, b1=b1, b2=b2))
  opt = optax.chain(*parts)
  if accumulate > 1:
    opt = optax.MultiSteps(opt, every_k_schedule=accumulate)
  return opt


def _to_global(tree: Any, shardings: Any) -> Any:
  """Places host values with `shardings` (works across processes: every process passes
  the same full values and contributes its addressable shards)."""
  def put(x, s):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, s, lambda idx: x[idx])
  return jax.tree.map(put, tree, shardings)


# XLA:CPU spends most of the first outer step in LLVM; its optimisation level 1 (default 2)
# compiles the PES step ~25% faster with steps as fast (benchmarks/meta_throughput.py; level
# 0 made steps 6x slower). Only on CPU: GPU kernels are not affected by this flag's tradeoff.
CPU_COMPILER_OPTIONS = {"xla_backend_optimization_level": 1}


class MetaTrainer:
  """A population of inner problems and the jitted outer step.

  Args:
    lopt: the learned optimizer being meta-trained.
    estimators: one estimator per task family (see `lopt.meta.PES` etc.).
    num_tasks: inner problems per estimator; each must be a multiple of the device count.
    outer: the optax transform applied to the meta-gradient.
    devices: devices of the population mesh (default: all, of all processes).
    theta0: initial theta (default: `lopt.init_meta`).
  """

  def __init__(self, lopt: Any, estimators: Sequence[Any], num_tasks: Sequence[int],
               outer: optax.GradientTransformation, *, devices: Sequence[Any] | None = None,
               theta0: Any = None):
    if len(estimators) != len(num_tasks):
      raise ValueError("give one num_tasks per estimator")
    self.lopt, self.outer = lopt, outer
    self.num_tasks = tuple(int(n) for n in num_tasks)
    devices = list(devices or jax.devices())
    self.mesh = Mesh(np.array(devices), ("pop",))
    for n in self.num_tasks:
      if n % len(devices):
        raise ValueError(f"num_tasks={n} is not a multiple of the {len(devices)} devices; "
                         "choose a multiple so the population shards evenly")
    self.replicated = NamedSharding(self.mesh, P())
    self.sharded = NamedSharding(self.mesh, P("pop"))
    est = tuple(estimators)
    self.estimators = _to_global(est, jax.tree.map(lambda _: self.replicated, est))
    self.theta0 = theta0
    shapes = jax.eval_shape(self._init, self.estimators, jax.random.PRNGKey(0))
    self.shardings = MetaState(
        *(jax.tree.map(lambda _: self.replicated, x) for x in shapes[:2]),
        jax.tree.map(lambda _: self.sharded, shapes.unroll),
        *(self.replicated for _ in range(3)))
    self.block = jax.default_backend() == "cpu"
    options = CPU_COMPILER_OPTIONS if self.block else None
    self._init_jit = jax.jit(self._init, out_shardings=self.shardings,
                             compiler_options=options)
    self._step_jit = jax.jit(self._step, out_shardings=(self.shardings, self.replicated),
                             donate_argnums=(1,), compiler_options=options)

  def _init(self, estimators, key) -> MetaState:
    k_theta, k_pop, k_run = jax.random.split(key, 3)
    theta = self.lopt.init_meta(k_theta) if self.theta0 is None else self.theta0
    theta = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), theta)
    unroll = tuple(population_init(e, theta, k, n) for e, k, n in
                   zip(estimators, jax.random.split(k_pop, len(estimators)), self.num_tasks))
    zero = jnp.zeros((), jnp.int32)
    return MetaState(theta, self.outer.init(theta), unroll, k_run, zero, zero)

  def _step(self, estimators, state: MetaState):
    key, k_step = jax.random.split(state.key)
    keys = jax.random.split(k_step, len(estimators))
    total = float(sum(self.num_tasks))
    grad, unroll, metrics = None, [], {}
    ests = population_estimates(estimators, state.theta, state.unroll, list(keys))
    for i, ((g, s, m), n) in enumerate(zip(ests, self.num_tasks)):
      g = jax.tree.map(lambda x: x * (n / total), g)
      grad = g if grad is None else jax.tree.map(jnp.add, grad, g)
      unroll.append(s)
      for name, v in m.items():
        metrics[name] = metrics.get(name, 0.0) + v * (n / total)
        if len(estimators) > 1:
          metrics[f"group{i}/{name}"] = v
    finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grad)]))
    updates, opt_state = self.outer.update(grad, state.opt_state, state.theta)
    theta = optax.apply_updates(state.theta, updates)
    theta = jax.tree.map(lambda a, b: jnp.where(finite, a, b), theta, state.theta)
    opt_state = jax.tree.map(lambda a, b: jnp.where(finite, a, b), opt_state, state.opt_state)
    metrics["grad_norm"] = optax.tree.norm(grad)
    metrics["skipped"] = 1 - finite.astype(jnp.int32)
    new = MetaState(theta, opt_state, tuple(unroll), key, state.step + 1,
                    state.skipped + 1 - finite.astype(jnp.int32))
    return new, metrics

  def init(self, key: jax.Array) -> MetaState:
    """The initial state (theta, outer state, population), placed on the mesh."""
    key = _to_global(np.asarray(key), self.replicated)
    return self._init_jit(self.estimators, key)

  def step(self, state: MetaState) -> tuple[MetaState, dict[str, jax.Array]]:
    """One outer step (donates `state`). Blocks on CPU: dispatching collective steps
    without waiting can deadlock on few-core machines."""
    state, metrics = self._step_jit(self.estimators, state)
    if self.block:
      jax.block_until_ready(state)
    return state, metrics

  def put(self, host_state: MetaState) -> MetaState:
    """Places a host (numpy) state, e.g. a restored checkpoint, on the mesh."""
    return _to_global(host_state, self.shardings)


def run(trainer: MetaTrainer, workdir: str | pathlib.Path, *, num_steps: int, seed: int = 0,
        checkpoint_every: int = 100, keep: int = 3, log_every: int = 1, eval_every: int = 0,
        eval_fn: Callable[[Any], dict[str, float]] | None = None, progress: bool = True,
        stop_after: int | None = None, log: Callable[[str], None] | None = None) -> MetaState:
  """Meta-trains for `num_steps` outer steps in `workdir`, resuming from its latest
  checkpoint, else from its small resume state (`small_state.npz`: theta, outer state, key
  and counters; the population is drawn afresh). Writes `metrics.jsonl`, `eval.jsonl`,
  `checkpoints/<step>/` and, at every checkpoint, `small_state.npz`.

  Args:
    trainer: the population and outer step.
    workdir: run directory (created).
    num_steps: total outer steps (counting those done before a resume).
    seed: PRNG seed of a fresh run.
    checkpoint_every: save every this many outer steps (and at the end).
    keep: checkpoints kept.
    log_every: write a metrics row every this many steps.
    eval_every: call `eval_fn(theta)` every this many steps (0: never).
    eval_fn: maps host theta to a dict of scalars (e.g. held-out losses).
    progress: show a tqdm bar (process 0).
    stop_after: stop after this many steps of this call (tests; a crash stand-in).
    log: called with one line when the run resumes (default: print on process 0).

  Returns:
    The final state.
  """
  workdir = pathlib.Path(workdir)
  primary = jax.process_index() == 0
  if primary:
    workdir.mkdir(parents=True, exist_ok=True)
  t0 = time.time()
  ckpt = Checkpointer(workdir / "checkpoints", keep=keep)
  state = trainer.init(jax.random.PRNGKey(seed))
  log = log or (lambda line: print(line, flush=True) if primary else None)
  start = ckpt.latest_step()
  if start is not None:
    state = trainer.put(ckpt.restore(start, state))
    log(f"resuming from step {start} (checkpoint {workdir / 'checkpoints' / str(start)})")
  elif (workdir / SMALL_STATE).exists():
    state = trainer.put(load_small(workdir / SMALL_STATE, to_host(state)))
    start = int(to_host(state.step))
    log(f"resuming from step {start} ({workdir / SMALL_STATE}: theta and outer state; "
        "the population of inner problems is drawn afresh)")
  # The resume rule of `lopt.rundir`: metric rows past the restored step are dropped.
  writer = MetricsWriter(workdir / "metrics.jsonl", resume_step=start)
  eval_writer = MetricsWriter(workdir / "eval.jsonl", resume_step=start)
  start = start or 0
  bar = None
  if progress and primary:
    import tqdm
    bar = tqdm.tqdm(total=num_steps, initial=start, desc="meta-train", dynamic_ncols=True)
  done_here = 0
  try:
    for step in range(start, num_steps):
      t_step = time.time()
      state, metrics = trainer.step(state)
      n = step + 1
      done_here += 1
      if n % log_every == 0 or n == num_steps or done_here == 1:
        row = {"step": n, **{k: float(v) for k, v in jax.device_get(metrics).items()},
               "skipped_total": int(state.skipped), "step_time": time.time() - t_step,
               "elapsed": time.time() - t0}
        writer.write(row)
        if bar is not None:
          bar.set_postfix(meta_loss=f"{row['meta_loss']:.4f}", refresh=False)
      if eval_fn is not None and eval_every and n % eval_every == 0:
        eval_writer.write({"step": n, **eval_fn(to_host(state.theta))})
      if n % checkpoint_every == 0 or n == num_steps:
        ckpt.save(n, state)
        save_small(workdir / SMALL_STATE, state)
      if bar is not None:
        bar.update(1)
      if stop_after is not None and done_here >= stop_after:
        break
  finally:
    if bar is not None:
      bar.close()
    writer.close()
    eval_writer.close()
    ckpt.close()
  return state
