"""The inner training loop: one task, one optax transform.

Steps run in jitted `lax.scan` chunks of `eval_every` steps; the task is passed to the jitted
function as an argument (its data are device buffers), batches are sampled inside jit, and the
per-step keys are `fold_in(key, step)` so a resumed run replays exactly the same steps.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lopt.tasks.base import Task
from lopt.training import _run_dir
from lopt.training.hooks import StepHooks

Array = jax.Array


@dataclasses.dataclass
class TrainResult:
  """What `train` returns.

  Attributes:
    params: the final parameters (the last finite ones if the run stopped early).
    opt_state: the final optimizer state.
    history: numpy arrays: `train_loss` [num_steps] (NaN after a stop), `eval_step` [E],
      `valid_loss` [E], `valid_accuracy` [E] (NaN where the task has none), `wall_time` [E]
      (seconds of training, compile and evaluation excluded, up to each eval step).
    steps_done: the number of steps completed.
    stopped: None, or why the run stopped early (e.g. a non-finite loss).
  """
  params: Any
  opt_state: Any
  history: dict[str, np.ndarray]
  steps_done: int
  stopped: str | None = None

  def final_metrics(self) -> dict[str, float]:
    h = self.history
    n = self.steps_done
    tail = h["train_loss"][max(0, n - max(1, n // 10)):n]
    return {
        "steps": n,
        "train_loss": float(np.mean(tail)) if len(tail) else float("nan"),
        "valid_loss": float(h["valid_loss"][-1]) if len(h["valid_loss"]) else float("nan"),
        "valid_accuracy": (float(h["valid_accuracy"][-1]) if len(h["valid_accuracy"])
                           else float("nan")),
        "wall_time": float(h["wall_time"][-1]) if len(h["wall_time"]) else 0.0,
    }


class TrainState(NamedTuple):
  """What one run carries from step to step (`train_step`'s state)."""
  params: Any
  opt_state: Any
  step: Array        # int32 []
  bad_step: Array    # int32 [], -1 while every loss was finite


def _eval_fn(task: Task, params: Any, key: Array, split: str, num_batches: int,
             vectorize: bool = False) -> tuple[Array, Array]:
  """Mean loss and accuracy over the task's fixed eval batches (or sampled ones)."""
  batches = task.eval_batches(split)
  if batches is None:
    keys = jax.random.split(key, num_batches)
    batches = jax.vmap(lambda k: task.sample_batch(k, split))(keys)

  def one(batch):
    loss, aux = task.loss(params, jax.random.PRNGKey(0), batch)
    acc = aux.get("accuracy", jnp.nan) if isinstance(aux, dict) else jnp.nan
    return loss, jnp.asarray(acc, jnp.float32)

  # vmap keeps convolutions out of a loop body (slow on XLA:CPU, see `_CPU_CONV_BLOCK`).
  losses, accs = jax.vmap(one)(batches) if vectorize else jax.lax.map(one, batches)
  return jnp.mean(losses), jnp.mean(accs)


def evaluate(task: Task, params: Any, key: Array, *, split: str = "valid",
             num_batches: int = 8) -> tuple[Array, Array]:
  """Mean loss and accuracy (NaN where the task has none) of `params` on `split`, the way
  `train` evaluates: the task's fixed eval batches, or `num_batches` sampled with `key`.
  Traceable: call it inside `jax.jit`/`jax.vmap`.

  Example:
    >>> from lopt.tasks import QuadraticTask
    >>> task = QuadraticTask(dim=4)
    >>> loss, acc = evaluate(task, task.init(jax.random.PRNGKey(0)), jax.random.PRNGKey(1))
    >>> loss.shape
    ()
  """
  return _eval_fn(task, params, key, split, num_batches)


def train_step(task: Task, optimizer: optax.GradientTransformationExtraArgs,
               state: TrainState, key: Array, *,
               needs_gradients: Callable[[Any], Array] | None = None,
               phase: str | None = None) -> tuple[TrainState, tuple[Array, Any, Any]]:
  """One step of `train`: a batch from `fold_in(key, state.step)`, the loss and its gradients,
  the optimizer update (with `loss=`), and the freezing rule: after the first non-finite loss
  the params and optimizer state stay as they were and `bad_step` records the step.

  Returns `(new_state, (loss, grads, updates))`; jit it, `lax.scan` it, `vmap` it (the
  analyses do, to log gradient and update norms). `phase` ("base" / "nowcast") is the host's
  plan for a nowcasting optimizer: "nowcast" skips the backward pass; `needs_gradients` asks
  the optimizer state instead (a `lax.cond`).
  """
  k_batch, k_loss = jax.random.split(jax.random.fold_in(key, state.step))
  batch = task.sample_batch(k_batch, "train")

  def with_grad(params):
    return jax.value_and_grad(lambda p: task.loss(p, k_loss, batch)[0])(params)

  def without_grad(params):
    return task.loss(params, k_loss, batch)[0], jax.tree.map(jnp.zeros_like, params)

  extra = {}
  if phase == "base":        # the host planned these steps: no nowcast among them
    loss, grads = with_grad(state.params)
    extra["nowcast_phase"] = "base"
  elif phase == "nowcast":   # ... and this one is a nowcast: no backward pass
    loss, grads = without_grad(state.params)
    extra["nowcast_phase"] = "nowcast"
  elif needs_gradients is None:
    loss, grads = with_grad(state.params)
  else:
    loss, grads = jax.lax.cond(needs_gradients(state.opt_state), with_grad, without_grad,
                               state.params)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params, loss=loss,
                                        **extra)
  params = optax.apply_updates(state.params, updates)
  ok = jnp.isfinite(loss) & (state.bad_step < 0)
  # After the first non-finite loss the state is frozen: keep the last good params.
  params, opt_state = jax.tree.map(lambda new, old: jnp.where(ok, new, old),
                                   (params, opt_state), (state.params, state.opt_state))
  bad_step = jnp.where((state.bad_step < 0) & ~jnp.isfinite(loss), state.step, state.bad_step)
  return TrainState(params, opt_state, state.step + 1, bad_step), (loss, grads, updates)


def _make_chunk(optimizer: optax.GradientTransformationExtraArgs,
                needs_gradients: Callable[[Any], Array] | None) -> Callable:
  """Builds `chunk(task, carry, key, length) -> (carry, losses[length])`."""

  def step_fn(task, carry: TrainState, key, phase):
    carry, (loss, _, _) = train_step(task, optimizer, carry, key,
                                     needs_gradients=needs_gradients, phase=phase)
    return carry, loss

  def chunk(task, carry, key, length, unroll, phase=None):
    return jax.lax.scan(lambda c, _: step_fn(task, c, key, phase), carry, None, length=length,
                        unroll=unroll)

  return jax.jit(chunk, static_argnames=("length", "unroll", "phase"))


# XLA:CPU runs convolutions inside a while loop (a rolled `lax.scan`) ~30-80x slower than the
# same convolutions in straight-line code (measured on fmnist-conv-16-32-32: 5.3 s vs 0.06 s
# per step). On CPU, tasks with convolutions therefore run blocks of fully unrolled steps.
_CPU_CONV_BLOCK = 8


def _loss_jaxpr(task: Task, params: Any) -> str:
  """The text of the task loss's jaxpr (nested jaxprs included), to look for primitives."""
  batch = task.abstract_batch
  return str(jax.make_jaxpr(lambda p, b: task.loss(p, jax.random.PRNGKey(0), b)[0])(params,
                                                                                     batch))


def _has_convolution(task: Task, params: Any) -> bool:
  return "conv_general_dilated" in _loss_jaxpr(task, params)


def _unroll_block(task: Task, params: Any, jaxpr: str | None = None) -> int | None:
  """Steps per fully unrolled call (`_CPU_CONV_BLOCK` for convolutions on CPU), else None.
  `jaxpr`: the loss's `_loss_jaxpr` text when the caller has traced it already."""
  if jax.default_backend() != "cpu":
    return None
  conv = _has_convolution(task, params) if jaxpr is None else "conv_general_dilated" in jaxpr
  return _CPU_CONV_BLOCK if conv else None


def _blocks(length: int, block: int | None) -> list[int]:
  """Splits a chunk of `length` steps into calls of at most `block` unrolled steps."""
  if block is None:
    return [length]
  return [block] * (length // block) + ([length % block] if length % block else [])


def _plan(length: int, block: int | None, schedule: tuple[int, int] | None
          ) -> list[tuple[int, str | None]]:
  """The compiled calls `(steps, phase)` that make up one chunk of `length` steps.

  Normally blocks of `block` steps (or one scan). With a nowcast `schedule` (used for
  unrolled blocks) each nowcast step runs as its own call (phase "nowcast") and the other
  steps in blocks that never trace the nowcaster (phase "base"); otherwise every unrolled
  step would carry a copy of the nowcaster's graph network inside its `lax.cond`.

  Example:
    >>> _plan(12, 4, (5, 10))
    [(4, 'base'), (1, 'base'), (1, 'nowcast'), (4, 'base'), (2, 'base')]
  """
  if schedule is None:
    return [(n, None) for n in _blocks(length, block)]
  count, period = schedule
  calls, left = [], length
  while left:
    if count == 0:
      calls.append((1, "nowcast"))
      left, count = left - 1, period - 1
    else:
      n = min(count, left)
      calls += [(b, "base") for b in _blocks(n, block)]
      left, count = left - n, count - n
  return calls


def train(task: Task, optimizer: optax.GradientTransformation, num_steps: int, *,
          seed: int = 0, data_seed: int | None = None, eval_every: int | None = None,
          eval_split: str = "valid",
          eval_batches: int = 8, out_dir: str | os.PathLike | None = None,
          checkpoint_every: int | None = None, progress: bool = True,
          eval_params: Callable[[Any, Any], Any] | None = None,
          needs_gradients: Callable[[Any], Array] | None = None,
          hooks: StepHooks | None = None,
          params: Any = None, run_info: dict | None = None,
          tensorboard: bool = False) -> TrainResult:
  """Trains `task` with `optimizer` for `num_steps` steps.

  Args:
    task: the task (passed to jit as an argument, so its data stay on device).
    optimizer: any optax transform; it is wrapped with `optax.with_extra_args_support`
      and always receives the current loss as `loss=` (learned optimizers need it).
    num_steps: number of optimizer steps.
    seed: seeds the parameter init and every batch.
    data_seed: if given, seeds the batches (data order) and sampled eval batches instead of
      `seed`, so init and data order can vary independently; `data_seed=seed` is the same run
      as leaving it out.
    eval_every: steps between evaluations on `eval_split` (default: ~20 evals per run).
      Steps run in jitted chunks of this length.
    eval_split: the split to evaluate on ("valid" or "test").
    eval_batches: number of sampled batches per eval when the task has no fixed ones.
    out_dir: run directory: `metrics.jsonl`, `result.json`, `loss_curve.png` and orbax
      checkpoints. An existing run there resumes from its last checkpoint.
    checkpoint_every: steps between checkpoints (rounded up to a multiple of `eval_every`;
      default: every eval when `out_dir` is set).
    progress: show a progress bar.
    eval_params: optional `(opt_state, params) -> params` to evaluate (schedule-free).
    hooks: optional `StepHooks` of an optimizer with a schedule of its own (nowcasting:
      `lopt.optimizers.make_optimizer(...)[1].hooks`); sets `needs_gradients` and runs the
      special steps as their own compiled calls.
    needs_gradients: optional `opt_state -> bool[]`; when False the backward pass is skipped
      (nowcasting steps).
    params: initial parameters (default: `task.init(PRNGKey(seed))`).
    run_info: extra JSON-able facts to store in `result.json` (optimizer name, hparams).
    tensorboard: also write TensorBoard events to `out_dir/tb` (needs tensorboardX).

  Returns:
    A `TrainResult`. A non-finite loss stops the run: `stopped` says at which step, and the
    params (and the last checkpoint) are the last finite ones.

  Example:
    >>> import optax
    >>> from lopt.tasks import QuadraticTask
    >>> result = train(QuadraticTask(dim=10), optax.adam(0.1), 50, progress=False)
    >>> bool(result.history["train_loss"][-1] < result.history["train_loss"][0])
    True
  """
  if not (isinstance(num_steps, (int, np.integer)) and num_steps > 0):
    raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")
  eval_every = int(eval_every or max(1, math.ceil(num_steps / 20)))
  if eval_every <= 0:
    raise ValueError(f"eval_every must be positive, got {eval_every}")
  eval_every = min(eval_every, num_steps)
  optimizer = optax.with_extra_args_support(optimizer)
  key = jax.random.PRNGKey(seed)
  init_key, data_key, eval_key = jax.random.split(key, 3)
  if data_seed is not None:
    _, data_key, eval_key = jax.random.split(jax.random.PRNGKey(data_seed), 3)
  if params is None:
    params = task.init(init_key)
  opt_state = optimizer.init(params)
  carry = TrainState(params, opt_state, jnp.zeros([], jnp.int32), -jnp.ones([], jnp.int32))

  eval_steps = list(range(0, num_steps, eval_every)) + [num_steps]
  history = {
      "train_loss": np.full([num_steps], np.nan, np.float32),
      "eval_step": np.asarray(eval_steps, np.int64),
      "valid_loss": np.full([len(eval_steps)], np.nan, np.float32),
      "valid_accuracy": np.full([len(eval_steps)], np.nan, np.float32),
      "wall_time": np.full([len(eval_steps)], np.nan, np.float64),
  }
  run = None
  start_eval = 0
  if out_dir is not None:
    run = _run_dir.RunDir(out_dir, checkpoint_every=checkpoint_every, eval_every=eval_every,
                          tensorboard=tensorboard)
    config = {"task": task.name, "num_steps": int(num_steps), "seed": int(seed),
              "eval_every": eval_every, "eval_split": eval_split, **(run_info or {})}
    if data_seed is not None:  # only then, so existing run dirs still match
      config["data_seed"] = int(data_seed)
    run.check_config(config)
    restored = run.restore(carry, history)
    if restored is not None:
      carry, history, start_eval = restored
      print(f"{task.name}: resuming from step {eval_steps[start_eval]} of {num_steps} "
            f"({out_dir})", file=sys.stderr)

  if hooks is not None and needs_gradients is None:
    needs_gradients = hooks.needs_gradients
  chunk = _make_chunk(optimizer, needs_gradients)
  block = _unroll_block(task, params)
  evaluate = jax.jit(_eval_fn, static_argnames=("split", "num_batches", "vectorize"))

  def do_eval(c: TrainState) -> tuple[float, float]:
    p = c.params if eval_params is None else eval_params(c.opt_state, c.params)
    loss, acc = evaluate(task, p, eval_key, split=eval_split, num_batches=eval_batches,
                         vectorize=block is not None)
    return float(loss), float(acc)

  bar = None
  if progress:
    from tqdm.auto import tqdm
    bar = tqdm(total=num_steps, initial=eval_steps[start_eval], desc=task.name, unit="step",
               dynamic_ncols=True)
  stopped = None
  if start_eval == 0:
    history["valid_loss"][0], history["valid_accuracy"][0] = do_eval(carry)
    history["wall_time"][0] = 0.0
    if run is not None:
      run.log_eval(history, 0)
  compiled: dict[tuple[int, str | None], Any] = {}
  split = block is not None and hooks is not None and hooks.schedule(carry.opt_state) is not None
  for i in range(start_eval, len(eval_steps) - 1):
    length = eval_steps[i + 1] - eval_steps[i]
    calls = _plan(length, block, hooks.schedule(carry.opt_state) if split else None)
    for n, phase in set(calls) - set(compiled):  # compile outside the timed region
      compiled[n, phase] = chunk.lower(task, carry, data_key, length=n,
                                       unroll=n if block else 1, phase=phase).compile()
    t0 = time.perf_counter()
    previous = carry  # the last evaluated (finite) state, returned if this chunk fails
    parts = []
    for call in calls:
      carry, part = compiled[call](task, carry, data_key)
      parts.append(part)
    losses = np.concatenate([np.asarray(x) for x in jax.block_until_ready(parts)])
    elapsed = time.perf_counter() - t0
    history["train_loss"][eval_steps[i]:eval_steps[i + 1]] = losses
    history["wall_time"][i + 1] = history["wall_time"][i] + elapsed
    bad = int(carry.bad_step)
    if bad >= 0:
      history["train_loss"][bad:] = np.nan
      stopped = (f"non-finite loss at step {bad}; stopped and kept the params of step "
                 f"{eval_steps[i]}" + (" and the last checkpoint" if run is not None else ""))
      carry = previous._replace(bad_step=carry.bad_step)
      history["eval_step"] = history["eval_step"][:i + 1]
      for k in ("valid_loss", "valid_accuracy", "wall_time"):
        history[k] = history[k][:i + 1]
      break
    history["valid_loss"][i + 1], history["valid_accuracy"][i + 1] = do_eval(carry)
    if run is not None:
      run.log_eval(history, i + 1)
      run.maybe_save(carry, history, i + 1, last=(i + 2 == len(eval_steps)))
    if bar is not None:
      bar.update(length)
      bar.set_postfix(loss=f"{np.nanmean(losses):.4g}",
                      valid=f"{history['valid_loss'][i + 1]:.4g}")
  if bar is not None:
    bar.close()
  steps_done = int(carry.step)
  result = TrainResult(carry.params, carry.opt_state, history, steps_done, stopped)
  if run is not None:
    run.finish(result, task_name=task.name, run_info=run_info or {})
  return result
