"""The declared selection protocol: candidates and checkpoints are compared on a
meta-validation set drawn from the meta-training distribution, never on the held-out suite.

Protocol (`lopt meta-select`, `select`):

1. The meta-validation tasks are `lopt.tasks.distribution.meta_valid_specs` of the
   training draw: every model kind represented, no architecture shared with the training
   families or the held-out suite, at init scale 1 and without augmentation.
2. Each task trains for `STEPS[kind]` steps with every candidate, `seeds` seeds each, and
   with Adam at each learning rate of `ADAM_GRID`; Adam's learning rate is chosen per task
   by its mean final validation loss (the tuned baseline a user would compare against).
3. A candidate's score is the mean over tasks of `log(final valid loss / tuned Adam's)`
   (lower is better; 0 ties tuned Adam). The best-validation-loss ratio (the
   early-stopping view), the training-loss ratio and the number of tasks won are reported
   beside it. The candidate with the lowest score is chosen; ties within 0.01 go to the
   cheaper optimizer (listed first).

Example:
  >>> rows = [{"task": "a", "final_valid": 1.0, "best_valid": 0.9, "final_train": 0.5}]
  >>> ref = {"a": {"final_valid": 2.0, "best_valid": 1.0, "final_train": 0.5, "lr": 1e-3}}
  >>> round(score(rows, ref)["score"], 3)
  -0.693
"""

from __future__ import annotations

import json
import math
import pathlib
from typing import Any, Callable, Sequence

import numpy as np
import optax

from lopt import rundir
from lopt.learned_opts import PRETRAINED, load_optimizer, pretrained
from lopt.tasks import distribution
from lopt.training import train

__all__ = ["STEPS", "ADAM_GRID", "meta_valid_tasks", "evaluate", "adam_reference", "score",
           "select", "candidate", "write_report"]

STEPS = {"mlp": 600, "conv": 600, "transformer": 400, "lstm": 400}
ADAM_GRID = (1e-3, 3e-3, 1e-2)

MakeTx = Callable[[int], optax.GradientTransformation]   # num_steps -> transform


def meta_valid_tasks(train_specs: Sequence[dict]) -> list[tuple[str, Any, int]]:
  """`(name, task, num_steps)` of the meta-validation set of a training draw."""
  out = []
  for spec in distribution.meta_valid_specs(train_specs=list(train_specs)):
    task = distribution.build_task(spec)
    out.append((task.name, task, STEPS[spec["kind"]]))
  return out


def _run(task, tx: optax.GradientTransformation, num_steps: int, seed: int) -> dict:
  res = train(task, tx, num_steps, seed=seed, progress=False, eval_every=max(1, num_steps // 10))
  valid = np.asarray(res.history["valid_loss"], np.float64)
  valid = np.where(np.isfinite(valid), valid, np.inf)
  m = res.final_metrics()
  final = m["valid_loss"] if res.stopped is None and math.isfinite(m["valid_loss"]) else math.inf
  return {"final_valid": final, "best_valid": float(valid.min()) if valid.size else math.inf,
          "final_train": m["train_loss"] if res.stopped is None else math.inf}


def _mean(rows: list[dict]) -> dict:
  return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}


def evaluate(make_tx: MakeTx, tasks: Sequence[tuple[str, Any, int]], *, seeds: int = 2
             ) -> list[dict]:
  """Per task, the mean over `seeds` of final/best validation and final training loss."""
  rows = []
  for name, task, steps in tasks:
    per_seed = [_run(task, make_tx(steps), steps, s) for s in range(seeds)]
    rows.append({"task": name, **_mean(per_seed)})
  return rows


def adam_reference(tasks: Sequence[tuple[str, Any, int]], *, seeds: int = 2,
                   grid: Sequence[float] = ADAM_GRID) -> dict[str, dict]:
  """Per task, Adam at the grid learning rate with the lowest mean final validation loss."""
  out: dict[str, dict] = {}
  for lr in grid:
    for row in evaluate(lambda n, lr=lr: optax.adam(lr), tasks, seeds=seeds):
      name = row.pop("task")
      if name not in out or row["final_valid"] < out[name]["final_valid"]:
        out[name] = {**row, "lr": lr}
  return out


def _log_ratio(a: float, b: float) -> float:
  if not (math.isfinite(a) and math.isfinite(b)) or a <= 0 or b <= 0:
    return math.log(1e3) if not math.isfinite(a) else 0.0
  return math.log(a / b)


def score(rows: Sequence[dict], reference: dict[str, dict]) -> dict:
  """The selection score of one candidate's rows against the tuned-Adam reference."""
  ratios = {k: [_log_ratio(r[k], reference[r["task"]][k]) for r in rows]
            for k in ("final_valid", "best_valid", "final_train")}
  return {"score": float(np.mean(ratios["final_valid"])),
          "best_valid_log_ratio": float(np.mean(ratios["best_valid"])),
          "train_log_ratio": float(np.mean(ratios["final_train"])),
          "tasks_won": int(sum(x < 0 for x in ratios["final_valid"])),
          "num_tasks": len(rows),
          "per_task": {r["task"]: {**{k: r[k] for k in ("final_valid", "best_valid",
                                                         "final_train")},
                                   "valid_log_ratio": x}
                       for r, x in zip(rows, ratios["final_valid"])}}


def select(candidates: dict[str, MakeTx], tasks: Sequence[tuple[str, Any, int]], *,
           seeds: int = 2, out: str | pathlib.Path | None = None,
           reference: dict[str, dict] | None = None) -> dict:
  """Scores every candidate (name -> `num_steps -> transform`) and picks one.

  Returns `{"chosen": name, "candidates": {name: score dict}, "reference": {...}}`, also
  written to `out/selection.json` when `out` is given.
  """
  reference = reference or adam_reference(tasks, seeds=seeds)
  scores = {name: score(evaluate(make, tasks, seeds=seeds), reference)
            for name, make in candidates.items()}
  best = min(s["score"] for s in scores.values())
  chosen = next(n for n, s in scores.items() if s["score"] <= best + 0.01)
  result = {"chosen": chosen, "candidates": scores, "reference": reference,
            "tasks": [n for n, _, _ in tasks], "seeds": seeds,
            "protocol": "mean log(final valid loss / tuned Adam's) on the meta-validation set"}
  if out is not None:
    write_report(result, out)
  return result


def candidate(source: str) -> MakeTx:
  """`num_steps -> transform` of a theta directory (`save_theta` / `export_theta` output),
  a pretrained name (`lopt-fc-v2`, `celo`, ...), or `NAME:PATH` (a pretrained name's file
  at PATH, e.g. `celo-adam:../shared/pretrained/celo/celo_adam_theta.state`)."""
  name, _, path = source.partition(":")
  if path and (name in PRETRAINED or name.replace("_", "-") in PRETRAINED):
    lopt, theta = pretrained(name, path=path)
  elif pathlib.Path(source).exists():
    lopt, theta = load_optimizer(source)
  elif source in PRETRAINED or source.replace("_", "-") in PRETRAINED:
    lopt, theta = pretrained(source)
  else:
    raise FileNotFoundError(f"candidate {source!r} is neither a theta directory nor a "
                            f"pretrained name ({', '.join(sorted(PRETRAINED))})")
  return lambda num_steps: lopt.make(theta, num_steps=num_steps)


def write_report(result: dict, out: str | pathlib.Path) -> None:
  """`selection.json`, `selection.md` (a table) and `selection.png` (per-task log ratios)."""
  out = pathlib.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  rundir.atomic_write_json(out / "selection.json", result)  # inf/NaN -> null
  lines = ["| candidate | score: mean log(final valid / tuned Adam) | best-valid log ratio | "
           "train-loss log ratio | tasks won |", "|---|---|---|---|---|"]
  for name, s in sorted(result["candidates"].items(), key=lambda kv: kv[1]["score"]):
    mark = " (chosen)" if name == result["chosen"] else ""
    lines.append(f"| `{name}`{mark} | {s['score']:+.3f} | {s['best_valid_log_ratio']:+.3f} | "
                 f"{s['train_log_ratio']:+.3f} | {s['tasks_won']}/{s['num_tasks']} |")
  (out / "selection.md").write_text("\n".join(lines) + "\n")
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  tasks = result["tasks"]
  names = list(result["candidates"])
  fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(tasks), 3.6))
  width = 0.8 / max(1, len(names))
  for i, name in enumerate(names):
    per = result["candidates"][name]["per_task"]
    ax.bar(np.arange(len(tasks)) + i * width, [per[t]["valid_log_ratio"] for t in tasks],
           width, label=name)
  ax.axhline(0.0, color="k", lw=0.8)
  ax.set_xticks(np.arange(len(tasks)) + 0.4 - width / 2, tasks, rotation=30, ha="right",
                fontsize=7)
  ax.set_ylabel("log(final valid loss / tuned Adam)")
  ax.set_title("meta-validation (lower is better)")
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(out / "selection.png", dpi=120)
  plt.close(fig)
