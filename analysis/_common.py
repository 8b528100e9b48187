"""Shared pieces of the analyses: optimizer resolution, JSON and figure output."""

from __future__ import annotations

import math
import os
import pathlib
from typing import Any, Callable

import numpy as np
import optax

from lopt import optimizers, rundir
from lopt.optimizers import OptimizerInfo, make_optimizer

MakeTx = Callable[[Any], optax.GradientTransformation]


# Schedule-free AdamW's averaging weights depend on the learning rate, so its update is not
# proportional to it; every other baseline's is (optax scales by the LR last).
_NOT_LINEAR_IN_LR = frozenset({"schedule_free_adamw"})


def takes_learning_rate(spec: str) -> bool:
  """Whether `spec` is a hand-designed optimizer whose learning rate can be swept."""
  return (spec in optimizers.BASELINES and spec not in _NOT_LINEAR_IN_LR
          and "learning_rate" in optimizers.BASELINES[spec].defaults)


def fixed(spec: str, *, num_steps: int, **hparams: Any) -> tuple[MakeTx, OptimizerInfo]:
  """`spec` with fixed hyperparameters, as a `run_many` maker that ignores its argument."""
  tx, info = make_optimizer(spec, num_steps=num_steps, **hparams)
  return (lambda _: tx), info


def lr_swept(spec: str, *, num_steps: int,
             schedule: Callable[[Any, Any], Any] | None = None, **hparams: Any) -> MakeTx:
  """`spec` as a `run_many` maker of its learning rate (traced).

  The optimizer is built at learning rate 1 and its updates scaled by `schedule(hp, step)`
  (default: `hp`, a constant LR): the same updates, but the LR can be a traced value, so runs
  at several LRs share one compiled program (`make_optimizer` validates a concrete LR).
  """
  if not takes_learning_rate(spec):
    raise ValueError(f"{spec!r} has no learning rate that scales its update; use one of "
                     f"{', '.join(sorted(set(optimizers.LR_GRIDS) - _NOT_LINEAR_IN_LR))}")
  schedule = schedule or (lambda hp, step: hp)

  def make(hp):
    unit, _ = make_optimizer(spec, num_steps=num_steps, **{**hparams, "learning_rate": 1.0})
    return optax.chain(unit, optax.scale_by_schedule(lambda step: schedule(hp, step)))
  return make


def default_lr_grid(spec: str, num: int) -> list[float]:
  """`num` log-spaced learning rates over the upper two decades of `LR_GRIDS[spec]` (where
  short runs find their best LR)."""
  grid = optimizers.LR_GRIDS.get(spec, optimizers.LR_GRIDS["adam"])
  hi = math.log10(grid[-1])
  return [float(f"{v:.3g}") for v in np.logspace(hi - 2, hi, num)]


def jsonable(x: Any) -> Any:
  """numpy -> plain Python, non-finite floats -> "inf"/"-inf"/"nan" strings kept JSON-valid."""
  return rundir.strict_json(x, nonfinite="string")


def write_json(path: str | os.PathLike, data: dict) -> pathlib.Path:
  return rundir.atomic_write_json(path, data, nonfinite="string")


def figure(nrows: int = 1, ncols: int = 1, **kw):
  """A matplotlib figure with the non-interactive backend (no display needed)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt.subplots(nrows, ncols, **kw)


def save(fig, path: str | os.PathLike) -> pathlib.Path:
  import matplotlib.pyplot as plt
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def fmt(x: float, digits: int = 4) -> str:
  return f"{x:.{digits}g}" if math.isfinite(x) else str(x)
