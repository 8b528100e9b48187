"""`lopt benchmark`: benchmark optimizers on a suite; `lopt benchmark score --dir F`: AlgoPerf
scores of an AlgoPerf-layout folder; `lopt benchmark report --dir OUT`: redo a report;
`lopt benchmark pool --dir A,B --out C`: one report over benchmark folders with disjoint tasks."""

from __future__ import annotations

import argparse
import os
import sys

from lopt.cli._io import emit_json, out


def register(sub: argparse._SubParsersAction) -> None:
  from lopt.cli import add_no_verify  # cli/__init__ imports this module: not at the top
  p = sub.add_parser(
      "benchmark", help="benchmark optimizers against tuned baselines; score AlgoPerf folders",
      description="`lopt benchmark [run] --suite S --optimizers A,B --seeds N --out DIR` "
      "tunes the baselines, runs every (task, optimizer, seed) (resumable) and writes "
      "results.json/csv, report.md and plots. `lopt benchmark score --dir F` prints "
      "{submission: score} for a folder with study_times.csv, heldout_study_times.csv and "
      "workload_budgets.csv (AlgoPerf v0.5 rules). `lopt benchmark report --dir OUT` "
      "recomputes the results and report of a benchmark folder. `lopt benchmark pool --dir "
      "A,B --out C` writes one report over finished folders with disjoint tasks.")
  p.add_argument("action", nargs="?", default="run", choices=("run", "score", "report", "pool"))
  p.add_argument("--suite", default="demo", help="train, heldout, demo, paper or all")
  p.add_argument("--tasks", default=None,
                 help="comma-separated suite task names and/or module:function paths, where "
                 "function() returns a Task, a TaskSpec or a list of them (instead of a suite; "
                 "a Task's budget comes from --steps)")
  p.add_argument("--optimizers", default="demo",
                 help="comma-separated specs: adam-tuned, nadamw-tuned, lion, lion-tuned, celo, "
                 "celo:path=FILE, celo_adam:path=FILE:label=NAME, ...; `demo` = the demo set")
  p.add_argument("--seeds", type=int, default=3, help="seeds per (task, optimizer)")
  p.add_argument("--out", default="runs/benchmark", help="output folder (resumable)")
  p.add_argument("--workers", type=int, default=1, help="parallel worker processes")
  p.add_argument("--steps", type=int, default=None, help="override every task's step budget")
  p.add_argument("--budget-scale", type=float, default=None,
                 help="multiply every task's step budget (e.g. 0.25 for a quick run)")
  p.add_argument("--eval-every", type=int, default=None,
                 help="steps between validation evaluations (default: ~20 per run)")
  p.add_argument("--tuning-dir", default=None,
                 help="tuning cache (default $LOPT_CACHE_DIR/tuning or ~/.cache/lopt/tuning)")
  p.add_argument("--tune-seeds", type=int, default=1, help="seeds per tuning trial")
  p.add_argument("--lr-grid", default=None,
                 help="comma-separated learning rates replacing the *-tuned grids (quick runs)")
  p.add_argument("--envelope-factor", type=int, default=4,
                 help="tuned-Adam grid runs this many times the budget, for the speedup "
                 "envelope (speedups up to this factor are measurable)")
  p.add_argument("--retune", action="store_true",
                 help="ignore cached and shipped tuning results of these tasks and tune again")
  p.add_argument("--allow-missing", action="store_true",
                 help="list an explicitly named optimizer that cannot run (missing weights, "
                 "failed runs) as not included instead of failing with exit code 2")
  p.add_argument("--sequential", action="store_true",
                 help="run every (trial, seed) on its own, compiling its own programs, instead of "
                 "in groups that share one compiled program")
  p.add_argument("--no-compile-cache", action="store_true",
                 help="do not turn on JAX's persistent compilation cache")
  p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
  add_no_verify(p)
  p.add_argument("--no-progress", action="store_true")
  p.add_argument("--dir", default=None, help="score: the AlgoPerf-layout folder; report: the "
                 "benchmark folder; pool: comma-separated benchmark folders")
  p.add_argument("--enforce-budget", action="store_true",
                 help="score: also count study times above the ruleset budget as misses")
  p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
  from lopt.cli import UsageError
  if args.action == "score":
    return _score(args)
  if args.action == "pool":
    return _pool(args)
  if args.action == "report":
    if not args.dir:
      raise UsageError("report needs --dir BENCHMARK_FOLDER")
    from lopt import eval as E
    try:
      E.rescore(args.dir, plots=not args.no_plots)
    except E.BenchmarkError as e:
      raise UsageError(str(e)) from None
    out(os.path.join(args.dir, "report.md"))
    return 0
  from lopt.cli import check_output_dir
  check_output_dir(args.out)
  for name in ("seeds", "workers", "steps", "eval_every", "tune_seeds", "envelope_factor"):
    v = getattr(args, name)
    if v is not None and v < 1:
      raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {v}")
  if args.budget_scale is not None and not args.budget_scale > 0:
    raise UsageError(f"--budget-scale must be > 0, got {args.budget_scale}")
  lr_grid = None
  if args.lr_grid:
    try:
      lr_grid = [float(x) for x in args.lr_grid.split(",") if x.strip()]
    except ValueError:
      raise UsageError(f"--lr-grid expects comma-separated numbers, got {args.lr_grid!r}"
                       ) from None
    if not lr_grid or min(lr_grid) <= 0:
      raise UsageError(f"--lr-grid needs positive learning rates, got {args.lr_grid!r}")
  from lopt import eval as E
  tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None
  if tasks and any(":" in t for t in tasks) and os.getcwd() not in sys.path:
    sys.path.insert(0, os.getcwd())  # `--tasks mytasks:make` finds ./mytasks.py, as python -m
  try:
    res = E.run_benchmark(args.suite, args.optimizers, args.seeds, args.out, tasks=tasks,
                          workers=args.workers, num_steps=args.steps,
                          budget_scale=args.budget_scale, eval_every=args.eval_every,
                          tuning_dir=args.tuning_dir, tune_seeds=args.tune_seeds,
                          lr_grid=lr_grid, envelope_factor=args.envelope_factor,
                          retune=args.retune, allow_missing=args.allow_missing,
                          vectorise=not args.sequential,
                          compile_cache=not args.no_compile_cache,
                          progress=not args.no_progress, plots=not args.no_plots)
  except E.BenchmarkError as e:
    raise UsageError(str(e)) from None
  # Validation first, then the training-loss speedup.
  summary = {opt: {"algoperf_score_steps": a["algoperf_score_steps"], "hit_rate": a["hit_rate"],
                   "steps_to_target_fraction": a["steps_to_target_fraction"],
                   "train_loss_speedup_iqm": a["speedup_iqm"][0]}
             for opt, a in res["aggregate"].items()}
  emit_json({"report": os.path.join(args.out, "report.md"), "excluded": res["excluded"],
             "failed_runs": len(res["errors"]), "summary": summary})
  return 1 if res["errors"] else 0


def _score(args: argparse.Namespace) -> int:
  from lopt.cli import UsageError
  from lopt.eval import scoring
  if not args.dir:
    raise UsageError("score needs --dir FOLDER (with study_times.csv, workload_budgets.csv)")
  try:
    result = scoring.score_folder(args.dir, enforce_budget=args.enforce_budget)
  except (FileNotFoundError, ValueError) as e:
    raise UsageError(str(e)) from None
  emit_json(result.scores)
  return 0


def _pool(args: argparse.Namespace) -> int:
  from lopt.cli import UsageError
  folders = [d.strip() for d in (args.dir or "").split(",") if d.strip()]
  if not folders or args.out == "runs/benchmark":
    raise UsageError("pool needs --dir FOLDER_A,FOLDER_B and --out NEW_FOLDER")
  if any(os.path.abspath(args.out) == os.path.abspath(f) for f in folders):
    raise UsageError("pool --out must be a new folder, not one of the pooled ones")
  from lopt.cli import check_output_dir
  check_output_dir(args.out)
  from lopt import eval as E
  try:
    res = E.pool(folders, args.out, plots=not args.no_plots)
  except E.BenchmarkError as e:
    raise UsageError(str(e)) from None
  summary = {opt: {"speedup_iqm": a["speedup_iqm"][0], "tasks": a["tasks"],
                   "hit_rate": a["hit_rate"]} for opt, a in res["aggregate"].items()}
  emit_json({"report": os.path.join(args.out, "report.md"), "summary": summary})
  return 0
