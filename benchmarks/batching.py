"""Per-run cost of a vmapped group against one run alone, per task: what `train_many`'s
choice between vmapped and one-by-one groups rests on.

For each task, trains `--runs` Adam runs (an LR grid) of `--steps` steps with
`lopt.training.prepare_many` both ways, vmapped and one by one, and times the training only
(compilation is done in `prepare_many`; best of 2, the second reusing the first's programs
through a `Programs` cache). Prints the time per run and step both ways and the ratio
vmapped / one by one (above 1: batching costs more than it saves), and the way
`train_many` picks by default on this backend.

Also prints the compile time of the single-run programs (what a run alone pays on top of
its steps) and, for a tuning run of the held-out protocol (2x the task's budget), the most
any grouping can gain over runs alone on this machine: (compile + steps x single) /
(steps x the faster way). Where that bound is near 1, the steps themselves are the cost.
The last line adds this up over the given tasks for the held-out protocol of results eval
§3f (3 tuned optimizers, a 9-point grid at 2x the budget, 3 seeds at the budget; every
run alone compiles, a group compiles once per optimizer; Adam's step cost for all three):
an estimate of the most that protocol can gain end to end, not a measurement of it.

Usage (from the directory above the `lopt` package):

    python -m lopt.benchmarks.batching
    python -m lopt.benchmarks.batching --tasks digits-mlp-32-ln,fmnist-conv-16-32-32 --runs 9
    python -m lopt.benchmarks.batching --suite heldout --steps 16   # the protocol's bound
"""

from __future__ import annotations

import argparse
import time

DEFAULT_TASKS = ("digits-mlp-32-ln,digits-ae-32,mnist1d-mlp-64x64-silu-ln,fmnist8-mlp-64-silu,"
                 "pycode-transformer-2x32,pycode-lstm-64,digits-conv-16-32-ln")


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--tasks", default=DEFAULT_TASKS, help="comma-separated task names")
  p.add_argument("--suite", default=None, help="all tasks of a suite split instead of --tasks")
  p.add_argument("--runs", type=int, default=9)
  p.add_argument("--steps", type=int, default=128)
  args = p.parse_args(argv)

  import numpy as np
  import optax

  from lopt.tasks import SUITE, get_spec, get_task
  from lopt.training import Programs, one_by_one, prepare_many

  n, steps = args.runs, args.steps
  txs = [optax.inject_hyperparams(optax.adam)(learning_rate=float(lr))
         for lr in np.geomspace(1e-4, 1e-1, n)]
  print(f"{n} Adam runs of {steps} steps, vmapped vs one by one (training only)")
  print(f"{'task':32s} {'one by one':>10s} {'vmapped':>8s} {'ratio':>6s} {'compile':>8s} "
        f"{'bound':>6s}  default")
  print(f"{'':32s} {'ms/step':>10s} {'ms/step':>8s} {'':>6s} {'s':>8s} {'':>6s}")
  names = (sorted(k for k, v in SUITE.items() if v.split == args.suite) if args.suite
           else args.tasks.split(","))
  alone = grouped = 0.0  # the protocol's seconds, estimated
  for name in names:
    task = get_task(name)
    per_step, compile_s = {}, 0.0
    for vmap in (False, True):
      programs, best = Programs(), float("inf")
      for rep in range(2):
        t0 = time.perf_counter()
        train = prepare_many(task, txs, steps, seeds=[0] * n, eval_every=steps, vmap=vmap,
                             programs=programs)
        if rep == 0 and not vmap:
          compile_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        train()
        best = min(best, time.perf_counter() - t0)
      per_step[vmap] = best / (n * steps)
    budget = get_spec(name).num_steps
    bound = ((compile_s + 2 * budget * per_step[False])
             / (2 * budget * min(per_step.values())))
    run_steps = 3 * (9 * 2 * budget + 3 * budget)  # per optimizer: the grid, then 3 seeds
    alone += 3 * 12 * compile_s + run_steps * per_step[False]
    grouped += 3 * compile_s + run_steps * min(per_step.values())
    way = "one by one" if one_by_one(task) else "vmapped"
    print(f"{name:32s} {per_step[False] * 1e3:10.3f} {per_step[True] * 1e3:8.3f} "
          f"{per_step[True] / per_step[False]:6.2f} {compile_s:8.1f} {bound:6.2f}  {way}",
          flush=True)
  print(f"held-out protocol on these tasks, estimated: {alone / 60:.1f} min with every run "
        f"alone, at best {grouped / 60:.1f} min grouped; bound {alone / grouped:.2f}")

if __name__ == "__main__":
  main()
