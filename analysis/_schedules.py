"""Learning-rate schedule trade-offs: final loss vs budget (anytime performance).

Four schedules, each a multiplier of the peak LR built from optax schedules for a budget of
T steps:

* `constant`: 1 throughout,
* `cosine`: linear warmup over `WARMUP` of T, then cosine decay to 0 at T,
* `wsd` (warmup-stable-decay): the same warmup, constant, then a linear decay to 0 over the
  last `DECAY` of T,
* `cyclic`: triangular cycles between `CYCLIC_MIN` and 1 (Smith 2017), `CYCLES` per budget,
  ending at the low point.

Each (schedule, budget) is swept over peak LRs; the curve per schedule is the best final
validation loss over the sweep at each budget. Budget and schedule shape are coupled
(cosine and WSD must know T), so every budget is a separate set of runs.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lopt.analysis import _common
from lopt.analysis._runs import run_many
from lopt.optimizers import BASELINES
from lopt.tasks.base import Task

SCHEDULES = ("constant", "cosine", "wsd", "cyclic")
WARMUP = 0.05
DECAY = 0.2
CYCLES = 2
CYCLIC_MIN = 0.1


def unit_schedule(kind: str, budget: int) -> optax.Schedule:
  """The LR multiplier (peak 1) of schedule `kind` over `budget` steps.

  Example:
    >>> s = unit_schedule("wsd", 100)
    >>> [round(float(s(t)), 2) for t in (0, 50, 90, 100)]
    [0.0, 1.0, 0.5, 0.0]
  """
  warmup = max(1, int(WARMUP * budget))
  if kind == "constant":
    return optax.constant_schedule(1.0)
  if kind == "cosine":
    return optax.warmup_cosine_decay_schedule(0.0, 1.0, warmup, max(budget, warmup + 1), 0.0)
  if kind == "wsd":
    decay = max(1, int(DECAY * budget))
    stable = max(0, budget - warmup - decay)
    return optax.join_schedules(
        [optax.linear_schedule(0.0, 1.0, warmup), optax.constant_schedule(1.0),
         optax.linear_schedule(1.0, 0.0, decay)], [warmup, warmup + stable])
  if kind == "cyclic":
    half = max(1, budget // (2 * CYCLES))
    pieces = [optax.linear_schedule(lo, hi, half)
              for _ in range(CYCLES) for lo, hi in ((CYCLIC_MIN, 1.0), (1.0, CYCLIC_MIN))]
    return optax.join_schedules(pieces, [half * (i + 1) for i in range(len(pieces) - 1)])
  raise ValueError(f"unknown schedule {kind!r}; valid: {', '.join(SCHEDULES)}")


def schedule_tradeoffs(task: Task, optimizers: Sequence[str] = ("adam",), *,
                       num_steps: int = 400, budgets: Sequence[int] | None = None,
                       schedules: Sequence[str] = SCHEDULES, lrs: Sequence[float] | None = None,
                       num_lrs: int = 5, num_seeds: int = 1) -> dict:
  """Best final validation loss per (schedule, budget) over a peak-LR sweep.

  Args:
    task: the task.
    optimizers: hand-designed optimizers with a learning rate (`adam`, `sgd_nesterov`, ...).
    num_steps: the largest budget.
    budgets: step budgets (default: num_steps / 8, / 4, / 2 and num_steps).
    schedules: a subset of `SCHEDULES`.
    lrs: peak learning rates (default: `num_lrs` points of the optimizer's tuning grid).
    num_seeds: seeds per run; the final loss is their mean.

  Returns:
    A JSON-able dict: per optimizer and schedule, per budget the final loss of each peak LR,
    the best one and its LR.
  """
  for k in schedules:
    unit_schedule(k, 8)   # fails early on unknown names
  for name in optimizers:
    if name in BASELINES and BASELINES[name].needs_num_steps:
      raise ValueError(f"{name!r} already has its own LR schedule; sweep schedules with a "
                       "constant-LR optimizer such as adam or sgd_nesterov")
  budgets = sorted({int(b) for b in (budgets or [max(1, num_steps // d) for d in (8, 4, 2, 1)])})
  out = {}
  for name in optimizers:
    grid = list(lrs or _common.default_lr_grid(name, num_lrs))
    kinds, peaks, seeds = (np.array(x).ravel() for x in np.meshgrid(
        np.arange(len(schedules)), grid, np.arange(num_seeds), indexing="ij"))
    per = {k: {"budget": budgets, "lr": grid, "final": [], "best": [], "best_lr": []}
           for k in schedules}
    for budget in budgets:
      units = [unit_schedule(k, budget) for k in schedules]
      sched = lambda hp, step: hp["lr"] * jax.lax.switch(hp["kind"], units, step)
      make_tx = _common.lr_swept(name, num_steps=budget, schedule=sched)
      runs = run_many(task, make_tx, budget, init_seeds=seeds,
                      hparams={"lr": jnp.asarray(peaks, jnp.float32),
                               "kind": jnp.asarray(kinds, jnp.int32)},
                      eval_every=max(1, budget // 4))
      final = runs.final_valid().reshape(len(schedules), len(grid), num_seeds).mean(-1)
      for i, k in enumerate(schedules):
        j = int(np.argmin(final[i]))
        per[k]["final"].append(final[i])
        per[k]["best"].append(float(final[i, j]))
        per[k]["best_lr"].append(grid[j])
    out[name] = per
  return {"analysis": "schedules", "task": task.name, "num_steps": num_steps,
          "budgets": budgets, "schedules": list(schedules), "num_seeds": num_seeds,
          "settings": {"warmup": WARMUP, "wsd_decay": DECAY, "cycles": CYCLES,
                       "cyclic_min": CYCLIC_MIN}, "optimizers": out}


def plot_schedules(result: dict, path) -> None:
  """Per optimizer: best final loss vs budget, final loss vs peak LR at the largest budget,
  and the schedule shapes."""
  names = list(result["optimizers"])
  fig, axes = _common.figure(len(names), 3, figsize=(15, 4 * len(names)), squeeze=False)
  top = result["budgets"][-1]
  for row, name in zip(axes, names):
    per = result["optimizers"][name]
    for c, (kind, r) in enumerate(per.items()):
      best = np.asarray(r["best"], np.float64)
      row[0].plot(r["budget"], np.where(np.isfinite(best), best, np.nan), "o-", color=f"C{c}",
                  label=kind)
      last = np.asarray(r["final"][-1], np.float64)
      row[1].semilogx(r["lr"], np.where(np.isfinite(last), last, np.nan), "o-", color=f"C{c}",
                      label=kind)
      s = unit_schedule(kind, top)
      t = np.arange(top + 1)
      row[2].plot(t, [float(s(i)) for i in t], color=f"C{c}", label=kind)
    row[0].set_xscale("log", base=2)
    row[0].set_yscale("log")
    row[0].set(xlabel="budget (steps)", ylabel="final validation loss (best peak LR)",
               title=f"{name}: anytime performance")
    row[1].set_yscale("log")
    row[1].set(xlabel="peak learning rate", ylabel="final validation loss",
               title=f"{name}: LR sensitivity at budget {top}")
    row[2].set(xlabel="step", ylabel="LR / peak LR", title=f"schedules at budget {top}")
    for ax in row:
      ax.legend(fontsize=8)
  fig.suptitle(f"{result['task']}: learning-rate schedule trade-offs")
  _common.save(fig, path)


def schedules_markdown(result: dict, image: str | None = None) -> str:
  f = _common.fmt
  lines = [f"### LR-schedule trade-offs: {result['task']}", ""]
  if image:
    lines += [f"![schedule trade-offs]({image})", ""]
  for name, per in result["optimizers"].items():
    lines += [f"{name}: best final validation loss (peak LR) per budget", "",
              "| schedule | " + " | ".join(str(b) for b in result["budgets"]) + " |",
              "|---|" + "---|" * len(result["budgets"])]
    for kind, r in per.items():
      lines.append(f"| {kind} | " + " | ".join(
          f"{f(v)} ({lr:.3g})" for v, lr in zip(r["best"], r["best_lr"])) + " |")
    lines.append("")
  s = result["settings"]
  lines.append(f"Warmup {s['warmup']:.0%} of the budget (cosine, WSD); WSD decays over the last "
               f"{s['wsd_decay']:.0%}; cyclic: {s['cycles']} triangular cycles between "
               f"{s['cyclic_min']} and 1 x peak.")
  return "\n".join(lines) + "\n"
