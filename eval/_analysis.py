"""From run records to benchmark numbers (pure numpy; records are `_jobs` run files).

Per task, the target is the median over seeds of tuned Adam's final validation loss. Per
run: steps and wall-time to that target (first evaluation at or below it; inf when
missed), the VeLOdrome speedup over the tuned-Adam envelope, final losses. Per (task,
optimizer): medians, hit rate and bootstrap CIs over seeds. Per optimizer: speedup IQM and
geometric mean with task-stratified bootstrap CIs, the overall hit rate, and AlgoPerf
benchmark scores (r_max = 4) computed by `lopt.eval.scoring` from the per-task median
steps (and seconds) to target.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

from lopt.eval import metrics, scoring

METRIC = "valid_loss"
SMOOTHING = 0.95


def run_metrics(rec: dict, target: float, envelope: metrics.AdamEnvelope | None) -> dict:
  """The numbers of one run."""
  h = rec["history"]
  job = rec["job"]
  steps = h["eval_step"]
  vals = h[METRIC]
  train = h["train_loss"]
  n = int(job["num_steps"])
  if np.isfinite(target):
    s2t = metrics.steps_to_target(steps, vals, target)
    t2t = metrics.time_to_target(h["wall_time"], vals, target)
  else:
    s2t = t2t = math.inf
  if rec.get("stopped"):
    final_train = math.inf
    final_valid = math.inf
  else:
    final_train = float(metrics.ema(train, SMOOTHING)[-1])
    final_valid = float(vals[-1]) if len(vals) else math.nan
  if envelope is not None:
    sp, lower = metrics.speedup(envelope, train if not rec.get("stopped") else [math.inf], n,
                                alpha=SMOOTHING)
  else:
    sp, lower = math.nan, False
  acc = h.get("valid_accuracy", np.array([]))
  finite = vals[np.isfinite(vals)] if len(vals) else vals
  best_valid = float(np.min(finite)) if len(finite) else math.inf
  # Validation first (what users judge), then the training-loss view.
  return {
      "task": job["task"], "optimizer": job["label"], "seed": int(job["seed"]),
      "num_steps": n, "hit": bool(np.isfinite(s2t)), "steps_to_target": s2t,
      "time_to_target_s": t2t, "best_valid_loss": best_valid,
      "final_valid_loss": final_valid,
      "final_valid_accuracy": float(acc[-1]) if len(acc) else math.nan,
      "speedup": sp, "speedup_lower_bound": bool(lower), "final_train_loss": final_train,
      "stopped": rec.get("stopped"), "uses_num_steps": bool(rec["info"].get("uses_num_steps")),
      "hparams": rec["info"].get("hparams", {}), "elapsed_s": float(rec.get("elapsed_s", 0.0)),
      "train_seconds": float(h["wall_time"][-1]) if len(h["wall_time"]) else math.nan,
  }


def targets_from(reference_runs: Mapping[str, Sequence[dict]]) -> dict[str, float]:
  """{task: median over seeds of the reference's final validation loss}; a diverged
  reference run counts as inf (the median keeps it honest)."""
  out = {}
  for task, recs in reference_runs.items():
    finals = [math.inf if r.get("stopped") else float(r["history"][METRIC][-1]) for r in recs]
    finals = [v if np.isfinite(v) else math.inf for v in finals]
    out[task] = float(np.median(finals)) if finals else math.nan
  return out


def _ci(values, stat, seed, groups=None):
  v = np.asarray(values, dtype=np.float64)
  if v.size == 0:
    return [math.nan, math.nan, math.nan]
  return list(metrics.bootstrap_ci(v, stat, seed=seed, groups=groups, num_resamples=2000))


def summarise(rows: Sequence[dict], tasks: Sequence[str], optimizers: Sequence[str]) -> dict:
  """Per-(task, optimizer) and per-optimizer summaries of `run_metrics` rows."""
  per_task = []
  for t_i, task in enumerate(tasks):
    for o_i, opt in enumerate(optimizers):
      rs = [r for r in rows if r["task"] == task and r["optimizer"] == opt]
      if not rs:
        continue
      seed = 1000 * t_i + o_i
      sp = [r["speedup"] for r in rs]
      per_task.append({
          "task": task, "optimizer": opt, "seeds": len(rs),
          "hit_rate": metrics.hit_rate([r["steps_to_target"] for r in rs]),
          "steps_to_target": float(np.median([r["steps_to_target"] for r in rs])),
          "time_to_target_s": float(np.median([r["time_to_target_s"] for r in rs])),
          "best_valid_loss": _ci([r.get("best_valid_loss", math.nan) for r in rs], np.median,
                                 seed),
          "final_valid_loss": _ci([r["final_valid_loss"] for r in rs], np.median, seed),
          "final_valid_accuracy": float(np.median([r["final_valid_accuracy"] for r in rs])),
          "speedup": _ci(sp, np.median, seed),
          "speedup_lower_bound": any(r["speedup_lower_bound"] for r in rs),
          "final_train_loss": _ci([r["final_train_loss"] for r in rs], np.median, seed),
          "diverged": sum(bool(r["stopped"]) for r in rs),
          "uses_num_steps": any(r["uses_num_steps"] for r in rs),
          "num_steps": rs[0]["num_steps"],
      })
  aggregate = {}
  steps_t = {o: {} for o in optimizers}
  time_t = {o: {} for o in optimizers}
  for o_i, opt in enumerate(optimizers):
    rs = [r for r in rows if r["optimizer"] == opt and np.isfinite(r["speedup"])]
    groups = [r["task"] for r in rs]
    sp = [r["speedup"] for r in rs]
    mine = [r for r in rows if r["optimizer"] == opt]
    # Validation first: AlgoPerf scores (filled below), hit rate, steps to target; then the
    # training-loss speedup.
    aggregate[opt] = {
        "runs": len(mine),
        "tasks": len({r["task"] for r in mine}),
        "algoperf_score_steps": 0.0,
        "algoperf_score_time": 0.0,
        "hit_rate": metrics.hit_rate([r["steps_to_target"] for r in mine]),
        "steps_to_target_fraction": (float(np.median(
            [r["steps_to_target"] / r["num_steps"] for r in mine])) if mine else math.nan),
        "speedup_iqm": _ci(sp, metrics.iqm, 7 + o_i, groups),
        "speedup_geomean": _ci(sp, metrics.geometric_mean, 7 + o_i, groups),
        "speedup_median": _ci(sp, np.median, 7 + o_i, groups),
    }
    for p in per_task:
      if p["optimizer"] == opt:
        steps_t[opt][p["task"]] = p["steps_to_target"]
        time_t[opt][p["task"]] = p["time_to_target_s"]
  by_steps = scoring.score_times(steps_t, workloads=list(tasks))
  by_time = scoring.score_times(time_t, workloads=list(tasks))
  for opt in optimizers:
    aggregate[opt]["algoperf_score_steps"] = by_steps.scores.get(opt, 0.0)
    aggregate[opt]["algoperf_score_time"] = by_time.scores.get(opt, 0.0)
  profiles = {
      "tau": by_steps.tau.tolist(),
      "steps": {o: by_steps.profile[i].tolist() for i, o in enumerate(by_steps.submissions)},
      "time": {o: by_time.profile[i].tolist() for i, o in enumerate(by_time.submissions)},
  }
  return {"per_task": per_task, "aggregate": aggregate, "profiles": profiles}
