"""Vectorised runs: jobs that share a task and an optimizer and differ only in the seed or in
the learning rate train as one vmapped, compiled program.

Which jobs can share a program: the same task, budget, eval interval, optimizer and
checkpoint, and the same hyperparameters except the seed; for baselines whose update is
linear in the learning rate (`_jobs.LINEAR_IN_LR`, whose learning rate lives in the optimizer
state as data) the learning rate may differ too, so a whole LR grid is one program.
Nowcasting optimizers (`base+nowcaster`) plan their steps on the host and run one by one.

Each run of a group computes exactly what `lopt.training.train` computes for it alone:
the same init (`task.init(PRNGKey(seed))` split as `train` does), the same per-step keys
(`fold_in(key, step)`), the same freezing after a non-finite loss and the same history
truncation; only float rounding of the batched kernels differs. The wall-clock time of a
group is shared: each record's `wall_time` and `elapsed_s` are the group's divided by its
size (the amortised time per run), and `vectorised` says the group size.
"""

from __future__ import annotations

import functools
import math
import time
from typing import Any, Sequence

import numpy as np

MAX_GROUP = 32  # runs per compiled program (memory grows linearly)
# Optimizers that must run alone. (Shampoo's step-dependent root refresh used to be one: a
# vmapped `lax.cond` runs both branches; `optimizers._shampoo` now batches it as a real cond.)
RUN_ALONE: tuple[str, ...] = ()


def group_key(job: dict) -> tuple | None:
  """The key of the jobs that can share a program with `job` (None: runs alone)."""
  from lopt.eval import _jobs
  if "+" in job["optimizer"] or job["optimizer"] in RUN_ALONE:
    return None
  hp = dict(job["hparams"])
  if job["optimizer"] in _jobs.LINEAR_IN_LR and job["checkpoint"] is None:
    hp.pop("learning_rate", None)
  return (job.get("task_ref") or job["task"], job["task"], job.get("fingerprint", ""),
          job["num_steps"], job["eval_every"], job["optimizer"], job["checkpoint"],
          tuple(sorted((k, repr(v)) for k, v in hp.items())))


def groups(jobs: Sequence[dict], max_size: int = MAX_GROUP) -> list[list[dict]]:
  """Splits jobs into groups that share a program (order kept within a group)."""
  by_key: dict[Any, list[dict]] = {}
  out: list[list[dict]] = []
  for j in jobs:
    k = group_key(j)
    if k is None:
      out.append([j])
    else:
      by_key.setdefault(k, []).append(j)
  for g in by_key.values():
    out += [g[i:i + max_size] for i in range(0, len(g), max_size)]
  return out


def _stack(trees: Sequence[Any]) -> Any:
  import jax
  import jax.numpy as jnp
  return jax.tree.map(lambda *x: jnp.stack(x), *trees)


def train_group(task: Any, txs: Sequence[Any], num_steps: int, seeds: Sequence[int], *,
                eval_every: int | None = None, eval_split: str = "valid",
                eval_batches: int = 8, eval_params=None) -> list[dict]:
  """Trains one run per (optimizer transform, seed) as one vmapped program.

  Args:
    task: the task.
    txs: one optax transform per run; all must share one update program (their differences
      live in their states, as the learning rate of `_jobs.make_optimizer`'s baselines).
    num_steps: steps per run.
    seeds: one seed per run (`lopt.training.train`'s `seed`).
    eval_every, eval_split, eval_batches, eval_params: as in `lopt.training.train`.

  Returns:
    Per run: `{"history", "steps_done", "stopped", "elapsed_s"}` as `train` would give.
  """
  import jax
  import jax.numpy as jnp
  import optax

  from lopt.training import _loop

  n = len(txs)
  assert n == len(seeds) and n >= 1
  eval_every = min(int(eval_every or max(1, math.ceil(num_steps / 20))), num_steps)
  txs = [optax.with_extra_args_support(t) for t in txs]
  params, states, data_keys, eval_keys = [], [], [], []
  for tx, seed in zip(txs, seeds):
    init_key, data_key, eval_key = jax.random.split(jax.random.PRNGKey(seed), 3)
    p = task.init(init_key)
    params.append(p)
    states.append(tx.init(p))
    data_keys.append(data_key)
    eval_keys.append(eval_key)
  carry = _loop._Carry(_stack(params), _stack(states), jnp.zeros([n], jnp.int32),
                       -jnp.ones([n], jnp.int32))
  data_keys, eval_keys = jnp.stack(data_keys), jnp.stack(eval_keys)

  chunk = _loop._make_chunk(txs[0], None)
  block = (_loop._CPU_CONV_BLOCK
           if jax.default_backend() == "cpu" and _loop._has_convolution(task, params[0])
           else None)

  @functools.partial(jax.jit, static_argnames=("length", "unroll"))
  def many(task, carry, keys, length, unroll):
    return jax.vmap(lambda c, k: chunk(task, c, k, length=length, unroll=unroll))(carry, keys)

  @jax.jit
  def evaluate(task, carry, keys):
    def one(c, k):
      p = c.params if eval_params is None else eval_params(c.opt_state, c.params)
      return _loop._eval_fn(task, p, k, eval_split, eval_batches, vectorize=block is not None)
    return jax.vmap(one)(carry, keys)

  eval_steps = list(range(0, num_steps, eval_every)) + [num_steps]
  E = len(eval_steps)
  train_loss = np.full([n, num_steps], np.nan, np.float32)
  valid = np.full([n, E], np.nan, np.float32)
  acc = np.full([n, E], np.nan, np.float32)
  wall = np.full([E], np.nan, np.float64)
  stop_at = [None] * n  # the chunk index after which a run stopped
  bad_steps = [-1] * n

  v, a = evaluate(task, carry, eval_keys)
  valid[:, 0], acc[:, 0], wall[0] = np.asarray(v), np.asarray(a), 0.0
  compiled: dict[int, Any] = {}
  for i in range(E - 1):
    length = eval_steps[i + 1] - eval_steps[i]
    calls = _loop._blocks(length, block)
    for c in set(calls) - set(compiled):  # compile outside the timed region
      compiled[c] = many.lower(task, carry, data_keys, length=c,
                               unroll=c if block else 1).compile()
    t0 = time.perf_counter()
    parts = []
    for c in calls:
      carry, part = compiled[c](task, carry, data_keys)
      parts.append(part)  # [n, c]
    losses = np.concatenate([np.asarray(x) for x in jax.block_until_ready(parts)], axis=1)
    wall[i + 1] = wall[i] + (time.perf_counter() - t0) / n
    train_loss[:, eval_steps[i]:eval_steps[i + 1]] = losses
    bad = np.asarray(carry.bad_step)
    for r in range(n):
      if stop_at[r] is None and bad[r] >= 0:
        stop_at[r], bad_steps[r] = i, int(bad[r])
    if all(s is not None for s in stop_at):
      break
    v, a = evaluate(task, carry, eval_keys)
    valid[:, i + 1], acc[:, i + 1] = np.asarray(v), np.asarray(a)

  out = []
  for r in range(n):
    h = {"train_loss": train_loss[r].copy(), "eval_step": np.asarray(eval_steps, np.int64),
         "valid_loss": valid[r].copy(), "valid_accuracy": acc[r].copy(),
         "wall_time": wall.copy()}
    stopped, steps_done = None, num_steps
    if stop_at[r] is not None:
      i = stop_at[r]
      h["train_loss"][bad_steps[r]:] = np.nan
      stopped = (f"non-finite loss at step {bad_steps[r]}; stopped and kept the params of "
                 f"step {eval_steps[i]}")
      for k in ("eval_step", "valid_loss", "valid_accuracy", "wall_time"):
        h[k] = h[k][:i + 1]
      steps_done = eval_steps[i]
    out.append({"history": h, "steps_done": steps_done, "stopped": stopped,
                "elapsed_s": float(np.nansum(np.diff(wall[:len(h["wall_time"])])))})
  return out


def run_group(jobs: Sequence[dict]) -> list[dict]:
  """Trains a group of jobs (`groups`) as one program and writes each record; returns them."""
  from lopt.eval import _jobs, _tasks
  j0 = jobs[0]
  task = _tasks.build(j0.get("task_ref") or j0["task"], j0["task"])
  made = [_jobs.make_optimizer(j["optimizer"], num_steps=j["num_steps"],
                               checkpoint=j["checkpoint"], **j["hparams"]) for j in jobs]
  info0 = made[0][1]
  if info0.needs_gradients is not None:
    raise ValueError(f"{j0['optimizer']!r} skips gradients on some steps: run it alone")
  t0 = time.perf_counter()
  results = train_group(task, [tx for tx, _ in made], j0["num_steps"],
                        [j["seed"] for j in jobs], eval_every=j0["eval_every"],
                        eval_params=info0.eval_params)
  total = time.perf_counter() - t0
  records = []
  for job, (_, info), res in zip(jobs, made, results):
    record = {"job": {k: v for k, v in job.items() if k != "out"}, "info": info.to_json(),
              "history": res["history"], "steps_done": int(res["steps_done"]),
              "stopped": res["stopped"], "elapsed_s": total / len(jobs),
              "vectorised": len(jobs)}
    _jobs.write_json(job["out"], record)
    records.append(record)
  return records
