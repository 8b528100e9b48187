"""Vectorised runs: jobs that share a task and an optimizer and differ only in the seed or in
the learning rate train with one compiled program (`lopt.training.train_many`): vmapped, or,
on CPU for tasks with convolutions or loops, one after another through it.

Which jobs can share a program: the same task, budget, eval interval, optimizer and
checkpoint, and the same hyperparameters except the seed; for baselines whose update is
linear in the learning rate (`_jobs.LINEAR_IN_LR`, whose learning rate lives in the optimizer
state as data) the learning rate may differ too, so a whole LR grid is one program.
Nowcasting optimizers (`base+nowcaster`) plan their steps on the host and run one by one.

Each run of a group computes exactly what `lopt.training.train` computes for it alone:
the same init (`task.init(PRNGKey(seed))` split as `train` does), the same per-step keys
(`fold_in(key, step)`), the same freezing after a non-finite loss and the same history
truncation; only float rounding of the batched kernels differs (one by one, nothing does).
The group's preparation time is shared: each record's `elapsed_s` is the group's time
divided by its size, and `vectorised` says the group size; `wall_time` is the run's own
training time one by one, the group's divided by its size when vmapped.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

from lopt import training

MAX_GROUP = 32  # runs per compiled program (memory grows linearly)


def group_key(job: dict) -> tuple | None:
  """The key of the jobs that can share a program with `job` (None: runs alone)."""
  from lopt.eval import _jobs
  if "+" in job["optimizer"]:  # nowcasting: the host plans its steps
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


def prepare_group(jobs: Sequence[dict], *, programs: training.Programs | None = None
                  ) -> Callable[[], list[dict]]:
  """Builds, compiles and initialises a group of jobs (`groups`) as one program; returns the
  function that trains it and writes each record (and returns them). `programs` shares
  compiled programs with other groups (`lopt.training.Programs`). Preparing the next group
  in a thread while one trains overlaps compilation with training (`_jobs.execute`)."""
  from lopt.eval import _jobs, _tasks
  j0 = jobs[0]
  task = _tasks.build(j0.get("task_ref") or j0["task"], j0["task"])
  made = [_jobs.make_optimizer(j["optimizer"], num_steps=j["num_steps"],
                               checkpoint=j["checkpoint"], **j["hparams"]) for j in jobs]
  info0 = made[0][1]
  if info0.needs_gradients is not None:
    raise ValueError(f"{j0['optimizer']!r} skips gradients on some steps: run it alone")
  t0 = time.perf_counter()
  train = training.prepare_many(task, [tx for tx, _ in made], j0["num_steps"],
                                seeds=[j["seed"] for j in jobs], eval_every=j0["eval_every"],
                                eval_params=info0.eval_params, programs=programs)
  prepared_s = time.perf_counter() - t0

  def run() -> list[dict]:
    t0 = time.perf_counter()
    results = train()
    total = prepared_s + time.perf_counter() - t0
    records = []
    for job, (_, info), res in zip(jobs, made, results):
      record = {"job": {k: v for k, v in job.items() if k != "out"}, "info": info.to_json(),
                "history": res.history, "steps_done": int(res.steps_done),
                "stopped": res.stopped, "elapsed_s": total / len(jobs),
                "vectorised": len(jobs)}
      _jobs.write_json(job["out"], record)
      records.append(record)
    return records

  return run


def run_group(jobs: Sequence[dict], *, programs: training.Programs | None = None) -> list[dict]:
  """Trains a group of jobs (`groups`) as one program and writes each record; returns them."""
  return prepare_group(jobs, programs=programs)()
