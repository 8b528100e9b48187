"""Many short runs of one task at once, vmapped over seeds and hyperparameters.

Each run takes the steps of `lopt.training.train` (the same keys and the same stop on a
non-finite loss), so run `r` here reproduces `train(task, tx, n, seed=init_seeds[r],
data_seed=data_seeds[r])`; `tests/test_analysis.py` checks that. Vmapping the runs is what
makes seed and learning-rate sweeps affordable on a CPU. Per step it also logs the gradient
and update norms (for the phase HMM), and optionally the flattened parameters at each
evaluation (for PCA).

Example:
  >>> import optax
  >>> from lopt.tasks import QuadraticTask
  >>> runs = run_many(QuadraticTask(dim=4), lambda lr: optax.sgd(lr), 20,
  ...                 init_seeds=[0, 0], hparams=jnp.asarray([0.1, 0.5]))
  >>> runs.valid_loss.shape   # [runs, evaluations]
  (2, 21)
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lopt.tasks.base import Task
from lopt.training import TrainState, train_step
from lopt.training import evaluate as evaluate_params  # train()'s own evaluation
from lopt.training.trajectories import flatten_params

Array = jax.Array


@dataclasses.dataclass
class Runs:
  """What `run_many` returns (numpy arrays; NaN after a run stopped).

  Attributes:
    eval_step: [E] the steps at which every run was evaluated (0 and `num_steps` included).
    train_loss: [R, T] the training loss of each step.
    valid_loss: [R, E] the validation loss at `eval_step`.
    grad_norm: [R, T] the global gradient norm of each step.
    update_norm: [R, T] the global norm of each applied update.
    stopped_at: [R] the first step with a non-finite loss, -1 where the run finished.
    snapshots: [R, E, P] float32 flattened parameters at `eval_step` (None unless asked).
  """
  eval_step: np.ndarray
  train_loss: np.ndarray
  valid_loss: np.ndarray
  grad_norm: np.ndarray
  update_norm: np.ndarray
  stopped_at: np.ndarray
  snapshots: np.ndarray | None = None

  def final_valid(self) -> np.ndarray:
    """[R] the last validation loss; inf for runs that stopped (diverged)."""
    return np.where(self.stopped_at >= 0, np.inf, self.valid_loss[:, -1])

  def best_valid(self) -> np.ndarray:
    """[R] the lowest validation loss seen; inf for runs that stopped (diverged)."""
    return np.where(self.stopped_at >= 0, np.inf, np.nanmin(self.valid_loss, axis=1))


def run_keys(init_seed: int, data_seed: int) -> tuple[Array, Array, Array]:
  """`(init_key, data_key, eval_key)` exactly as `train(seed=init_seed, data_seed=...)`."""
  init_key = jax.random.split(jax.random.PRNGKey(init_seed), 3)[0]
  _, data_key, eval_key = jax.random.split(jax.random.PRNGKey(data_seed), 3)
  return init_key, data_key, eval_key


def run_many(task: Task, make_tx: Callable[[Any], optax.GradientTransformation],
             num_steps: int, *, init_seeds: Sequence[int], data_seeds: Sequence[int] | None = None,
             hparams: Any = None, eval_every: int | None = None, eval_batches: int = 8,
             eval_task: Task | None = None, snapshots: bool = False,
             eval_params: Callable[[Any, Any], Any] | None = None,
             needs_gradients: Callable[[Any], Array] | None = None) -> Runs:
  """Trains `len(init_seeds)` runs of `task` side by side (one vmapped program).

  Args:
    task: the task to train.
    make_tx: `hp -> optax transform`, called inside the vmapped program with run `r`'s slice
      of `hparams` (traced: use it as a value, e.g. a learning rate, not in Python control flow).
    num_steps: steps per run.
    init_seeds: [R] the parameter-init seed of each run.
    data_seeds: [R] the data-order seed of each run (default: `init_seeds`).
    hparams: a pytree of arrays with leading axis R (default: zeros, for optimizers that take
      none).
    eval_every: steps between validation evaluations (default: ~20 per run).
    eval_batches: sampled batches per evaluation where the task has no fixed ones.
    eval_task: the task to evaluate on (default `task`; e.g. the default-batch-size variant,
      so that every batch size is evaluated on the same examples).
    snapshots: also return the flattened parameters at each evaluation.
    eval_params: optional `(opt_state, params) -> params` to evaluate at (schedule-free).
    needs_gradients: optional `opt_state -> bool[]` (nowcasting steps skip the backward pass).

  Returns:
    `Runs`.
  """
  if not (isinstance(num_steps, (int, np.integer)) and num_steps > 0):
    raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")
  init_seeds = [int(s) for s in init_seeds]
  data_seeds = init_seeds if data_seeds is None else [int(s) for s in data_seeds]
  if len(data_seeds) != len(init_seeds) or not init_seeds:
    raise ValueError(f"need as many data seeds ({len(data_seeds)}) as init seeds "
                     f"({len(init_seeds)}), and at least one")
  num_runs = len(init_seeds)
  if hparams is None:
    hparams = jnp.zeros([num_runs])
  eval_every = min(int(eval_every or max(1, math.ceil(num_steps / 20))), num_steps)
  eval_task = task if eval_task is None else eval_task
  keys = [run_keys(i, d) for i, d in zip(init_seeds, data_seeds)]
  init_keys, data_keys, eval_keys = (jnp.stack(k) for k in zip(*keys))  # [R, 2] each

  def make(hp):
    return optax.with_extra_args_support(make_tx(hp))

  def init_one(task, key, hp):
    params = task.init(key)
    return TrainState(params, make(hp).init(params), jnp.zeros([], jnp.int32),
                  -jnp.ones([], jnp.int32))

  def step_one(task, carry: TrainState, key, hp):  # `train`'s own step, plus two norms
    carry, (loss, grads, updates) = train_step(task, make(hp), carry, key,
                                               needs_gradients=needs_gradients)
    return carry, (loss, optax.tree.norm(grads), optax.tree.norm(updates))

  def chunk(task, carry, keys, hps, length):   # vmapped over runs inside
    one = lambda c, k, hp: jax.lax.scan(lambda c, _: step_one(task, c, k, hp), c, None,
                                        length=length)
    return jax.vmap(one)(carry, keys, hps)

  def eval_one(task, carry, key, hp):
    params = carry.params if eval_params is None else eval_params(carry.opt_state, carry.params)
    loss, _ = evaluate_params(task, params, key, split="valid", num_batches=eval_batches)
    flat = flatten_params(carry.params) if snapshots else jnp.zeros([0])
    return loss, flat

  # The task is an argument (not a constant): its data stay device buffers.
  init = jax.jit(jax.vmap(init_one, in_axes=(None, 0, 0)))
  chunk = jax.jit(chunk, static_argnames="length")
  evaluate = jax.jit(jax.vmap(eval_one, in_axes=(None, 0, 0, 0)))

  carry = init(task, init_keys, hparams)
  eval_steps = list(range(0, num_steps, eval_every)) + [num_steps]
  valid, snaps, logs = [], [], []
  for i, s in enumerate(eval_steps):
    loss, flat = evaluate(eval_task, carry, eval_keys, hparams)
    valid.append(np.asarray(loss))
    if snapshots:
      snaps.append(np.asarray(flat))
    if i + 1 < len(eval_steps):
      carry, part = chunk(task, carry, data_keys, hparams, length=eval_steps[i + 1] - s)
      logs.append([np.asarray(x) for x in part])   # 3 x [R, length]
  train_loss, grad_norm, update_norm = (np.concatenate([l[k] for l in logs], axis=1)
                                        for k in range(3))
  stopped = np.asarray(carry.bad_step)                  # [R]
  valid = np.stack(valid, axis=1).astype(np.float64)    # [R, E]
  steps = np.asarray(eval_steps)
  for r in np.flatnonzero(stopped >= 0):  # NaN after a stop, as in `train`
    train_loss[r, stopped[r]:] = grad_norm[r, stopped[r]:] = update_norm[r, stopped[r]:] = np.nan
    valid[r, steps > stopped[r]] = np.nan
  return Runs(eval_step=steps, train_loss=train_loss.astype(np.float64),
              valid_loss=valid, grad_norm=grad_norm.astype(np.float64),
              update_norm=update_norm.astype(np.float64), stopped_at=stopped.astype(np.int64),
              snapshots=np.stack(snaps, axis=1) if snapshots else None)
