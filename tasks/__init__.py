"""Inner problems: `Task`, `TaskFamily`, the named suite, families and augmentations.

Example:
  >>> import jax
  >>> from lopt import tasks
  >>> task = tasks.get_task("digits-mlp-32")
  >>> params = task.init(jax.random.PRNGKey(0))
  >>> loss, aux = jax.jit(lambda t, p, k: t.loss(p, k, t.sample_batch(k)))(
  ...     task, params, jax.random.PRNGKey(1))

See `docs/tasks.md` for the suite, module names and conventions.
"""

from lopt.tasks import augment
from lopt.tasks import families
from lopt.tasks import models
from lopt.tasks._image import ImageAutoencoderTask, ImageConvTask, ImageMLPTask
from lopt.tasks._lm import LSTMLMTask, TransformerLMTask
from lopt.tasks._quadratic import QuadraticTask
from lopt.tasks.augment import GradNoiseFamily, ReducedBatchFamily, ReparamFamily
from lopt.tasks.base import SPLITS, Task, TaskFamily, register_task
from lopt.tasks.families import (FAMILIES, FAST_MLP_FAMILIES, ArchitectureFamily,
                                 ImageConvFamily, ImageMLPFamily, ParametricFamily,
                                 QuadraticFamily, UnknownFamilyError, get_family)
from lopt.tasks.suite import (SUITE, SUITE_SPLITS, TaskSpec, UnknownTaskError, get_spec,
                              get_task, suite_names)

__all__ = [
    "ArchitectureFamily", "FAMILIES", "FAST_MLP_FAMILIES", "GradNoiseFamily",
    "ImageAutoencoderTask", "ImageConvFamily", "ImageConvTask", "ImageMLPFamily", "ImageMLPTask", "LSTMLMTask", "ParametricFamily",
    "QuadraticFamily", "QuadraticTask", "ReducedBatchFamily", "ReparamFamily", "SPLITS",
    "SUITE", "SUITE_SPLITS", "Task", "TaskFamily", "TaskSpec", "TransformerLMTask",
    "UnknownFamilyError", "UnknownTaskError", "augment", "families", "get_family", "get_spec",
    "get_task", "models", "register_task", "suite_names",
]
