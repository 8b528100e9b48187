"""`run_benchmark`: tune the baselines, run every (task, optimizer, seed), report.

Layout of the output folder:

    OUT/config.json            what was asked (suite, tasks and budgets, optimizers, seeds)
    OUT/runs/<task>/<optimizer>/seed_<k>.json   one record per finished run (resume unit)
    OUT/results.json, results.csv, summary.csv  the numbers
    OUT/report.md, OUT/plots/*.png              the report

Tuning trials live in the tuning cache (`--tuning-dir`, default `~/.cache/lopt/tuning`)
and are shared by every benchmark that needs the same (task, budget, search space).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import sys
from typing import Any, Sequence

from lopt import rundir
from lopt.eval import _analysis, _jobs, _specs, _tasks, _tuning, metrics
from lopt.eval._specs import OptimizerSpec
from lopt.eval._tasks import TaskEntry

SUITES = ("train", "heldout", "demo", "paper", "all")


class BenchmarkError(ValueError):
  """Bad benchmark input (unknown suite/task/optimizer, a mismatched output folder), or an
  optimizer named explicitly that could not run."""


class BenchmarkDirMismatchError(BenchmarkError, rundir.RunDirMismatchError):
  """`out` holds a benchmark with other tasks, budgets or tuning settings."""


def suite_tasks(suite: str, tasks: Sequence[Any] | None = None, *,
                num_steps: int | None = None, budget_scale: float | None = None,
                fingerprints: bool = True) -> list[TaskEntry]:
  """The tasks of a suite (or the given `tasks`), with their step budgets.

  Args:
    suite: "train", "heldout", "demo", "paper" or "all" (ignored when `tasks` is given).
    tasks: suite names, `module:function` paths, `Task` or `TaskSpec` objects (any mix).
    num_steps: override every budget (required for bare `Task` objects).
    budget_scale: multiply every budget (rounded, at least 10 steps).
    fingerprints: compute each task's content hash (builds the tasks).
  """
  from lopt import tasks as T
  suite_map = T.SUITE
  if tasks:
    names = list(tasks)
  elif suite in ("train", "heldout"):
    names = list(T.suite_names(suite))
  elif suite == "demo":
    names = [n for n, s in suite_map.items() if getattr(s, "demo", False)]
  elif suite == "paper":
    names = [n for n, s in suite_map.items() if getattr(s, "paper", False)]
  elif suite == "all":
    names = list(suite_map)
  else:
    raise BenchmarkError(f"unknown suite {suite!r}; choose from {', '.join(SUITES)}")
  if not names:
    raise BenchmarkError(f"suite {suite!r} has no tasks")
  try:
    return _tasks.resolve(names, num_steps=num_steps, budget_scale=budget_scale,
                          fingerprints=fingerprints)
  except _tasks.TaskResolutionError as e:
    raise BenchmarkError(str(e)) from None


def check_available(specs: Sequence[OptimizerSpec], num_steps: int
                    ) -> tuple[list[OptimizerSpec], dict[str, str]]:
  """Splits specs into the ones that can be built here and {label: why not} for the rest.

  A pretrained learned optimizer whose weights are not on this machine (e.g. they must be
  downloaded) is excluded with the loader's message; an unknown name or a `path=` that
  does not exist is an error.
  """
  from lopt import optimizers, training
  try:
    from lopt.learned_opts import CheckpointUnavailableError
  except ImportError:  # pragma: no cover - learned_opts always ships
    CheckpointUnavailableError = FileNotFoundError  # noqa: N806
  ok, excluded = [], {}
  for s in specs:
    if s.tuning is not None:
      if s.name not in optimizers.BASELINES:
        raise BenchmarkError(f"{s.label!r}: only baselines can be tuned; known: "
                             f"{', '.join(sorted(optimizers.BASELINES))}")
      ok.append(s)
      continue
    if s.checkpoint is not None and not os.path.exists(s.checkpoint):
      raise BenchmarkError(f"{s.label!r}: checkpoint {s.checkpoint} does not exist")
    try:
      optimizers.make_optimizer(s.name, num_steps=num_steps, checkpoint=s.checkpoint,
                              **s.hparams_dict)
    except optimizers.UnknownOptimizerError as e:
      raise BenchmarkError(str(e)) from None
    except (CheckpointUnavailableError, FileNotFoundError, OSError) as e:
      excluded[s.label] = f"{type(e).__name__}: {e}"
      continue
    except ValueError as e:
      raise BenchmarkError(f"{s.label!r}: {e}") from None
    ok.append(s)
  return ok, excluded


def _run_path(out: pathlib.Path, task: str, spec: OptimizerSpec, seed: int) -> pathlib.Path:
  return out / "runs" / task / spec.slug / f"seed_{seed}.json"


def run_benchmark(suite: str = "demo", optimizers: str | Sequence[str] = "demo", seeds: int = 3,
                  out: str | os.PathLike = "runs/benchmark", *,
                  tasks: Sequence[Any] | None = None, workers: int = 1,
                  num_steps: int | None = None, budget_scale: float | None = None,
                  eval_every: int | None = None, tuning_dir: str | os.PathLike | None = None,
                  tune_seeds: int = 1, lr_grid: Sequence[float] | None = None,
                  envelope_factor: int = 4, retune: bool = False, allow_missing: bool = False,
                  vectorise: bool = True, references: bool = True,
                  compile_cache: bool = True, progress: bool = True, report: bool = True,
                  plots: bool = True) -> dict:
  """Benchmarks optimizers on a suite (or your own tasks) against tuned Adam; resumable.

  Args:
    suite: "train", "heldout", "demo", "paper" or "all".
    optimizers: specs (comma-separated string or list; see `lopt.eval.parse_spec`);
      `adam-tuned` (the reference: targets and speedup envelope) is always run.
    seeds: benchmark seeds 0..seeds-1 per (task, optimizer).
    out: the output folder (finished runs there are not redone).
    tasks: instead of the suite: suite names, `module:function` paths (the function returns
      a `Task`, a `TaskSpec` or a list of them), `Task` objects or `TaskSpec`s. A bare
      `Task` needs `num_steps`; a `TaskSpec` brings its budget.
    workers: parallel worker processes (1: in this process). Workers rebuild suite and
      `module:function` tasks by name or path; `Task` objects are sent pickled.
    num_steps: override every task's budget; `budget_scale` multiplies it instead.
    eval_every: steps between validation evaluations (default: ~20 per run).
    tuning_dir: the tuning cache (default `$LOPT_CACHE_DIR/tuning` or
      `~/.cache/lopt/tuning`), keyed by a hash of every input (see `lopt.eval._tuning`).
    tune_seeds: seeds per tuning trial.
    lr_grid: replaces every `LR_GRIDS[name]` of `*-tuned` specs (for quick runs and tests;
      the report shows the grid).
    envelope_factor: the reference's LR-grid trials run `envelope_factor x` the budget
      (selection still at the budget), so speedups up to this factor are measurable
      (VeLOdrome: 10x; AlgoPerf's r_max: 4).
    retune: delete the cached tuning results of this benchmark's (task, tuned optimizer)
      pairs and tune again.
    allow_missing: an optimizer named explicitly that cannot run (weights not on this
      machine, failed runs) is listed as not included instead of raising. Optimizers that
      come from the `demo` set are always treated this way.
    vectorise: run the trials and seeds that share a task and an optimizer with one compiled
      program (`lopt.eval._vectorised`; vmapped, or on CPU one after another for tasks with
      convolutions or loops, `lopt.training.train_many`); False runs each on its own.
    references: read shipped tuned-Adam results (`lopt.eval.reference`) for tasks whose
      hashes match instead of re-running the reference's LR grid.
    compile_cache: use JAX's persistent compilation cache (in `<tuning_dir>/../jax_cache`)
      unless one is configured already; seeds and reruns then skip compilation.
    progress: progress bars on stderr.
    report: write results files, `report.md` and plots.
    plots: write PNG plots (needs matplotlib).

  Returns:
    The results dict (also written to `OUT/results.json`).

  Raises:
    BenchmarkError: bad input, or (unless `allow_missing`) an explicitly named optimizer
      that could not run; the results and report are written first in the latter case.

  Example:
    >>> res = run_benchmark("demo", "adam-tuned,celo", seeds=3, out="runs/demo")  # doctest: +SKIP
    >>> res = run_benchmark(tasks=[my_task], num_steps=500, optimizers="celo")  # doctest: +SKIP
  """
  out = pathlib.Path(out)
  try:
    specs = _specs.parse_specs(optimizers)
    required = _specs.explicit_labels(optimizers)
  except _specs.SpecError as e:
    raise BenchmarkError(str(e)) from None
  if seeds < 1:
    raise BenchmarkError(f"seeds must be >= 1, got {seeds}")
  if envelope_factor < 1:
    raise BenchmarkError(f"envelope_factor must be >= 1, got {envelope_factor}")
  lr_grid = None if lr_grid is None else [float(x) for x in lr_grid]
  if lr_grid is not None and (not lr_grid or min(lr_grid) <= 0):
    raise BenchmarkError(f"lr_grid must hold positive learning rates, got {lr_grid}")
  entries = suite_tasks(suite, tasks, num_steps=num_steps, budget_scale=budget_scale)
  local = {}
  if workers > 1:
    try:
      local = _tasks.local_tasks(entries)
    except _tasks.TaskResolutionError as e:
      raise BenchmarkError(str(e)) from None
  ref = _specs.parse_spec(_specs.REFERENCE)
  if all(s.label != ref.label for s in specs):
    specs = [ref] + specs
  required.add(ref.label)
  specs, excluded = check_available(specs, entries[0].num_steps)
  missing = {k: v for k, v in excluded.items() if k in required}
  if missing and not allow_missing:
    raise BenchmarkError(_missing_message(missing, "cannot run here"))
  tuning_dir = pathlib.Path(tuning_dir) if tuning_dir else _tuning.default_tuning_dir()
  log = (lambda *a: print("[lopt benchmark]", *a, file=sys.stderr)) if progress else (
      lambda *a: None)
  for label, why in excluded.items():
    log(f"not included: {label}: {why}")

  config = {"suite": "custom" if tasks else suite,
            "tasks": [dataclasses.asdict(e) for e in entries],
            "optimizers": [s.to_json() for s in specs], "excluded": excluded,
            "seeds": list(range(seeds)), "eval_every": eval_every, "tune_seeds": tune_seeds,
            "tuning_dir": str(tuning_dir), "lr_grid": lr_grid,
            "envelope_factor": int(envelope_factor), "reference": ref.label,
            "training_version": _tasks.TRAINING_VERSION}
  # Resuming into `out` needs the same tasks, budgets and tuning settings (adding
  # optimizers or seeds is fine: config.json then records the new ones).
  rundir.RunDir(out).claim(_jobs.to_jsonable(config), keys=_SAME,
                           error=BenchmarkDirMismatchError)
  cache = tuning_dir.parent / "jax_cache" if compile_cache else None
  programs = None
  if vectorise:  # the tuning and benchmark stages of a task share compiled programs
    from lopt import training
    programs = training.Programs()
  run = dict(workers=workers, progress=progress, compile_cache=cache, local_tasks=local,
             vectorise=vectorise, programs=programs)

  # 1. Tuning trials (cached across benchmarks, keyed by every input).
  plans = {(e.name, s.label): _tuning.plan(
      s, e, tuning_dir=tuning_dir, num_seeds=tune_seeds, eval_every=eval_every,
      lr_grid=lr_grid, horizon=envelope_factor * e.num_steps if s.label == ref.label else None)
           for e in entries for s in specs if s.tuning}
  if retune:
    for p in plans.values():
      _tuning.forget(p)
  elif references:
    from lopt.eval import reference
    for p in plans.values():
      if reference.install(p):
        log(f"{p.task} / {p.spec.label}: shipped reference results (hash "
            f"{_tuning.plan_hash(p)}); --retune to redo")
  tune_jobs = [j for p in plans.values() for j in p.jobs]
  errors = _jobs.execute(tune_jobs, desc="tuning", **run)
  tuned = {}
  for key, p in plans.items():
    try:
      tuned[key] = _tuning.decide(p)
    except RuntimeError as e:
      errors[str(p.folder)] = str(e)

  # 2. Benchmark runs.
  jobs = []
  for e in entries:
    for s in specs:
      if s.tuning and (e.name, s.label) not in tuned:
        continue
      hp = tuned[(e.name, s.label)]["hparams"] if s.tuning else s.hparams_dict
      for k in range(seeds):
        job = _jobs.make_job(task=e.name, task_ref=e.ref, fingerprint=e.fingerprint,
                             num_steps=e.num_steps, optimizer=s.name, label=s.label, seed=k,
                             hparams=hp, checkpoint=s.checkpoint, eval_every=eval_every,
                             out=_run_path(out, e.name, s, k))
        _check_resumable(job)
        jobs.append(job)
  errors.update(_jobs.execute(jobs, desc="benchmark", **run))

  results = collect(out, entries, specs, plans, tuned, seeds=seeds, excluded=excluded,
                    errors=errors, config=config)
  if report:
    from lopt.eval import _report
    _report.write_all(out, results, plots=plots)
    log(f"wrote {out / 'report.md'}")
  failed = _failed_required(errors, tune_jobs + jobs, plans, required)
  if failed and not allow_missing:
    raise BenchmarkError(_missing_message(failed, "failed") + f" (results so far in {out})")
  return results


def _missing_message(missing: dict[str, str], what: str) -> str:
  lines = "; ".join(f"{k}: {v.splitlines()[0] if v else ''}" for k, v in missing.items())
  return (f"optimizer(s) named explicitly {what}: {lines}. Fix the cause, drop them from "
          "--optimizers, or pass --allow-missing (allow_missing=True) to list them as not "
          "included")


def _failed_required(errors: dict[str, str], jobs: Sequence[dict], plans: dict,
                     required: set[str]) -> dict[str, str]:
  """{label: first error} for required optimizers with a failed run or tuning."""
  label_of = {j["out"]: j["label"].split("#", 1)[0] for j in jobs}
  label_of.update({str(p.folder): p.spec.label for p in plans.values()})
  out: dict[str, str] = {}
  for path, err in errors.items():
    label = label_of.get(path)
    if label in required and label not in out:
      out[label] = f"{path}: {err}"
  return out


_SAME = ("tasks", "eval_every", "tune_seeds", "lr_grid", "envelope_factor")


def _same_paths(job: dict) -> dict:
  """The job with its checkpoint path resolved, so `../x` and `/abs/x` (one file) match."""
  ckpt = job.get("checkpoint")
  if isinstance(ckpt, str) and os.path.exists(ckpt):
    job = dict(job, checkpoint=os.path.realpath(ckpt))
  return job


def _check_resumable(job: dict) -> None:
  """An existing record must come from the same job (budget, hyperparameters, ...)."""
  path = pathlib.Path(job["out"])
  if not path.is_file():
    return
  old = _same_paths(_jobs.read_json(path)["job"])
  new = _same_paths(_jobs.to_jsonable({k: v for k, v in job.items() if k != "out"}))
  if old != new:
    diff = sorted(k for k in new if old.get(k) != new[k])
    raise BenchmarkError(
        f"{path} holds a run with different settings ({', '.join(diff)}); use a new --out "
        "folder (or delete that run to redo it)")


def collect(out: pathlib.Path, entries: Sequence[TaskEntry], specs: Sequence[OptimizerSpec],
            plans: dict, tuned: dict, *, seeds: int, excluded: dict, errors: dict,
            config: dict) -> dict:
  """Reads every finished run and computes the results dict."""
  ref = _specs.REFERENCE
  records: dict[tuple[str, str], list[dict]] = {}
  for e in entries:
    for s in specs:
      recs = []
      for k in range(seeds):
        f = _run_path(out, e.name, s, k)
        if f.is_file():
          recs.append(_jobs.load_record(f))
      records[(e.name, s.label)] = recs
  targets = _analysis.targets_from({e.name: records[(e.name, ref)] for e in entries})
  envelopes = {}
  for e in entries:
    p = plans.get((e.name, ref))
    curves = _tuning.trial_curves(p) if p is not None else {}
    if curves:
      envelopes[e.name] = metrics.AdamEnvelope.from_curves(curves, alpha=_analysis.SMOOTHING)
  rows = [_analysis.run_metrics(r, targets[e.name], envelopes.get(e.name))
          for e in entries for s in specs for r in records[(e.name, s.label)]]
  labels = [s.label for s in specs]
  summary = _analysis.summarise(rows, [e.name for e in entries], labels)
  curves = {}
  for (task, label), recs in records.items():
    if recs:
      curves.setdefault(task, {})[label] = {
          "train_loss": [r["history"]["train_loss"] for r in recs],
          "eval_step": recs[0]["history"]["eval_step"],
          "valid_loss": [r["history"]["valid_loss"] for r in recs]}
  return {
      "config": config,
      "targets": targets,
      "tuning": {f"{t}|{lbl}": v for (t, lbl), v in tuned.items()},
      "runs": rows,
      **summary,
      "excluded": excluded,
      "errors": errors,
      "envelopes": {t: {"steps": env.steps, "loss": env.loss} for t, env in envelopes.items()},
      "_curves": curves,
  }


def rescore(out: str | os.PathLike, *, report: bool = True, plots: bool = True) -> dict:
  """Recomputes results and the report of a benchmark folder from its files (no training)."""
  out = pathlib.Path(out)
  cfg_file = out / "config.json"
  if not cfg_file.is_file():
    raise BenchmarkError(f"{out} has no config.json: not a benchmark folder")
  config = _jobs.read_json(cfg_file)
  entries = [TaskEntry(**t) for t in config["tasks"]]
  # Folders written before task fingerprints: read their tuning cache by the old layout.
  legacy = "training_version" not in config
  specs = [OptimizerSpec(name=o["name"], tuning=o["tuning"],
                         hparams=tuple(sorted(o["hparams"].items())), checkpoint=o["checkpoint"],
                         label=o["label"], trials=o["trials"]) for o in config["optimizers"]]
  plans, tuned = {}, {}
  for e in entries:
    for s in specs:
      if s.tuning:
        factor = config.get("envelope_factor", 1)
        p = _tuning.plan(s, e, tuning_dir=config["tuning_dir"], legacy=legacy,
                         num_seeds=config["tune_seeds"], eval_every=config["eval_every"],
                         lr_grid=config.get("lr_grid"),
                         horizon=factor * e.num_steps if s.label == config["reference"]
                         else None)
        plans[(e.name, s.label)] = p
        try:
          tuned[(e.name, s.label)] = _tuning.decide(p)
        except RuntimeError:
          pass
  results = collect(out, entries, specs, plans, tuned, seeds=len(config["seeds"]),
                    excluded=config.get("excluded", {}), errors={}, config=config)
  if report:
    from lopt.eval import _report
    _report.write_all(out, results, plots=plots)
  return results



def pool(folders: Sequence[str | os.PathLike], out: str | os.PathLike | None = None, *,
         plots: bool = True) -> dict:
  """Pools finished benchmark folders with disjoint tasks into one set of results.

  Each folder keeps its own targets, tuning and speedup envelope (its per-run rows are
  recomputed from its files, as `rescore` does); the aggregates (speedup IQM / geo-mean with
  task-stratified CIs, hit rates, AlgoPerf scores and profiles) are then taken over all
  tasks. Folders run with different protocols (LR grid, envelope factor, tuning seeds) can be
  pooled; `config["protocols"]` lists each folder's, and the report says so. Speedups are
  capped at each folder's envelope factor.

  Args:
    folders: benchmark folders (`config.json` + run files), no task in two of them.
    out: where to write results.json/csv, report.md and plots (None: write nothing).
    plots: also write the PNG plots.

  Returns:
    The results dict, in the layout of `run_benchmark`'s.

  Raises:
    BenchmarkError: no folder, a folder that is not a benchmark folder, or a
      task that appears in two folders.

  Example:
    >>> from lopt import eval as E
    >>> res = E.pool(["runs/heldout_all", "runs/heldout_fm16"], "runs/heldout_pooled")  # doctest: +SKIP
  """
  folders = [pathlib.Path(f) for f in folders]
  if not folders:
    raise BenchmarkError("pool needs at least one benchmark folder")
  parts = [(f, rescore(f, report=False, plots=False)) for f in folders]
  tasks, labels, optimizers, protocols = [], [], [], []
  owner: dict[str, pathlib.Path] = {}
  merged: dict[str, dict] = {k: {} for k in ("targets", "tuning", "excluded", "errors",
                                              "envelopes", "_curves")}
  rows = []
  for folder, res in parts:
    cfg = res["config"]
    for t in cfg["tasks"]:
      if t["name"] in owner:
        raise BenchmarkError(f"task {t['name']!r} is in both {owner[t['name']]} and {folder}: "
                             "pool folders with disjoint tasks (or drop one of them)")
      owner[t["name"]] = folder
      tasks.append(t)
    for o in cfg["optimizers"]:
      if o["label"] not in labels:
        labels.append(o["label"])
        optimizers.append(o)
    protocols.append({"folder": str(folder), "tasks": [t["name"] for t in cfg["tasks"]],
                      **{k: cfg.get(k) for k in ("lr_grid", "envelope_factor", "tune_seeds",
                                                 "seeds", "eval_every")},
                      "trials": {o["label"]: o["trials"] for o in cfg["optimizers"]
                                 if o["tuning"] == "halton"}})
    rows += res["runs"]
    for k in merged:
      merged[k].update(res.get(k, {}))
  first = parts[0][1]["config"]
  config = {"suite": "pooled", "tasks": tasks, "optimizers": optimizers,
            "seeds": first["seeds"], "reference": first["reference"],
            "pooled_from": [str(f) for f in folders], "protocols": protocols}
  summary = _analysis.summarise(rows, [t["name"] for t in tasks], labels)
  results = {"config": config, "targets": merged["targets"], "tuning": merged["tuning"],
             "runs": rows, **summary, "excluded": merged["excluded"],
             "errors": merged["errors"], "envelopes": merged["envelopes"],
             "_curves": merged["_curves"]}
  if out is not None:
    from lopt.eval import _report
    _report.write_all(out, results, plots=plots)
  return results
