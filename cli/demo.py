"""`lopt demo --out DIR`: the demo benchmark (what `make demo` runs), from an installed package.

Official weights are found as for every command: `$LOPT_CHECKPOINT_DIR` (e.g. a folder with
`celo/celo_theta.state`), the user cache (`lopt pretrained add celo FILE`), or a download.
Optimizers whose weights are not on the machine are left out and listed under "excluded".
"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
  p = sub.add_parser("demo", help="run the demo benchmark (minutes on a CPU) into a folder",
                     description=__doc__.splitlines()[0])
  p.add_argument("--out", default="runs/demo", help="output folder (resumable; default "
                 "runs/demo)")
  p.add_argument("--seeds", type=int, default=3, help="seeds per (task, optimizer)")
  p.add_argument("--workers", type=int, default=1, help="parallel worker processes")
  p.add_argument("--no-progress", action="store_true")
  p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
  from lopt.cli import benchmark, check_output_dir
  check_output_dir(args.out)
  parser = argparse.ArgumentParser()
  benchmark.register(parser.add_subparsers())
  bench_args = parser.parse_args(
      ["benchmark", "--suite", "demo", "--optimizers", "demo", "--seeds", str(args.seeds),
       "--workers", str(args.workers), "--out", args.out]
      + (["--no-progress"] if args.no_progress else []))
  return benchmark.run(bench_args)
