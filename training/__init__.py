"""Inner training: one task, one optax transform (names resolve in `lopt.optimizers`).

Example:
  >>> import optax
  >>> from lopt.tasks import get_task
  >>> from lopt.training import train
  >>> result = train(get_task("digits-mlp-32"), optax.adam(3e-3), 20, progress=False)
  >>> result.steps_done
  20
"""

import importlib
import warnings

from lopt.training._loop import TrainResult, TrainState, evaluate, train, train_step
from lopt.training._many import Programs, one_by_one, prepare_many, train_many
from lopt.training._run_dir import RunDirMismatchError, plot_history
from lopt.training.hooks import StepHooks

__all__ = ["TrainResult", "TrainState", "train", "train_step", "train_many", "prepare_many",
           "one_by_one", "Programs", "evaluate", "StepHooks", "RunDirMismatchError", "plot_history"]

_MOVED = ("make_optimizer", "OptimizerInfo", "known_names")


def __getattr__(name):
  """`lopt.training.make_optimizer` & co. moved to `lopt.optimizers` (deprecated here)."""
  if name in _MOVED:
    warnings.warn(f"lopt.training.{name} moved to lopt.optimizers.{name}; import it from "
                  "there", DeprecationWarning, stacklevel=2)
    return getattr(importlib.import_module("lopt.optimizers"), name)
  raise AttributeError(f"module 'lopt.training' has no attribute {name!r}")
