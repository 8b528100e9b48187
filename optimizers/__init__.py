"""Hand-designed baseline optimizers (all optax), their tuning search spaces, and the one
resolver from an optimizer name to an optax transform (`make_optimizer`).

Example:
  >>> from lopt import optimizers
  >>> opt = optimizers.get("nadamw", num_steps=1000, learning_rate=3e-3)
  >>> len(optimizers.LR_GRIDS["adam"]) >= 9
  True
"""

from lopt.optimizers._baselines import BASELINES, Baseline, UnknownOptimizerError, get, warmup_cosine
from lopt.optimizers._shampoo import ShampooState, scale_by_shampoo, shampoo, state_bytes
from lopt.optimizers._search_spaces import HALTON_SPACES, LR_GRIDS, halton_trials, log_grid
from lopt.optimizers.resolve import OptimizerInfo, known_names, make_optimizer

SEARCH_SPACES = {"lr_grid": LR_GRIDS, "halton": HALTON_SPACES}

__all__ = ["BASELINES", "Baseline", "UnknownOptimizerError", "get", "warmup_cosine",
           "ShampooState", "scale_by_shampoo", "shampoo", "state_bytes",
           "HALTON_SPACES", "LR_GRIDS", "SEARCH_SPACES", "halton_trials", "log_grid",
           "OptimizerInfo", "known_names", "make_optimizer"]
