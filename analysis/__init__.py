"""Training-dynamics analyses: seed variance, batch-size scaling, LR-schedule trade-offs,
trajectory structure (PCA, phase HMM) and optimizer-state memory.

Each analysis is one function returning a JSON-able dict, a `plot_*` and a `*_markdown`;
`lopt analyze {variance,batch-size,schedules,trajectory}` runs them. Runs that differ only by
seed or learning rate are vmapped together (`run_many`), reproducing `lopt.training.train`.
See `docs/analysis.md` for worked examples.

Example:
  >>> from lopt import analysis
  >>> from lopt.tasks import QuadraticTask
  >>> out = analysis.seed_variance(QuadraticTask(dim=4), ["adam"], num_seeds=2, num_steps=10)
  >>> sorted(out["optimizers"]["adam"]["components"])
  ['data', 'init', 'interaction', 'total']
"""

from lopt.analysis._common import takes_learning_rate, write_json
from lopt.analysis._batch_size import (batch_size_markdown, batch_size_scaling,
                                       plot_batch_size, scaling_regions)
from lopt.analysis._memory import state_bytes, state_memory, tree_bytes
from lopt.analysis._runs import Runs, run_many
from lopt.analysis._schedules import (SCHEDULES, plot_schedules, schedule_tradeoffs,
                                      schedules_markdown, unit_schedule)
from lopt.analysis._trajectory import (hmm_phases, plot_trajectory, trajectory_markdown,
                                       trajectory_pca, trajectory_structure)
from lopt.analysis._variance import (min_detectable_difference, plot_variance, seed_variance,
                                     variance_components, variance_markdown)

__all__ = [
    "takes_learning_rate", "write_json",
    "batch_size_markdown", "batch_size_scaling", "plot_batch_size", "scaling_regions",
    "Runs", "run_many", "state_bytes", "state_memory", "tree_bytes",
    "SCHEDULES", "plot_schedules", "schedule_tradeoffs", "schedules_markdown", "unit_schedule",
    "hmm_phases", "plot_trajectory", "trajectory_markdown", "trajectory_pca",
    "trajectory_structure", "min_detectable_difference", "plot_variance", "seed_variance", "variance_components",
    "variance_markdown",
]
