"""Periodic evaluation of the current theta: train held-out tasks with it.

`make_eval_fn(lopt, task_names, num_steps)` returns `theta -> {"eval/<task>/train_loss": ..}`
using `lopt.training.train` (the same inner loop `lopt train` runs). It is only a hook: any
`theta -> dict` callable can be passed to `lopt.meta.run(eval_fn=...)` instead.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from lopt.tasks import get_task
from lopt.training import train

__all__ = ["make_eval_fn"]


def make_eval_fn(lopt: Any, task_names: Sequence[str], *, num_steps: int = 200,
                 seeds: int = 1) -> Callable[[Any], dict[str, float]]:
  tasks = [get_task(n) for n in task_names]

  def evaluate(theta: Any) -> dict[str, float]:
    out = {}
    for name, task in zip(task_names, tasks):
      rows = [train(task, lopt.make(theta, num_steps=num_steps), num_steps, seed=s,
                    progress=False).final_metrics() for s in range(seeds)]
      for k in ("train_loss", "valid_loss"):
        out[f"eval/{name}/{k}"] = float(np.mean([r[k] for r in rows]))
    finite = [v for k, v in out.items() if k.endswith("train_loss") and np.isfinite(v)]
    out["eval/mean_train_loss"] = float(np.mean(finite)) if finite else float("nan")
    return out

  return evaluate
