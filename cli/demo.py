"""`lopt demo --out DIR`: the demo benchmark (what `make demo` runs), from an installed package.

Official weights are found as for every command: `$LOPT_CHECKPOINT_DIR` (e.g. a folder with
`celo/celo_theta.state`), the user cache (`lopt pretrained add celo FILE`), or a download.
Optimizers whose weights are not on the machine are left out and listed under "excluded".
`--steps`, `--budget-scale` and `--lr-grid` make a quick run (a smoke test of an install);
they are passed to `lopt benchmark` unchanged.
"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
  from lopt.cli import add_no_verify  # cli/__init__ imports this module: not at the top
  p = sub.add_parser("demo", help="run the demo benchmark (minutes on a CPU) into a folder",
                     description=__doc__.splitlines()[0])
  p.add_argument("--out", default="runs/demo", help="output folder (resumable; default "
                 "runs/demo)")
  p.add_argument("--seeds", type=int, default=3, help="seeds per (task, optimizer)")
  p.add_argument("--workers", type=int, default=1, help="parallel worker processes")
  p.add_argument("--steps", type=int, default=None,
                 help="override every task's step budget (a quick run, e.g. 20)")
  p.add_argument("--budget-scale", type=float, default=None,
                 help="multiply every task's step budget (e.g. 0.25 for a quick run)")
  p.add_argument("--lr-grid", default=None,
                 help="comma-separated learning rates replacing tuned Adam's grid (quick runs)")
  p.add_argument("--tuning-dir", default=None,
                 help="tuning cache (default $LOPT_CACHE_DIR/tuning or ~/.cache/lopt/tuning)")
  p.add_argument("--no-progress", action="store_true")
  add_no_verify(p)
  p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
  from lopt.cli import benchmark, check_output_dir
  check_output_dir(args.out)
  parser = argparse.ArgumentParser()
  benchmark.register(parser.add_subparsers())
  extra = []
  for flag, value in (("--steps", args.steps), ("--budget-scale", args.budget_scale),
                      ("--lr-grid", args.lr_grid), ("--tuning-dir", args.tuning_dir)):
    if value is not None:
      extra += [flag, str(value)]
  bench_args = parser.parse_args(
      ["benchmark", "--suite", "demo", "--optimizers", "demo", "--seeds", str(args.seeds),
       "--workers", str(args.workers), "--out", args.out, *extra]
      + (["--no-progress"] if args.no_progress else []))
  return benchmark.run(bench_args)
