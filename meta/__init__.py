"""Meta-training: truncated unrolls of task populations, gradient estimators, the outer loop.

See docs/meta_training.md.
"""

from lopt.meta._estimators import Estimator
from lopt.meta._estimators import FullES
from lopt.meta._estimators import Plan
from lopt.meta._estimators import estimate_per_task
from lopt.meta._estimators import LOSS_TYPES
from lopt.meta._estimators import Multi
from lopt.meta._estimators import PES
from lopt.meta._estimators import TBPTT
from lopt.meta._estimators import TruncatedES
from lopt.meta._estimators import UnrollState
from lopt.meta._estimators import population_estimate, population_estimates
from lopt.meta._estimators import population_init
from lopt.meta._schedules import ConstantSchedule
from lopt.meta._schedules import LogUniformSchedule
from lopt.meta._schedules import get_schedule
from lopt.meta._unroll import InnerState
from lopt.meta._unroll import StepOut
from lopt.meta._unroll import Unroller
from lopt.meta._train import MetaState
from lopt.meta._train import MetaTrainer
from lopt.meta._train import MetricsWriter
from lopt.meta._train import outer_optimizer
from lopt.meta._train import run
from lopt.meta._checkpoint import Checkpointer
from lopt.meta._config import ConfigError, apply_overrides, build_trainer, load_config
from lopt.meta._experiment import (enable_compile_cache, export_small, export_theta, meta_train,
                                   stopping_point)
from lopt.meta._unroll import meta_loss_mix
from lopt.meta import distributed
from lopt.meta import testing

__all__ = [
    "Checkpointer",
    "distributed",
    "testing",
    "MetaState",
    "MetaTrainer",
    "MetricsWriter",
    "outer_optimizer",
    "run",
    "ConstantSchedule",
    "FullES",
    "InnerState",
    "LOSS_TYPES",
    "LogUniformSchedule",
    "Multi",
    "Estimator",
    "Plan",
    "estimate_per_task",
    "PES",
    "StepOut",
    "TBPTT",
    "TruncatedES",
    "UnrollState",
    "Unroller",
    "get_schedule",
    "population_estimate",
    "population_estimates",
    "population_init",
    "meta_loss_mix",
    "meta_train",
    "export_theta",
    "export_small",
    "stopping_point",
    "enable_compile_cache",
    "ConfigError",
    "apply_overrides",
    "build_trainer",
    "load_config",
]
