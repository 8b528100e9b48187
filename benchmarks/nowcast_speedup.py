"""Steps to reach Adam's accuracy: Adam vs Adam + nowcasting (NiNo, WNN+, ours, linear).

The reference toy check (shared/research/reference_runs_nino.md §3): train with Adam and with
Adam wrapped by `nowcast(...)` on the same init and batch order per seed, evaluate test
accuracy every `--eval-every` steps on the whole test split, and count the steps each method
needs to reach the target. Target per seed: `--target` if given, else Adam's mean test accuracy
over the evaluations of the last 10% of the run (the last 10 at N=1000 with evaluations every
10 steps, as the reference). Speedup = Adam steps / method steps, geometric mean over seeds.

Usage (digits MLP 64-32-10 as the reference: batch 128, lr 1e-3, N=1000, period 100):

  python benchmarks/nowcast_speedup.py \\
      --task digits-mlp --steps 1000 --seeds 0,1,2 --methods adam,adam+nino,adam+wnnp

Batches are sampled uniformly with replacement (lopt tasks), where the reference shuffles per
epoch; the digits split is lopt's 1197/300/300 (reference: 1437/360).
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

_SHARED = "/work/shared/pretrained/nino"

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
  nc = importlib.import_module("lopt.learned_opts.nino.nowcast")
  base = optax.adam(lr)
  if spec == "adam":
    return base
  base_name, _, nowcaster = spec.partition("+")
  if base_name != "adam":
    raise SystemExit(f"only adam+<nowcaster> methods are supported here, got {spec!r}")
  kw = {"path": nowcaster_dir} if nowcaster_dir and nowcaster in ("nino", "wnnp", "wnnp_h32") else {}
  return nc.nowcast(base, nc.resolve_nowcaster(nowcaster, **kw), max_steps=steps, period=period)


def run_one(task, tx, steps: int, seed: int, eval_every: int, eval_examples: int | None = None
            ) -> dict:
  """Trains; returns test accuracy every `eval_every` steps (step 0 included) and timings."""
  nc = importlib.import_module("lopt.learned_opts.nino.nowcast")
  key_init, key_data = jax.random.split(jax.random.PRNGKey(seed))
  params = task.init(key_init)
  test = task.data["test"]
  n_test = int(test["label"].shape[0])
  if eval_examples:
    n_test = min(n_test, eval_examples)

  @jax.jit
  def evaluate(t, p):
    batch = t._example("test", jnp.arange(n_test))
    _, aux = t.loss(p, None, batch)
    return aux["accuracy"]

  # As `lopt.training.train`: XLA:CPU runs convolutions inside a rolled scan ~50x slower, so
  # conv tasks on CPU run blocks of `_CPU_CONV_BLOCK` fully unrolled steps.
  from lopt.training import _loop
  block = (_loop._CPU_CONV_BLOCK if jax.default_backend() == "cpu"
           and _loop._has_convolution(task, params) else None)

  @functools.partial(jax.jit, static_argnames=("length",))
  def chunk(t, p, s, start, length):
    def step(carry, i):
      p, s = carry
      key = jax.random.fold_in(key_data, i)
      batch = t.sample_batch(key, "train")
      loss_grad = lambda: jax.value_and_grad(lambda q: t.loss(q, key, batch)[0])(p)
      no_grad = lambda: (jnp.zeros([], jnp.float32), jax.tree_util.tree_map(jnp.zeros_like, p))
      loss, g = jax.lax.cond(nc.needs_gradients(s), loss_grad, no_grad)
      u, s = tx.update(g, s, p)
      return (optax.apply_updates(p, u), s), loss
    (p, s), losses = jax.lax.scan(step, (p, s), start + jnp.arange(length),
                                  unroll=length if block else 1)
    return p, s, losses

  state = tx.init(params)
  accs = [float(evaluate(task, params))]
  t0 = time.perf_counter()
  for start in range(0, steps, eval_every):
    offset = start
    for n in _loop._blocks(eval_every, block):
      params, state, _ = chunk(task, params, state, jnp.asarray(offset), length=n)
      offset += n
    accs.append(float(evaluate(task, params)))
  return {"acc": accs, "wall_s": time.perf_counter() - t0}


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
                  help="evaluate on the first N test examples (default: all)")
  ap.add_argument("--target", type=float, default=None,
                  help="fixed accuracy target (default: Adam's final accuracy per seed)")
  ap.add_argument("--nowcaster-dir", default=_SHARED if os.path.isdir(_SHARED) else None,
                  help="folder holding the official .pt files (default: %(default)s)")
  ap.add_argument("--adam-from", default=None,
                  help="reuse the Adam curves of an earlier --out JSON (same task, steps, "
                  "seeds, eval settings) instead of rerunning Adam")
  ap.add_argument("--out", default=None, help="write the JSON summary here")
  args = ap.parse_args(argv)
  nc = importlib.import_module("lopt.learned_opts.nino.nowcast")
  lr = args.lr or TASKS[args.task][1]
  period = args.period or nc.default_period(args.steps)
  seeds = [int(s) for s in args.seeds.split(",")]
  methods = args.methods.split(",")
  if methods[0] != "adam":
    methods = ["adam"] + [m for m in methods if m != "adam"]
  task = make_task(args.task)
  runs: dict = {m: {} for m in methods}
  if args.adam_from:
    prev = json.load(open(args.adam_from))
    same = all(prev.get(k) == v for k, v in (("task", args.task), ("steps", args.steps),
                                          ("eval_every", args.eval_every), ("lr", lr),
                                          ("eval_examples", args.eval_examples)))
    if not same or not set(seeds) <= set(prev["seeds"]):
      raise SystemExit(f"--adam-from {args.adam_from}: different task/steps/eval/lr/seeds")
    adam = prev["methods"]["adam"]
    for seed in seeds:
      i = prev["seeds"].index(seed)
      runs["adam"][seed] = {"acc": adam["acc_curves"][i],
                            "wall_s": adam["wall_s_incl_compile"][i]}
  for m in methods:
    if m == "adam" and args.adam_from:
      continue
    tx = make_method(m, lr, args.steps, period, args.nowcaster_dir)
    for seed in seeds:
      r = run_one(task, tx, args.steps, seed, args.eval_every, args.eval_examples)
      runs[m][seed] = r
      if args.out:  # keep finished runs if the job is stopped early
        with open(args.out + ".partial", "w") as f:
          json.dump({"args": vars(args), "lr": lr, "period": period,
                     "runs": {k: {str(s): v for s, v in d.items()} for k, d in runs.items()}}, f)
      print(f"{m:>16s} seed {seed}: final acc {r['acc'][-1]:.4f} ({r['wall_s']:.1f}s)",
            file=sys.stderr, flush=True)
  summary = {"task": args.task, "steps": args.steps, "eval_examples": args.eval_examples,
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
        "wall_s_incl_compile": [round(runs[m][s]["wall_s"], 2) for s in seeds],
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
