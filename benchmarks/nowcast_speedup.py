"""Steps to reach Adam's accuracy: Adam vs Adam + nowcasting (NiNo, WNN+, ours, linear).

The reference toy check (shared/research/reference_runs_nino.md §3): train with Adam and with
Adam wrapped by `nowcast(...)` on the same init and batch order per seed, evaluate test
accuracy every `--eval-every` steps on the test split (whole batches of the task's batch size:
256 of digits' 300 images, 9,984 of Fashion-MNIST's 10,000), and count the steps each method
needs to reach the target. Target per seed: `--target` if given, else Adam's mean test accuracy
over the evaluations of the last 10% of the run (the last 10 at N=1000 with evaluations every
10 steps, as the reference). Speedup = Adam steps / method steps, geometric mean over seeds.

Usage (digits MLP 64-32-10 as the reference: batch 128, lr 1e-3, N=1000, period 100):

  python -m lopt.benchmarks.nowcast_speedup \\
      --task digits-mlp --steps 1000 --seeds 0,1,2 --methods adam,adam+nino,adam+wnnp

Batches are sampled uniformly with replacement (lopt tasks), where the reference shuffles per
epoch; the digits split is lopt's 1197/300/300 (reference: 1437/360). Training runs through
`lopt.training.train` (nowcast steps skip the backward pass; on CPU, conv tasks run unrolled
blocks with each nowcast as its own call). With `--out`, each finished (method, seed) run is
kept in OUT.runs/ and reused: run methods as parallel processes, then once more with all
methods to print the summary.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import math
import os
import sys

import numpy as np
import optax

from lopt import rundir

# The official NiNo weights: $LOPT_SHARED_DIR/pretrained/nino, else ../shared beside the repo.
_SHARED = os.path.join(os.environ.get("LOPT_SHARED_DIR") or os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared"), "pretrained", "nino")

TASKS = {
    # name: (task constructor kwargs, default lr)
    "digits-mlp": (dict(kind="mlp", dataset="digits", hidden=(32,), batch_size=128), 1e-3),
    "digits-conv": (dict(kind="conv", dataset="digits", channels=(16, 32, 32), batch_size=128),
                    1e-3),
    "fm16": (dict(kind="conv", dataset="fashion_mnist", channels=(16, 32, 32), batch_size=128),
             6e-3),
}


def make_task(name: str):
  from lopt import tasks
  kw = dict(TASKS[name][0])
  kind = kw.pop("kind")
  cls = tasks.ImageMLPTask if kind == "mlp" else tasks.ImageConvTask
  return cls(**kw)


def make_method(spec: str, lr: float, steps: int, period: int, nowcaster_dir: str | None):
  nc = importlib.import_module("lopt.learned_opts.nino")
  base = optax.adam(lr)
  if spec == "adam":
    return base
  base_name, _, nowcaster = spec.partition("+")
  if base_name != "adam":
    raise SystemExit(f"only adam+<nowcaster> methods are supported here, got {spec!r}")
  kw = {"path": nowcaster_dir} if nowcaster_dir and nowcaster in ("nino", "wnnp", "wnnp_h32") else {}
  return nc.nowcast(base, nc.resolve_nowcaster(nowcaster, **kw), max_steps=steps, period=period)


def run_one(task, tx, steps: int, seed: int, eval_every: int) -> dict:
  """Trains with `lopt.training.train`; test accuracy every `eval_every` steps (step 0
  included) on the task's fixed test batches, and the training wall time (compile and
  evaluation excluded). Nowcast steps skip the backward pass and, on CPU conv tasks, run as
  their own call between the unrolled blocks."""
  from lopt.training import train
  nc = importlib.import_module("lopt.learned_opts.nino")
  result = train(task, tx, steps, seed=seed, eval_every=eval_every, eval_split="test",
                 progress=False, needs_gradients=nc.needs_gradients)
  if result.stopped:
    print(f"  stopped early: {result.stopped}", file=sys.stderr)
  h = result.history
  return {"acc": [float(x) for x in h["valid_accuracy"]], "wall_s": float(h["wall_time"][-1])}


def cached_run(path: str | None, key: dict, fn) -> dict:
  """Runs `fn()` unless `path` holds a finished run with the same `key` (settings)."""
  if path and os.path.exists(path):
    with open(path) as f:
      saved = json.load(f)
    if saved.get("key") == key:
      return saved["run"]
  run = fn()
  if path:
    rundir.atomic_write_text(path, json.dumps({"key": key, "run": run}))
  return run


def steps_to(accs, target, eval_every):
  for i, a in enumerate(accs):
    if a >= target - 1e-9:
      return i * eval_every
  return None


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--task", default="digits-mlp", choices=sorted(TASKS))
  ap.add_argument("--steps", type=int, default=1000)
  ap.add_argument("--period", type=int, default=None, help="default: steps // 10")
  ap.add_argument("--lr", type=float, default=None)
  ap.add_argument("--seeds", default="0,1,2")
  ap.add_argument("--methods", default="adam,adam+nino,adam+wnnp")
  ap.add_argument("--eval-every", type=int, default=10)
  ap.add_argument("--eval-examples", type=int, default=None,
                  help="evaluate on the first N test examples, rounded down to whole batches "
                  "(default: the whole test split, rounded down)")
  ap.add_argument("--target", type=float, default=None,
                  help="fixed accuracy target (default: Adam's final accuracy per seed)")
  ap.add_argument("--nowcaster-dir", default=_SHARED if os.path.isdir(_SHARED) else None,
                  help="folder holding the official .pt files (default: %(default)s)")
  ap.add_argument("--out", default=None, help="write the JSON summary here; finished runs "
                  "are kept in OUT.runs/ and reused (so methods can run as parallel "
                  "processes sharing the Adam runs, and a stopped job resumes)")
  ap.add_argument("--runs-dir", default=None,
                  help="where finished runs are kept (default: OUT.runs); point several "
                  "summaries (e.g. other --target values) at the same runs")
  args = ap.parse_args(argv)
  runs_dir = args.runs_dir or (args.out + ".runs" if args.out else None)
  nc = importlib.import_module("lopt.learned_opts.nino")
  lr = args.lr or TASKS[args.task][1]
  period = args.period or nc.default_period(args.steps)
  seeds = [int(s) for s in args.seeds.split(",")]
  methods = args.methods.split(",")
  if methods[0] != "adam":
    methods = ["adam"] + [m for m in methods if m != "adam"]
  task = make_task(args.task)
  n_test = int(task.data["test"]["label"].shape[0])
  task = dataclasses.replace(task, eval_examples=args.eval_examples or n_test)
  runs: dict = {m: {} for m in methods}
  for m in sorted(methods, key=lambda m: m == "adam"):  # Adam last: a parallel job may cache it
    tx = make_method(m, lr, args.steps, period, args.nowcaster_dir)
    for seed in seeds:
      key = {"task": args.task, "method": m, "steps": args.steps, "seed": seed, "lr": lr,
             "period": period if m != "adam" else None, "eval_every": args.eval_every,
             "eval_examples": task.eval_examples}
      path = os.path.join(runs_dir, f"{m}_{seed}.json") if runs_dir else None
      r = cached_run(path, key, lambda: run_one(task, tx, args.steps, seed, args.eval_every))
      runs[m][seed] = r
      print(f"{m:>16s} seed {seed}: final acc {r['acc'][-1]:.4f} ({r['wall_s']:.1f}s)",
            file=sys.stderr, flush=True)
  bs = min(task.batch_size, n_test)
  summary = {"task": args.task, "steps": args.steps,
             "eval_examples": min(n_test, task.eval_examples) // bs * bs,
             "period": period, "lr": lr,
             "k_schedule": nc.k_schedule(args.steps, period).tolist(),
             "eval_every": args.eval_every, "seeds": seeds, "methods": {}}
  targets = {}
  for seed in seeds:
    adam = runs["adam"][seed]["acc"]
    window = max(1, args.steps // (10 * args.eval_every))      # evaluations in the last 10%
    targets[seed] = args.target if args.target is not None else float(np.mean(adam[-window:]))
  summary["targets"] = targets
  for m in methods:
    st = [steps_to(runs[m][s]["acc"], targets[s], args.eval_every) for s in seeds]
    adam_st = [steps_to(runs["adam"][s]["acc"], targets[s], args.eval_every) for s in seeds]
    ratios = [a / b for a, b in zip(adam_st, st) if a and b]
    summary["methods"][m] = {
        "steps_to_target": st,
        "final_acc": [runs[m][s]["acc"][-1] for s in seeds],
        "speedup_geomean": (float(math.exp(np.mean(np.log(ratios))))
                            if len(ratios) == len(seeds) else None),
        "reached": sum(x is not None for x in st),
        "train_wall_s": [round(runs[m][s]["wall_s"], 2) for s in seeds],
        "acc_curves": [runs[m][s]["acc"] for s in seeds],
    }
  brief = {m: {k: v for k, v in d.items() if k != "acc_curves"}
           for m, d in summary["methods"].items()}
  print(json.dumps({**{k: v for k, v in summary.items() if k != "methods"}, "methods": brief},
                   indent=1))
  if args.out:
    with open(args.out, "w") as f:
      json.dump(summary, f)
  return 0


if __name__ == "__main__":
  sys.exit(main())
