"""Inner training: one task, one optax transform, and the optimizer resolver.

Example:
  >>> from lopt.tasks import get_task
  >>> from lopt.training import make_optimizer, train
  >>> tx, info = make_optimizer("adam", learning_rate=3e-3)
  >>> result = train(get_task("digits-mlp-32"), tx, 20, progress=False)
  >>> result.steps_done
  20
"""

from lopt.training._loop import TrainResult, train
from lopt.training._registry import OptimizerInfo, known_names, make_optimizer
from lopt.training._run_dir import RunDirMismatchError, plot_history

__all__ = ["TrainResult", "train", "OptimizerInfo", "known_names",
           "make_optimizer", "RunDirMismatchError", "plot_history"]
