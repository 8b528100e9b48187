"""Writes a benchmark's results: JSON/CSV files, `report.md` and PNG plots."""

from __future__ import annotations

import csv
import math
import pathlib
from typing import Any, Sequence

import numpy as np

from lopt import rundir
from lopt.eval import _jobs, metrics
from lopt.eval._analysis import SMOOTHING

# Validation first (what users judge), then the training-loss speedup and the rest.
RUN_COLUMNS = ("task", "optimizer", "seed", "num_steps", "hit", "steps_to_target",
               "time_to_target_s", "best_valid_loss", "final_valid_loss",
               "final_valid_accuracy", "speedup", "speedup_lower_bound", "final_train_loss",
               "stopped", "uses_num_steps", "train_seconds", "elapsed_s")


def write_all(out: str | pathlib.Path, results: dict, *, plots: bool = True) -> None:
  """Writes results.json, results.csv, summary.csv, report.md and (optionally) plots/."""
  out = pathlib.Path(out)
  public = {k: v for k, v in results.items() if not k.startswith("_")}
  _jobs.write_json(out / "results.json", public)
  _write_csv(out / "results.csv", results["runs"], RUN_COLUMNS)
  summary_rows = []
  for p in results["per_task"]:
    row = {k: v for k, v in p.items() if not isinstance(v, list)}
    for k in ("best_valid_loss", "final_valid_loss", "speedup", "final_train_loss"):
      if k not in p:
        continue
      row[k], row[f"{k}_ci_low"], row[f"{k}_ci_high"] = p[k]
    summary_rows.append(row)
  if summary_rows:
    _write_csv(out / "summary.csv", summary_rows, list(summary_rows[0]))
  figures = write_plots(out / "plots", results) if plots else {}
  rundir.atomic_write_text(out / "report.md", markdown(results, figures))


def _write_csv(path: pathlib.Path, rows: Sequence[dict], columns: Sequence[str]) -> None:
  with rundir.atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
    w.writeheader()
    for r in rows:
      w.writerow({k: _jobs.to_jsonable(r.get(k)) for k in columns})


# ---------------------------------------------------------------------------------------
# Markdown.


def _num(x: Any, digits: int = 3) -> str:
  if x is None:
    return "–"
  x = float(x)
  if math.isnan(x):
    return "–"
  if math.isinf(x):
    return "∞" if x > 0 else "-∞"
  if x != 0 and (abs(x) >= 1e4 or abs(x) < 1e-3):
    return f"{x:.{digits - 1}e}"
  return f"{x:.{digits}g}"


def _ci(v: Sequence[float], lower_bound: bool = False) -> str:
  point, lo, hi = v
  mark = "≥" if lower_bound else ""
  return f"{mark}{_num(point)} [{_num(lo)}, {_num(hi)}]"


def markdown(results: dict, figures: dict[str, str] | None = None) -> str:
  """The report as markdown (figures: {caption: relative path})."""
  cfg = results["config"]
  figures = figures or {}
  seeds = len(cfg["seeds"])
  title = {"custom": "custom task list", "pooled": "pooled folders"}.get(
      cfg["suite"], f"`{cfg['suite']}` suite")
  lines = [f"# lopt benchmark: {title}", ""]
  lines += [f"{len(cfg['tasks'])} tasks × {len(cfg['optimizers'])} optimizers × {seeds} seeds. "
            f"Reference: `{cfg['reference']}` (per-task target = the median over seeds of its "
            "final validation loss; speedup = the steps the LR-tuned Adam envelope needs to "
            "reach the optimizer's final training loss (EMA 0.95), divided by the steps used; the "
            "envelope is the lowest training loss of the whole Adam LR grid at each step, so "
            "validation-tuned Adam itself scores below 1 where a larger LR trains faster but "
            "generalises worse). "
            "CIs are 95% percentile-bootstrap intervals (over seeds per task; stratified by "
            "task for aggregates); with few seeds they are rough.", ""]
  if cfg.get("protocols"):
    lines += ["**Pooled from** (each folder keeps its own targets, tuning and envelope; "
              "speedups are capped at its envelope factor):", ""]
    for pr in cfg["protocols"]:
      grid = "default grids" if not pr["lr_grid"] else f"{len(pr['lr_grid'])}-point LR grid"
      trials = "".join(f", `{k}` {v or 'default'} trials" for k, v in pr["trials"].items())
      n = len(pr["tasks"])
      lines.append(f"- `{pr['folder']}` ({n} task{'' if n == 1 else 's'}): {grid}, envelope "
                   f"{pr['envelope_factor']}×{trials}")
    lines += [""]
  if results.get("excluded"):
    lines += ["**Not included:**", ""]
    lines += [f"- `{k}`: {v}" for k, v in results["excluded"].items()]
    lines += [""]
  if results.get("errors"):
    lines += ["**Failed runs** (rerun the same command to retry):", ""]
    lines += [f"- `{k}`: {str(v).splitlines()[0]}" for k, v in results["errors"].items()]
    lines += [""]

  lines += ["## Summary", "",
            "Validation first: the AlgoPerf score on the validation targets, the hit rate and "
            "the steps to target say whether an optimizer reaches tuned Adam's validation loss "
            "within the budget; the training-loss speedup (last columns) says how fast it "
            "lowers the *training* loss and can exceed 1 for an optimizer that overfits.", "",
            "| optimizer | tasks | AlgoPerf score (steps) | AlgoPerf score (time) | hit rate | "
            "steps to target (median, × budget) | train-loss speedup IQM [95% CI] | "
            "train-loss speedup geo-mean [95% CI] |",
            "|---|---|---|---|---|---|---|---|"]
  for opt, a in results["aggregate"].items():
    lines.append(f"| `{opt}` | {a['tasks']} | {a['algoperf_score_steps']:.3f} | "
                 f"{a['algoperf_score_time']:.3f} | {a['hit_rate']:.0%} | "
                 f"{_num(a.get('steps_to_target_fraction'))} | {_ci(a['speedup_iqm'])} | "
                 f"{_ci(a['speedup_geomean'])} |")
  lines += ["", "AlgoPerf scores use the per-task median (over seeds) steps or training "
            "seconds to the target, r_max = 4, the same code that reproduces the published "
            "v0.5 leaderboard (`lopt benchmark score`); a task an optimizer did not run counts "
            "as a miss there. Hit rate: runs reaching the target.",
            ""]

  lines += ["## Per task", "",
            "| task | optimizer | hit rate | steps to target | best valid loss [95% CI] | "
            "final valid loss [95% CI] | train-loss speedup [95% CI] | "
            "final train loss (EMA) | uses num_steps |",
            "|---|---|---|---|---|---|---|---|---|"]
  for p in results["per_task"]:
    div = f" ({p['diverged']} diverged)" if p["diverged"] else ""
    best = _ci(p["best_valid_loss"]) if "best_valid_loss" in p else "–"
    lines.append(
        f"| {p['task']} | `{p['optimizer']}` | {p['hit_rate']:.0%}{div} | "
        f"{_num(p['steps_to_target'])} / {p['num_steps']} | {best} | "
        f"{_ci(p['final_valid_loss'])} | {_ci(p['speedup'], p['speedup_lower_bound'])} | "
        f"{_num(p['final_train_loss'][0], 4)} | {'yes' if p['uses_num_steps'] else 'no'} |")
  factor = cfg.get("envelope_factor", 1)
  lines += ["", f"≥: the optimizer's loss is below anything the Adam grid reached in {factor}× "
            f"the budget, so the speedup is a lower bound (capped at {factor}).", ""]

  lines += ["## Tasks and targets", "", "| task | split | budget (steps) | target (valid loss) "
            "| description |", "|---|---|---|---|---|"]
  for t in cfg["tasks"]:
    lines.append(f"| {t['name']} | {t.get('split', '')} | {t['num_steps']} | "
                 f"{_num(results['targets'].get(t['name']), 4)} | {t.get('description', '')} |")
  lines += [""]

  if results.get("tuning"):
    lines += ["## Tuning", "", "Rules: `*-tuned` with a learning-rate grid takes the grid "
              "point with the lowest final validation loss; `nadamw-tuned` the best of a fixed "
              "number of Halton trials (warmup + cosine). Trials use seeds disjoint from the "
              "benchmark seeds.", "", "| task | optimizer | trials | chosen |", "|---|---|---|---|"]
    for key, t in results["tuning"].items():
      task, label = key.split("|", 1)
      hp = ", ".join(f"{k}={_num(v)}" for k, v in sorted(t["hparams"].items()))
      edge = " **(grid edge)**" if t.get("at_edge") else ""
      lines.append(f"| {task} | `{label}` | {len(t['trials'])} | {hp}{edge} |")
    lines += [""]

  lines += ["## Optimizers", ""]
  for o in cfg["optimizers"]:
    how = {"lr_grid": "LR grid tuned per task", "halton": "Halton-search tuned per task",
           None: "fixed hyperparameters"}[o["tuning"]]
    extra = f", checkpoint `{o['checkpoint']}`" if o.get("checkpoint") else ""
    hp = f", {o['hparams']}" if o.get("hparams") else ""
    lines.append(f"- `{o['label']}`: `{o['name']}`, {how}{hp}{extra}")
  lines += [""]

  if figures:
    lines += ["## Plots", ""]
    for caption, path in figures.items():
      lines += [f"![{caption}]({path})", ""]
  return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# Plots.


def write_plots(folder: pathlib.Path, results: dict) -> dict[str, str]:
  """Writes the PNGs; returns {caption: path relative to the report}."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  folder.mkdir(parents=True, exist_ok=True)
  figures: dict[str, str] = {}
  opts = list(results["aggregate"])
  colors = {o: plt.cm.tab10(i % 10) for i, o in enumerate(opts)}

  for task, per_opt in results.get("_curves", {}).items():
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    for opt, c in per_opt.items():
      tl = np.stack([metrics.ema(np.nan_to_num(x, nan=np.inf), SMOOTHING)
                     for x in c["train_loss"]])  # [seeds, T]
      tl = np.where(np.isfinite(tl), tl, np.nan)
      steps = np.arange(1, tl.shape[1] + 1)
      with np.errstate(all="ignore"):
        med, lo, hi = (np.nanmedian(tl, 0), np.nanmin(tl, 0), np.nanmax(tl, 0))
      ax1.plot(steps, med, color=colors.get(opt), label=opt, lw=1.2)
      ax1.fill_between(steps, lo, hi, color=colors.get(opt), alpha=0.2, lw=0)
      vl = np.stack(c["valid_loss"])
      vl = np.where(np.isfinite(vl), vl, np.nan)
      with np.errstate(all="ignore"):
        ax2.plot(c["eval_step"], np.nanmedian(vl, 0), color=colors.get(opt), marker=".", lw=1)
        ax2.fill_between(c["eval_step"], np.nanmin(vl, 0), np.nanmax(vl, 0),
                         color=colors.get(opt), alpha=0.2, lw=0)
    target = results["targets"].get(task)
    if target is not None and np.isfinite(target):
      ax2.axhline(target, color="k", ls="--", lw=0.8, label="target")
    for ax, title in ((ax1, "train loss (EMA 0.95), median and range over seeds"),
                      (ax2, "validation loss")):
      ax.set_yscale("log")
      ax.set_xlabel("step")
      ax.set_ylabel("loss")
      ax.set_title(title, fontsize=9)
    ax1.legend(fontsize=7)
    if ax2.get_legend_handles_labels()[0]:  # the validation target
      ax2.legend(fontsize=7)
    fig.suptitle(task, fontsize=10)
    fig.tight_layout()
    name = f"loss_{_slug(task)}.png"
    fig.savefig(folder / name, dpi=110)
    plt.close(fig)
    figures[f"loss curves: {task}"] = f"plots/{name}"

  prof = results["profiles"]
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
  for ax, kind in zip(axes, ("steps", "time")):
    for opt in opts:
      if opt in prof[kind]:
        ax.step(prof["tau"], prof[kind][opt], where="post", color=colors[opt], label=opt)
    ax.set_xlabel(f"ratio of {kind} to target vs the fastest (τ)")
    ax.set_ylabel("fraction of tasks")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"performance profile ({kind})", fontsize=9)
  axes[0].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(folder / "performance_profile.png", dpi=110)
  plt.close(fig)
  figures["performance profile"] = "plots/performance_profile.png"

  tasks = list(dict.fromkeys(p["task"] for p in results["per_task"]))
  fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(tasks) + 2), 3.8))
  width = 0.8 / max(1, len(opts))
  for j, opt in enumerate(opts):
    xs, ys, err = [], [], [[], []]
    for i, t in enumerate(tasks):
      p = next((p for p in results["per_task"] if p["task"] == t and p["optimizer"] == opt),
               None)
      if p is None or not np.isfinite(p["speedup"][0]) or p["speedup"][0] <= 0:
        continue
      pt, lo, hi = p["speedup"]
      xs.append(i + (j - (len(opts) - 1) / 2) * width)
      ys.append(pt)
      err[0].append(max(pt - lo, 0) if np.isfinite(lo) else 0)
      err[1].append(max(hi - pt, 0) if np.isfinite(hi) else 0)
    if xs:
      ax.errorbar(xs, ys, yerr=err, fmt="o", color=colors[opt], label=opt, capsize=2, ms=4)
  ax.axhline(1.0, color="k", lw=0.8, ls="--")
  ax.set_yscale("log")
  ax.set_xticks(range(len(tasks)))
  ax.set_xticklabels(tasks, rotation=30, ha="right", fontsize=7)
  ax.set_ylabel("speedup over tuned Adam")
  ax.set_title("speedup per task (median over seeds, 95% bootstrap CI)", fontsize=9)
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(folder / "speedup.png", dpi=110)
  plt.close(fig)
  figures["speedup per task"] = "plots/speedup.png"
  return figures


def _slug(text: str) -> str:
  return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)
