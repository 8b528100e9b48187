"""Benchmarks for optimizers: suites, tuned baselines, runs, metrics, scoring, reports.

Importing this package does not import JAX: `metrics` and `scoring` are pure numpy, and
training is imported only when a benchmark runs.

Example:
  >>> from lopt import eval as E
  >>> E.steps_to_target([0, 50, 100], [2.0, 0.9, 0.4], target=1.0)
  50.0
  >>> E.parse_spec("nadamw-tuned").tuning
  'halton'
"""

from lopt.eval import metrics, scoring
from lopt.eval._benchmark import (SUITES, BenchmarkError, TaskEntry, check_available, pool,
                                  rescore, run_benchmark, suite_tasks)
from lopt.eval._specs import REFERENCE, OptimizerSpec, SpecError, demo_specs, parse_spec, parse_specs
from lopt.eval.metrics import (AdamEnvelope, benchmark_score, bootstrap_ci, geometric_mean,
                               hit_rate, iqm, performance_profile, speedup, steps_to_target,
                               time_to_target)
from lopt.eval.scoring import score_folder, score_times

__all__ = [
    "metrics", "scoring",
    "SUITES", "BenchmarkError", "TaskEntry", "check_available", "pool", "rescore", "run_benchmark",
    "suite_tasks",
    "REFERENCE", "OptimizerSpec", "SpecError", "demo_specs", "parse_spec", "parse_specs",
    "AdamEnvelope", "benchmark_score", "bootstrap_ci", "geometric_mean", "hit_rate", "iqm",
    "performance_profile", "speedup", "steps_to_target", "time_to_target",
    "score_folder", "score_times",
]
