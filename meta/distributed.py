"""Multi-process (multi-host) setup: `initialize` wraps `jax.distributed.initialize`.

Every process runs the same `lopt meta-train` command; the population is sharded over the
devices of all processes, theta is replicated, and process 0 alone writes metrics and
checkpoints. On CPU, cross-process collectives use gloo.

Example (two processes on one machine):
  lopt meta-train --config configs/meta_smoke.py --workdir runs/x --distributed \\
      --coordinator localhost:12355 --num-processes 2 --process-id 0   # and --process-id 1
"""

from __future__ import annotations

import jax

__all__ = ["initialize"]


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
  """Connects this process to the others; arguments default to the cluster environment
  (SLURM, Open MPI, TPU/GKE env vars) as `jax.distributed.initialize` detects it."""
  # Only affects the CPU client (GPU/TPU use their own collectives); must precede any
  # computation, so no backend query here.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  kwargs = {k: v for k, v in (("coordinator_address", coordinator),
                              ("num_processes", num_processes),
                              ("process_id", process_id)) if v is not None}
  jax.distributed.initialize(**kwargs)
