"""Tuning search spaces, stored as plain data, and their samplers.

Two protocols (see the README's benchmark section and AlgoPerf, Dahl et al. 2023):

* `LR_GRIDS[name]`: a log-spaced learning-rate grid (>= 9 points); the tuned optimizer is the
  grid point with the best final validation loss (VeLOdrome-style LR tuning).
* `HALTON_SPACES[name]`: a quasi-random (Halton) search space over several hyperparameters
  with a fixed number of trials (AlgoPerf external tuning). Ranges are `(lo, hi, "log")`,
  `(lo, hi, "linear")` or a list of discrete choices.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def log_grid(lo: float, hi: float, num: int) -> tuple[float, ...]:
  """`num` log-spaced values from `lo` to `hi` inclusive, rounded to 3 significant digits."""
  return tuple(float(f"{v:.3g}") for v in np.geomspace(lo, hi, num))


LR_GRIDS: dict[str, tuple[float, ...]] = {
    # 1e-4 .. 1e-1 in steps of 10^(1/4): 13 points.
    "adam": log_grid(1e-4, 1e-1, 13),
    "adamw": log_grid(1e-4, 1e-1, 13),
    "nadamw": log_grid(1e-4, 1e-1, 13),
    "lion": log_grid(1e-5, 1e-2, 13),
    "sgd_nesterov": log_grid(1e-3, 1.0, 13),
    "rmsprop": log_grid(1e-5, 1e-2, 13),
    "adafactor": log_grid(1e-4, 1e-1, 13),
    "schedule_free_adamw": log_grid(1e-4, 1e-1, 13),
    "muon": log_grid(1e-4, 1e-1, 13),
    "shampoo": log_grid(1e-4, 1e-1, 13),   # grafted to Adam's step size: Adam's range
}

HALTON_SPACES: dict[str, dict[str, Any]] = {
    "nadamw": {
        "num_trials": 16,
        "space": {
            "learning_rate": (1e-4, 3e-2, "log"),
            "one_minus_b1": (0.02, 0.2, "log"),   # b1 in [0.8, 0.98]
            "one_minus_b2": (1e-3, 0.1, "log"),   # b2 in [0.9, 0.999]
            "weight_decay": (1e-5, 1e-1, "log"),
            "warmup_fraction": [0.02, 0.05, 0.1],
        },
    },
}


def _halton(num: int, dim: int, seed: int) -> np.ndarray:
  from scipy.stats import qmc  # scipy ships with jax
  return qmc.Halton(d=dim, scramble=True, seed=seed).random(num)  # [num, dim] in [0, 1)


def halton_trials(name: str, *, num_trials: int | None = None, seed: int = 0
                  ) -> list[dict[str, float]]:
  """Quasi-random trials from `HALTON_SPACES[name]`, mapped to optimizer hyperparameters.

  `one_minus_X` coordinates are returned as `X = 1 - value`.

  Example:
    >>> trials = halton_trials("nadamw", num_trials=4)
    >>> sorted(trials[0])
    ['b1', 'b2', 'learning_rate', 'warmup_fraction', 'weight_decay']
  """
  if name not in HALTON_SPACES:
    raise ValueError(f"no Halton space for {name!r}; have: {', '.join(sorted(HALTON_SPACES))}")
  entry = HALTON_SPACES[name]
  space = entry["space"]
  n = num_trials or entry["num_trials"]
  u = _halton(n, len(space), seed)
  trials = []
  for row in u:
    hp = {}
    for x, (key, rng) in zip(row, space.items()):
      if isinstance(rng, list):
        v = rng[min(int(x * len(rng)), len(rng) - 1)]
      else:
        lo, hi, scale = rng
        v = math.exp(math.log(lo) + x * (math.log(hi) - math.log(lo))) if scale == "log" \
            else lo + x * (hi - lo)
      if key.startswith("one_minus_"):
        key, v = key[len("one_minus_"):], 1.0 - v
      hp[key] = float(v)
    trials.append(hp)
  return trials
