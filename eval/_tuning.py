"""Per-task tuning of baselines under stated rules, cached on disk and reused.

Rules (the same for every task and every tuned baseline):

* `lr_grid` (e.g. `adam-tuned`): every learning rate of `lopt.optimizers.LR_GRIDS[name]`
  (log-spaced, >= 9 points), other hyperparameters at their defaults.
* `halton` (`nadamw-tuned`): `HALTON_SPACES[name]["num_trials"]` quasi-random (scrambled
  Halton, seed 0) points of the search space, warmup + cosine over the task's budget.
* Each trial trains for the task's full step budget on the tuning seeds (default one seed,
  1000, disjoint from the benchmark seeds 0, 1, ...; so the tuned optimizer's benchmark
  runs are fresh draws, not the lucky seed the selection saw).
* Selection: the lowest final validation loss (mean over tuning seeds); a run that
  diverged (non-finite loss) or ended on a NaN loses. Ties keep the earlier trial.

The cache folder is `<tuning_dir>/<task>/<name>-<rule>-<hash>/` with one JSON per trial and
seed and `best.json`. The hash covers every input of the result: the task's fingerprint
(class, every static field, data, budget; `_tasks.fingerprint`), the optimizer spec and its
search space (grid or Halton space, fixed hyperparameters), the protocol (tuning seeds,
eval interval, envelope horizon) and `_tasks.TRAINING_VERSION`. A changed input is a new
folder: stale entries are never read. `retune=True` deletes the folder and tunes again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import pathlib
from typing import Any, Sequence

import numpy as np

from lopt.eval import _jobs, _tasks
from lopt.rundir import settings
from lopt.eval._specs import OptimizerSpec

TUNE_SEED_OFFSET = 1000


def default_tuning_dir() -> pathlib.Path:
  """`$LOPT_CACHE_DIR/tuning`, default `~/.cache/lopt/tuning`."""
  return settings.cache_dir() / "tuning"


@dataclasses.dataclass
class TuningPlan:
  """The trials of one (task, tuned spec).

  Attributes:
    spec: the tuned optimizer spec.
    task: the task name.
    num_steps: the budget.
    key: everything the result depends on (hashed into the folder name).
    trials: hyperparameters of each trial.
    seeds: the tuning seeds.
    folder: the cache folder.
    jobs: one job per (trial, seed).
  """

  spec: OptimizerSpec
  task: str
  num_steps: int
  trials: list[dict[str, Any]]
  seeds: list[int]
  folder: pathlib.Path
  jobs: list[dict]
  key: dict = dataclasses.field(default_factory=dict)


def search_trials(spec: OptimizerSpec, lr_grid: Sequence[float] | None = None
                  ) -> list[dict[str, Any]]:
  """The trials a tuned spec evaluates (fixed hyperparameters override the search).

  `lr_grid` replaces `LR_GRIDS[name]` (reports show the grid used).
  """
  from lopt import optimizers
  fixed = spec.hparams_dict
  if spec.tuning == "lr_grid":
    if lr_grid is None and spec.name not in optimizers.LR_GRIDS:
      raise ValueError(f"no learning-rate grid for {spec.name!r}; tunable: "
                       f"{', '.join(sorted(optimizers.LR_GRIDS))}")
    grid = optimizers.LR_GRIDS[spec.name] if lr_grid is None else lr_grid
    return [{**fixed, "learning_rate": float(lr)} for lr in grid]
  if spec.tuning == "halton":
    return [{**t, **fixed} for t in optimizers.halton_trials(spec.name, num_trials=spec.trials,
                                                            seed=0)]
  raise ValueError(f"{spec.label!r} is not tuned")


def plan(spec: OptimizerSpec, task: str | _tasks.TaskEntry, num_steps: int | None = None, *,
         tuning_dir: str | os.PathLike, num_seeds: int = 1, eval_every: int | None = None,
         lr_grid: Sequence[float] | None = None, horizon: int | None = None,
         legacy: bool = False) -> TuningPlan:
  """Lays out the tuning trials of `spec` on `task` (nothing runs).

  Args:
    spec: the tuned optimizer spec.
    task: a `TaskEntry` (or a suite task name, resolved here).
    num_steps: the budget of a task given by name (an entry carries its own).
    horizon: run the trials longer than the budget (the reference's speedup envelope
      needs Adam beyond the budget to measure speedups above 1). Selection still uses the
      validation loss at the budget: without a schedule, the first `num_steps` steps of a
      longer run are exactly the budget-length run (same per-step keys). Only for specs
      whose optimizer does not use `num_steps`.
    legacy: the folder layout of benchmarks written before task fingerprints (keyed by the
      task name only); for re-reading their results (`rescore`, `pool`), never for tuning.
  """
  from lopt import optimizers
  entry = task if isinstance(task, _tasks.TaskEntry) else _tasks.resolve(
      [task], num_steps=num_steps, fingerprints=not legacy)[0]
  if legacy:
    return _legacy_plan(spec, entry, tuning_dir=tuning_dir, num_seeds=num_seeds,
                        eval_every=eval_every, lr_grid=lr_grid, horizon=horizon)
  if not entry.fingerprint:
    entry = dataclasses.replace(entry, fingerprint=_tasks.fingerprint(
        _tasks.build(entry.ref or entry.name, entry.name), entry.num_steps))
  num_steps = entry.num_steps
  trials = search_trials(spec, lr_grid)
  seeds = [TUNE_SEED_OFFSET + k for k in range(num_seeds)]
  run_steps = int(num_steps)
  space = (optimizers.HALTON_SPACES.get(spec.name) if spec.tuning == "halton"
           else list(lr_grid) if lr_grid is not None else optimizers.LR_GRIDS.get(spec.name))
  key = {"name": spec.name, "rule": spec.tuning, "hparams": spec.hparams_dict,
         "trials_requested": spec.trials, "space": space, "trials": trials,
         "num_steps": num_steps, "seeds": seeds, "eval_every": eval_every,
         "task": entry.fingerprint, "version": _tasks.TRAINING_VERSION}
  if horizon and horizon > num_steps:
    run_steps = int(horizon)
    # evaluate on the budget-length run's grid, so the budget step is an evaluation
    eval_every = eval_every or max(1, math.ceil(num_steps / 20))
    key.update(horizon=run_steps, eval_every=eval_every)
  digest = hashlib.sha256(json.dumps(_jobs.to_jsonable(key), sort_keys=True).encode())
  folder = (pathlib.Path(tuning_dir) / _slug(entry.name)
            / f"{spec.name}-{spec.tuning}-{digest.hexdigest()[:10]}")
  jobs = [_jobs.make_job(task=entry.name, task_ref=entry.ref, fingerprint=entry.fingerprint,
                         num_steps=run_steps, optimizer=spec.name,
                         label=f"{spec.label}#trial{i}", seed=s, hparams=hp,
                         eval_every=eval_every, out=folder / f"trial_{i:02d}_seed_{s}.json")
          for i, hp in enumerate(trials) for s in seeds]
  return TuningPlan(spec, entry.name, num_steps, trials, seeds, folder, jobs, key)


def _legacy_plan(spec, entry, *, tuning_dir, num_seeds, eval_every, lr_grid, horizon):
  trials = search_trials(spec, lr_grid)
  seeds = [TUNE_SEED_OFFSET + k for k in range(num_seeds)]
  num_steps = run_steps = entry.num_steps
  key = {"name": spec.name, "rule": spec.tuning, "trials": trials, "num_steps": num_steps,
         "seeds": seeds, "eval_every": eval_every}
  if horizon and horizon > num_steps:
    run_steps = int(horizon)
    eval_every = eval_every or max(1, math.ceil(num_steps / 20))
    key.update(horizon=run_steps, eval_every=eval_every)
  digest = hashlib.sha256(json.dumps(_jobs.to_jsonable(key), sort_keys=True).encode())
  folder = (pathlib.Path(tuning_dir) / entry.name
            / f"{spec.name}-{spec.tuning}-{digest.hexdigest()[:10]}")
  jobs = [_jobs.make_job(task=entry.name, num_steps=run_steps, optimizer=spec.name,
                         label=f"{spec.label}#trial{i}", seed=s, hparams=hp,
                         eval_every=eval_every, out=folder / f"trial_{i:02d}_seed_{s}.json")
          for i, hp in enumerate(trials) for s in seeds]
  return TuningPlan(spec, entry.name, num_steps, trials, seeds, folder, jobs, key)


def plan_hash(p: TuningPlan) -> str:
  """The hash in the plan's folder name (keys the shipped reference results)."""
  return p.folder.name.rsplit("-", 1)[-1]


def forget(p: TuningPlan) -> None:
  """Deletes the plan's cached trials and decision (`--retune`)."""
  import shutil
  if p.folder.is_dir():
    shutil.rmtree(p.folder)


def _slug(text: str) -> str:
  import re
  return re.sub(r"[^A-Za-z0-9_.+=-]+", "_", text)


def _final_valid_loss(rec: dict, at_step: int) -> float:
  """The validation loss at the last evaluation at or before `at_step`; inf if the run
  had a non-finite loss by then."""
  h = rec["history"]
  if not np.all(np.isfinite(h["train_loss"][:at_step])):
    return math.inf
  idx = np.flatnonzero(h["eval_step"] <= at_step)
  if not idx.size:
    return math.inf
  v = float(h["valid_loss"][idx[-1]])
  return v if np.isfinite(v) else math.inf


def decide(p: TuningPlan) -> dict:
  """Reads the finished trials, picks the best and caches `best.json`.

  Returns:
    `{"hparams", "trial", "scores" (per trial), "at_edge" (lr_grid: best at an end of the
    grid), "complete" (all trials finished)}`.

  Raises:
    RuntimeError: no trial finished.
  """
  best_file = p.folder / "best.json"
  if best_file.is_file():
    return _jobs.read_json(best_file)
  scores, complete = [], True
  for i in range(len(p.trials)):
    vals = []
    for s in p.seeds:
      f = p.folder / f"trial_{i:02d}_seed_{s}.json"
      if f.is_file():
        vals.append(_final_valid_loss(_jobs.load_record(f), p.num_steps))
      else:
        complete = False
    scores.append(float(np.mean(vals)) if vals else math.nan)
  finite = [k for k, v in enumerate(scores) if np.isfinite(v)]
  if not finite:
    raise RuntimeError(f"tuning {p.spec.label} on {p.task}: no trial finished with a finite "
                       f"validation loss (see {p.folder})")
  best = min(finite, key=lambda k: scores[k])  # first of ties
  result = {"spec": p.spec.label, "task": p.task, "rule": p.spec.tuning,
            "num_steps": p.num_steps, "seeds": p.seeds, "trial": best,
            "hparams": p.trials[best], "scores": scores, "trials": p.trials,
            "at_edge": p.spec.tuning == "lr_grid" and best in (0, len(p.trials) - 1),
            "complete": complete}
  if complete:
    _jobs.write_json(best_file, result)
  return result


def trial_curves(p: TuningPlan) -> dict[float, np.ndarray]:
  """{learning rate: [seeds, T] training losses} of an lr_grid plan's finished trials
  (non-finite steps after a divergence stay NaN/inf)."""
  curves: dict[float, np.ndarray] = {}
  for i, hp in enumerate(p.trials):
    rows = []
    for s in p.seeds:
      f = p.folder / f"trial_{i:02d}_seed_{s}.json"
      if f.is_file():
        loss = _jobs.load_record(f)["history"]["train_loss"]
        rows.append(np.where(np.isfinite(loss), loss, np.inf))
    if rows:
      curves[float(hp["learning_rate"])] = np.stack(rows)
  return curves
