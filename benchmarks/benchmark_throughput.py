"""Vectorised vs one-by-one runs: the demo suite's tuning + benchmark stage both ways.

Runs `lopt.eval.run_benchmark` twice in this process on fresh tuning caches (no persistent
compilation cache, no shipped reference results, so both ways compile and train everything):
once with `vectorise=True` (LR-grid points and seeds of a task and optimizer as one vmapped
program) and once with `vectorise=False`. Prints both wall-clock times, checks that the two
ways chose the same tuned learning rates, prints the CPU-time ratio (less disturbed by other
jobs on a shared machine) and ends with `vectorised/sequential speedup: N.NN` (wall clock).

Usage (from the directory above the `lopt` package; the demo suite takes about a minute on 2
CPU cores, held-out tasks minutes to hours):

    python -m lopt.benchmarks.benchmark_throughput
    python -m lopt.benchmarks.benchmark_throughput --budget-scale 0.2    # a quick look
    python -m lopt.benchmarks.benchmark_throughput --tasks digits-mlp-32-ln,digits-ae-32 \
        --optimizers adam-tuned,shampoo-tuned,muon-tuned --envelope-factor 2  # held-out tasks
    python -m lopt.benchmarks.benchmark_throughput --export-references   # maintainers

`--export-references` packs the vectorised run's tuned-Adam trials as `lopt.eval.reference`
package data (only meaningful at the default protocol and budgets).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--suite", default="demo")
  p.add_argument("--optimizers", default="adam-tuned,adam")
  p.add_argument("--seeds", type=int, default=3)
  p.add_argument("--budget-scale", type=float, default=None)
  p.add_argument("--tasks", default=None, help="comma-separated task names instead of --suite")
  p.add_argument("--lr-grid", default=None, help="comma-separated learning rates")
  p.add_argument("--envelope-factor", type=int, default=4)
  p.add_argument("--export-references", action="store_true")
  args = p.parse_args(argv)

  from lopt import eval as E

  tasks = args.tasks.split(",") if args.tasks else None
  grid = [float(x) for x in args.lr_grid.split(",")] if args.lr_grid else None
  E.suite_tasks(args.suite, tasks, budget_scale=args.budget_scale)  # load the datasets once
  times, cpu, chosen = {}, {}, {}
  with tempfile.TemporaryDirectory() as root:
    for mode in ("vectorised", "sequential"):
      t0, c0 = time.perf_counter(), time.process_time()
      res = E.run_benchmark(args.suite, args.optimizers, args.seeds,
                            os.path.join(root, mode, "out"), tasks=tasks,
                            budget_scale=args.budget_scale, lr_grid=grid,
                            envelope_factor=args.envelope_factor,
                            tuning_dir=os.path.join(root, mode, "tuning"),
                            vectorise=mode == "vectorised", references=False,
                            compile_cache=False, progress=False, plots=False)
      times[mode], cpu[mode] = time.perf_counter() - t0, time.process_time() - c0
      chosen[mode] = {k: v["hparams"].get("learning_rate") for k, v in res["tuning"].items()}
      print(f"{mode}: {times[mode]:.1f} s wall, {cpu[mode]:.1f} s CPU ({len(res['runs'])} benchmark runs, "
            f"{sum(len(v['trials']) for v in res['tuning'].values())} tuning trials, "
            f"{len(res['errors'])} errors)", flush=True)
      if mode == "vectorised" and args.export_references:
        from lopt.eval import reference
        for path in reference.export_suite(args.suite, os.path.join(root, mode, "tuning"),
                                           budget_scale=args.budget_scale):
          print("exported", path)
  print("same tuned learning rates both ways:", chosen["vectorised"] == chosen["sequential"])
  for key in sorted(chosen["vectorised"]):  # float rounding can flip a near-tie of the grid
    if chosen["vectorised"][key] != chosen["sequential"].get(key):
      print(f"  {key}: {chosen['vectorised'][key]} vectorised, "
            f"{chosen['sequential'].get(key)} sequential")
  # CPU time (all threads of this process) is what other jobs on a shared box disturb least.
  print(f"vectorised/sequential CPU-time ratio: {cpu['sequential'] / cpu['vectorised']:.2f}")
  print(f"vectorised/sequential speedup: {times['sequential'] / times['vectorised']:.2f}")


if __name__ == "__main__":
  main()
