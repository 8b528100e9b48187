"""Training jobs: one (task, optimizer, hyperparameters, seed) run -> one JSON file.

A job is a plain dict (picklable, JSON-able). `run_job` trains it with
`lopt.training.train` and writes the record atomically, so a finished file means a
finished run; `execute` skips jobs whose file exists (resume) and runs the others in
this process or in a pool of worker processes.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import math
import os
import sys
import time
import traceback
from typing import Any, Iterable, NamedTuple, Sequence

import numpy as np

from lopt import rundir

# ---------------------------------------------------------------------------------------
# JSON with non-finite floats as strings ("inf", "-inf", "nan"): strict JSON on disk that
# keeps a diverged run's sign (`lopt.rundir.strict_json(nonfinite="string")`).


def to_jsonable(x: Any) -> Any:
  return rundir.strict_json(x, nonfinite="string")


def as_float_array(values: Sequence[Any]) -> np.ndarray:
  """Inverse of `to_jsonable` for a list of numbers."""
  return np.asarray([float(v) if v is not None else math.nan for v in values], np.float64)


def write_json(path: str | os.PathLike, obj: Any) -> None:
  """Writes strict JSON atomically (`lopt.rundir.atomic_write_json`)."""
  rundir.atomic_write_json(path, obj, indent=None, nonfinite="string")


def read_json(path: str | os.PathLike) -> Any:
  with open(path) as f:
    return json.load(f)


# ---------------------------------------------------------------------------------------
# One job.


def make_job(*, task: str, num_steps: int, optimizer: str, label: str, seed: int, out: str,
             hparams: dict | None = None, checkpoint: str | None = None,
             eval_every: int | None = None, task_ref: str = "", fingerprint: str = "") -> dict:
  """A job dict. `task_ref` says how to rebuild the task (`_tasks.build`; default: the
  suite task `task`); `fingerprint` is its content hash (a changed task is a new job)."""
  return {"task": task, "task_ref": task_ref or task, "fingerprint": fingerprint,
          "num_steps": int(num_steps), "optimizer": optimizer, "label": label,
          "hparams": dict(hparams or {}), "checkpoint": checkpoint, "seed": int(seed),
          "eval_every": eval_every, "out": str(out)}


# Baselines whose update is linear in the learning rate (lr multiplies the final update,
# schedules included): `make(lr) == scale(lr) o make(1)`. Their learning rate is kept as
# optimizer state (data), so every learning rate of a grid and every seed runs the same
# compiled program, and the persistent compilation cache compiles it once per task.
LINEAR_IN_LR = ("adam", "adamw", "nadamw", "sgd_nesterov", "lion", "rmsprop", "shampoo",
                "muon")


class LearningRateState(NamedTuple):
  learning_rate: Any  # f32 []


def scale_by_learning_rate_state(learning_rate: float):
  """Multiplies updates by a learning rate stored in the state (not a compile-time
  constant)."""
  import jax
  import jax.numpy as jnp
  import optax

  def init_fn(params):
    del params
    return LearningRateState(jnp.asarray(learning_rate, jnp.float32))

  def update_fn(updates, state, params=None):
    del params
    updates = jax.tree.map(lambda u: (u * state.learning_rate).astype(u.dtype), updates)
    return updates, state

  return optax.GradientTransformation(init_fn, update_fn)


def make_optimizer(name: str, *, num_steps: int, checkpoint: str | None = None,
                   **hparams: Any):
  """`lopt.optimizers.make_optimizer`, with the learning rate as state for `LINEAR_IN_LR`
  baselines (same updates up to float rounding, one compiled program per task)."""
  import dataclasses as dc

  import optax

  from lopt import optimizers
  if name in LINEAR_IN_LR and name in optimizers.BASELINES and checkpoint is None:
    lr = float(hparams.pop("learning_rate",
                           optimizers.BASELINES[name].defaults.get("learning_rate", 1.0)))
    tx, info = optimizers.make_optimizer(name, num_steps=num_steps, learning_rate=1.0, **hparams)
    tx = optax.with_extra_args_support(optax.chain(tx, scale_by_learning_rate_state(lr)))
    return tx, dc.replace(info, hparams={**info.hparams, "learning_rate": lr})
  return optimizers.make_optimizer(name, num_steps=num_steps, checkpoint=checkpoint, **hparams)


def run_job(job: dict) -> dict:
  """Trains one job and writes its record to `job["out"]`; returns the record.

  The optimizer sees only the optax API and `num_steps` (reported as `uses_num_steps`);
  it never sees the task's name.
  """
  from lopt import training
  from lopt.eval import _tasks

  task = _tasks.build(job.get("task_ref") or job["task"], job["task"])
  tx, info = make_optimizer(job["optimizer"], num_steps=job["num_steps"],
                            checkpoint=job["checkpoint"], **job["hparams"])
  t0 = time.perf_counter()
  result = training.train(task, tx, job["num_steps"], seed=job["seed"],
                          eval_every=job["eval_every"], progress=False,
                          eval_params=info.eval_params, needs_gradients=info.needs_gradients,
                          hooks=info.hooks)
  record = {
      "job": {k: v for k, v in job.items() if k != "out"},
      "info": info.to_json(),
      "history": {k: np.asarray(v) for k, v in result.history.items()},
      "steps_done": int(result.steps_done),
      "stopped": result.stopped,
      "elapsed_s": time.perf_counter() - t0,
  }
  write_json(job["out"], record)
  return record


def load_record(path: str | os.PathLike) -> dict:
  """Reads a run record; history arrays come back as float numpy arrays."""
  rec = read_json(path)
  rec["history"] = {k: as_float_array(v) for k, v in rec["history"].items()}
  return rec


# ---------------------------------------------------------------------------------------
# Many jobs.


def enable_compile_cache(folder: str | os.PathLike | None) -> None:
  """Turns on JAX's persistent compilation cache in `folder` unless one is set already.

  Runs that differ only in the seed compile to the same program, so the second seed of a
  configuration (and every rerun) skips compilation, which dominates small runs: every
  program is cached (no minimum compile time).
  """
  if folder is not None:
    rundir.enable_compile_cache(folder, min_compile_time_s=0.0)


def _worker_init(compile_cache: str | None, local_tasks: dict | None = None) -> None:
  # One CPU thread per worker process: several workers share the machine.
  flags = os.environ.get("XLA_FLAGS", "")
  if "intra_op_parallelism_threads" not in flags:
    os.environ["XLA_FLAGS"] = (flags + " --xla_cpu_multi_thread_eigen=false "
                               "intra_op_parallelism_threads=1").strip()
  enable_compile_cache(compile_cache)
  if local_tasks:
    from lopt.eval import _tasks
    _tasks.install_local(local_tasks)
  _exit_with_parent()


def _exit_with_parent(poll_s: float = 1.0) -> None:
  """A worker ends itself once its parent is gone (killed benchmark: no orphan runs left
  training, and no half-written run records)."""
  import threading
  import time
  parent = os.getppid()

  def watch():
    while os.getppid() == parent:
      time.sleep(poll_s)
    os._exit(1)

  threading.Thread(target=watch, daemon=True, name="lopt-parent-watch").start()


def _safe_run(job: dict) -> tuple[dict, str | None]:
  try:
    run_job(job)
    return job, None
  except Exception as e:  # reported by `execute`, the other jobs go on
    return job, f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=3)}"


def _vectorisable(group: list[dict], programs: Any) -> bool:
  from lopt.eval import _vectorised
  return len(group) > 1 or (programs is not None and _vectorised.group_key(group[0]) is not None)


def _safe_run_group(group: list[dict], programs: Any = None, prepared: Any = None
                    ) -> list[tuple[dict, str | None]]:
  """A group as one vmapped program (`prepared`: the future of its `prepare_group`, when
  started ahead); if that fails, its jobs one by one (so each error belongs to its run)."""
  from lopt.eval import _vectorised
  if not _vectorisable(group, programs):
    return [_safe_run(group[0])]
  try:
    run = (prepared.result() if prepared is not None
           else _vectorised.prepare_group(group, programs=programs))
    run()
    return [(j, None) for j in group]
  except Exception:  # noqa: BLE001 - retried one by one, which reports the cause per run
    return [_safe_run(j) for j in group]


def execute(jobs: Iterable[dict], *, workers: int = 1, progress: bool = True,
            desc: str = "runs", compile_cache: str | os.PathLike | None = None,
            local_tasks: dict | None = None, vectorise: bool = True,
            programs: Any = None) -> dict[str, str]:
  """Runs the jobs whose output file does not exist yet.

  Args:
    jobs: job dicts (`make_job`).
    workers: 1 runs in this process; more uses a pool of spawned processes.
    progress: show a progress bar (jobs done / total).
    desc: the progress bar's label.
    compile_cache: a folder for JAX's persistent compilation cache (None: leave as is).
    local_tasks: {name: Task} of tasks given as objects (sent to the worker processes).
    vectorise: jobs that differ only in seed or learning rate run as one vmapped program
      (`lopt.eval._vectorised`); False: one by one.
    programs: a `lopt.training.Programs` cache of compiled programs shared with other calls
      (vectorised runs in this process only; worker processes compile their own).

  Returns:
    {output path: error message} for the jobs that failed (their files are not written,
    so a rerun retries them).
  """
  jobs = list(jobs)
  todo = [j for j in jobs if not os.path.exists(j["out"])]
  if vectorise:
    from lopt.eval import _vectorised
    batches = _vectorised.groups(todo)
  else:
    batches = [[j] for j in todo]
  bar = None
  if progress and jobs:
    from tqdm.auto import tqdm
    bar = tqdm(total=len(jobs), initial=len(jobs) - len(todo), desc=desc, unit="run",
               dynamic_ncols=True, file=sys.stderr)
  errors: dict[str, str] = {}

  def done(results):
    for job, err in results:
      if err is not None:
        errors[job["out"]] = err
        print(f"\n[lopt benchmark] run failed: {job['task']} / {job['label']} / seed "
              f"{job['seed']}: {err.splitlines()[0]}", file=sys.stderr)
      if bar is not None:
        bar.update(1)
        bar.set_postfix_str(f"{job['task']} {job['label']} s{job['seed']}")

  if workers <= 1 or len(batches) <= 1:
    if todo:
      enable_compile_cache(compile_cache)
    if not vectorise:
      for b in batches:
        done(_safe_run_group(b))
    else:  # the next group is built and compiled in a thread while this one trains (so
      # two groups' states are in memory at a time)
      from lopt.eval import _vectorised
      with cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="lopt-prepare") as ahead:
        def prepare(b):
          if not _vectorisable(b, programs):
            return None
          return ahead.submit(_vectorised.prepare_group, b, programs=programs)

        upcoming = prepare(batches[0]) if batches else None
        for i, b in enumerate(batches):
          current, upcoming = upcoming, prepare(batches[i + 1]) if i + 1 < len(batches) else None
          done(_safe_run_group(b, programs, prepared=current))
  else:
    import multiprocessing as mp
    with cf.ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"),
                                initializer=_worker_init,
                                initargs=(None if compile_cache is None else str(compile_cache),
                                          local_tasks or {})) as pool:
      futures = [pool.submit(_safe_run_group, b) for b in batches]
      for f in cf.as_completed(futures):
        done(f.result())
  if bar is not None:
    bar.close()
  return errors
