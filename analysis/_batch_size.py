"""Batch-size scaling: steps to a target validation loss across batch sizes.

As in Shallue et al. 2019 ("Measuring the Effects of Data Parallelism on Neural Network
Training"): for each batch size the learning rate is re-tuned (on a small log grid; the best
LR is the one reaching the target in the fewest steps), and the curve steps-to-target vs
batch size is split into three regions by its log-log slope between neighbouring batch sizes:

* perfect scaling: doubling the batch halves the steps (slope <= `-PERFECT`),
* diminishing returns: in between,
* maximal useful batch size: from the smallest batch whose steps are within `PLATEAU` of the
  fewest steps reached, larger batches no longer help.

Learned optimizers take no learning rate: they run once per batch size.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import jax.numpy as jnp
import numpy as np

from lopt.analysis import _common
from lopt.analysis._runs import run_many
from lopt.eval import metrics
from lopt.tasks import get_task

PERFECT = 0.8    # slope magnitude counted as perfect scaling (1 = exactly steps ~ 1/B)
PLATEAU = 0.1    # steps within 10% of the fewest: the maximal useful batch size is reached
REGIONS = ("perfect", "diminishing", "maximal")


def scaling_regions(batch_sizes: Sequence[int], steps: Sequence[float]) -> dict:
  """Marks the Shallue et al. regions on a steps-to-target vs batch-size curve.

  Returns:
    `slopes` (log-log slope of each interval), `region` of each batch size (the region of the
    interval it starts, the last one that of the interval before; "missed" where the target
    was not reached), `perfect_until` (largest batch size reached by perfect scaling from the
    smallest) and `max_useful` (smallest batch size within `PLATEAU` of the fewest steps).

  Example:
    >>> r = scaling_regions([8, 16, 32, 64, 128], [800, 400, 200, 150, 148])
    >>> r["region"], r["perfect_until"], r["max_useful"]
    (['perfect', 'perfect', 'diminishing', 'maximal', 'maximal'], 32, 64)
  """
  b = np.asarray(batch_sizes, np.float64)
  s = np.asarray(steps, np.float64)
  ok = np.isfinite(s) & (s > 0)
  slopes = [float(np.log(s[i + 1] / s[i]) / np.log(b[i + 1] / b[i]))
            if ok[i] and ok[i + 1] else math.nan for i in range(len(b) - 1)]
  if not ok.any():
    return {"slopes": slopes, "region": ["missed"] * len(b), "perfect_until": None,
            "max_useful": None}
  best = np.min(s[ok])
  max_useful = int(b[np.flatnonzero(ok & (s <= (1 + PLATEAU) * best))[0]])
  region = []
  for i in range(len(b)):
    if not ok[i]:
      region.append("missed")
    elif b[i] >= max_useful:
      region.append("maximal")
    else:
      slope = slopes[i] if i < len(slopes) else slopes[i - 1]
      region.append("perfect" if slope <= -PERFECT else "diminishing")
  perfect_until = None
  for i, r in enumerate(region):
    if r != "perfect":
      break
    perfect_until = int(b[i + 1])    # the interval [b_i, b_i+1] scaled perfectly
  return {"slopes": slopes, "region": region, "perfect_until": perfect_until,
          "max_useful": max_useful}


def batch_size_scaling(task_name: str, optimizers: Sequence[str], *,
                       batch_sizes: Sequence[int] = (8, 16, 32, 64, 128, 256, 512, 1024),
                       num_steps: int = 300, num_seeds: int = 1,
                       lr_grids: Mapping[str, Sequence[float]] | None = None,
                       num_lrs: int = 5, target: float | None = None,
                       eval_every: int | None = None) -> dict:
  """Steps to a target validation loss per batch size, LR re-tuned per batch size.

  Args:
    task_name: a suite task (built with `get_task(name, batch_size=b)`); every batch size is
      evaluated on the default-batch task's validation examples.
    optimizers: names; hand-designed ones get an LR grid, learned ones run as they are.
    batch_sizes: batch sizes to try (those above the training split's size are dropped).
    num_steps: step budget per run.
    num_seeds: seeds per (batch size, LR); steps to target are their median.
    lr_grids: optional name -> LR grid (default: `num_lrs` points of the tuning grid).
    target: the validation-loss target (default: the worst, over optimizers and batch sizes,
      of the best final loss: the loss every configuration reaches within the budget).
    eval_every: steps between evaluations (default: budget / 50, the resolution of
      steps-to-target).

  Returns:
    A JSON-able dict: per optimizer and batch size the LR grid, the final validation loss and
    steps to target per LR, the tuned LR and its steps; the `target`; per optimizer the
    `scaling_regions`.
  """
  base = get_task(task_name)
  n_train = _train_size(base)
  batch_sizes = [int(b) for b in batch_sizes if n_train is None or b <= n_train]
  if not batch_sizes:
    raise ValueError(f"no batch size fits the {n_train} training examples of {task_name}")
  eval_every = int(eval_every or max(1, num_steps // 50))
  raw: dict[str, dict[int, dict]] = {}
  for name in optimizers:
    raw[name] = {}
    if _common.takes_learning_rate(name):
      grid = list((lr_grids or {}).get(name) or _common.default_lr_grid(name, num_lrs))
      make_tx = _common.lr_swept(name, num_steps=num_steps)
      info = None
    else:
      grid = [math.nan]
      make_tx, info = _common.fixed(name, num_steps=num_steps)
    for b in batch_sizes:
      lrs = np.repeat(grid, num_seeds)                   # [L * S]
      seeds = np.tile(np.arange(num_seeds), len(grid))
      runs = run_many(get_task(task_name, batch_size=b), make_tx, num_steps,
                      init_seeds=seeds, hparams=jnp.asarray(np.nan_to_num(lrs), jnp.float32),
                      eval_every=eval_every, eval_task=base,
                      eval_params=None if info is None else info.eval_params,
                      needs_gradients=None if info is None else info.needs_gradients)
      valid = runs.valid_loss.reshape(len(grid), num_seeds, -1)     # [L, S, E]
      valid = np.where((runs.stopped_at >= 0).reshape(len(grid), num_seeds, 1), np.inf, valid)
      raw[name][b] = {"lr": grid, "eval_step": runs.eval_step, "valid": valid,
                      "final": np.median(runs.final_valid().reshape(len(grid), num_seeds), 1)}
  if target is None:
    target = max(float(np.min(r["final"])) for per in raw.values() for r in per.values())
  out = {}
  for name, per in raw.items():
    rows = []
    for b, r in per.items():
      s2t = np.array([[metrics.steps_to_target(r["eval_step"], v, target) for v in by_seed]
                      for by_seed in r["valid"]])                   # [L, S]
      med = np.median(s2t, 1)                                       # [L]
      k = int(np.lexsort((r["final"], med))[0])   # fewest steps, then lowest final loss
      rows.append({"batch_size": b, "lr_grid": r["lr"], "final_valid": r["final"],
                   "steps_to_target": med, "best_lr": r["lr"][k], "steps": float(med[k]),
                   "best_final_valid": float(r["final"][k])})
    out[name] = {"rows": rows, "regions": scaling_regions(
        [x["batch_size"] for x in rows], [x["steps"] for x in rows])}
  return {"analysis": "batch-size", "task": task_name, "num_steps": num_steps,
          "num_seeds": num_seeds, "eval_every": eval_every, "target": target,
          "batch_sizes": batch_sizes, "optimizers": out,
          "thresholds": {"perfect_slope": -PERFECT, "plateau": PLATEAU}}


def _train_size(task) -> int | None:
  data = getattr(task, "data", None)
  try:
    return int(data["train"]["label"].shape[0])
  except (TypeError, KeyError):
    return None


_REGION_COLOURS = {"perfect": "tab:green", "diminishing": "tab:orange", "maximal": "tab:red"}


def plot_batch_size(result: dict, path) -> None:
  """Steps to target vs batch size (log-log) with the regions shaded, and the tuned LRs."""
  names = list(result["optimizers"])
  fig, axes = _common.figure(1, len(names) + 1, figsize=(5 * (len(names) + 1), 4),
                             squeeze=False)
  axes = axes[0]
  for ax, name in zip(axes, names):
    o = result["optimizers"][name]
    b = np.array([r["batch_size"] for r in o["rows"]], np.float64)
    s = np.array([r["steps"] for r in o["rows"]], np.float64)
    ok = np.isfinite(s)
    for i, region in enumerate(o["regions"]["region"]):
      if region in _REGION_COLOURS:
        lo = b[i] / math.sqrt(2) if i == 0 else math.sqrt(b[i - 1] * b[i])
        hi = b[i] * math.sqrt(2) if i == len(b) - 1 else math.sqrt(b[i] * b[i + 1])
        ax.axvspan(lo, hi, color=_REGION_COLOURS[region], alpha=0.15, lw=0)
    ax.loglog(b[ok], s[ok], "o-", color="k", label="steps to target (tuned LR)")
    if ok.any():
      i0 = np.flatnonzero(ok)[0]
      ax.loglog(b, s[i0] * b[i0] / b, ":", color="gray", label="perfect scaling")
    for region, c in _REGION_COLOURS.items():
      ax.axvspan(0, 0, color=c, alpha=0.3, label=region)
    ax.set_xlabel("batch size")
    ax.set_ylabel("steps to target")
    ax.set_title(f"{name}")
    ax.legend(fontsize=7)
  ax = axes[-1]
  for k, name in enumerate(names):
    rows = result["optimizers"][name]["rows"]
    lrs = [r["best_lr"] for r in rows]
    if all(isinstance(x, float) and math.isfinite(x) for x in lrs):
      ax.loglog([r["batch_size"] for r in rows], lrs, "o-", color=f"C{k}", label=name)
  ax.set_xlabel("batch size")
  ax.set_ylabel("tuned learning rate")
  ax.set_title("LR re-tuned per batch size")
  if ax.get_legend_handles_labels()[0]:
    ax.legend(fontsize=8)
  fig.suptitle(f"{result['task']}: steps to validation loss {result['target']:.4g} "
               f"(budget {result['num_steps']})")
  _common.save(fig, path)


def batch_size_markdown(result: dict, image: str | None = None) -> str:
  f = _common.fmt
  lines = [f"### Batch-size scaling: {result['task']} (target validation loss "
           f"{f(result['target'])}, budget {result['num_steps']} steps, evaluated every "
           f"{result['eval_every']})", ""]
  if image:
    lines += [f"![batch-size scaling]({image})", ""]
  lines += ["| optimizer | " + " | ".join(str(b) for b in result["batch_sizes"]) + " |",
            "|---|" + "---|" * len(result["batch_sizes"])]
  notes = []
  for name, o in result["optimizers"].items():
    by_b = {r["batch_size"]: r for r in o["rows"]}
    cells = []
    for b, region in zip(result["batch_sizes"], o["regions"]["region"]):
      r = by_b[b]
      lr = f" @ {r['best_lr']:.3g}" if math.isfinite(r["best_lr"]) else ""
      cells.append(f"{f(r['steps'])}{lr} ({region})")
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
    reg = o["regions"]
    notes.append(f"- {name}: perfect scaling up to batch {reg['perfect_until'] or '-'}, "
                 f"maximal useful batch {reg['max_useful']}.")
  lines += ["", *notes, ""]
  lines.append("Cells: steps to target @ tuned LR (region). Regions as in Shallue et al. 2019: "
               f"perfect (log-log slope <= {-PERFECT}), diminishing, maximal (within "
               f"{int(PLATEAU * 100)}% of the fewest steps).")
  return "\n".join(lines) + "\n"
