"""lopt: learned optimizers and meta-learning research in JAX.

Subpackages:
  tasks         inner problems (Task, TaskFamily, datasets, the named suite).
  optimizers    hand-designed optax baselines and their search spaces.
  learned_opts  learned update rules as optax transforms, checkpoints, nowcasting.
  training      the inner training loop for any optax transform.
  meta          meta-training (PES, ES, TBPTT) over task populations.
  eval          benchmarks, metrics, scoring, reports.
"""

__version__ = "0.1.0"
