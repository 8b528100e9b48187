"""Run directories: how every long-running loop persists, resumes and reads its settings.

A leaf part (it imports jax, numpy and orbax only; every part may import it). Loops own
*what* they compute; this part owns *how* it is written and resumed, with one rule:

- `RunDir(path).claim(config)` writes the config, or refuses a folder holding a different
  one (`RunDirMismatchError`, listing the differing keys);
- a rerun of the same config resumes from the latest `Checkpointer` step (orbax, keep N,
  zero-size leaves and several processes handled here);
- its `MetricsWriter` drops JSONL rows past the restored step;
- every file is written atomically (`atomic_write_json`, `atomic_path`, `atomic_dir`) as
  strict JSON (NaN and infinities as null);
- `settings` resolves the `LOPT_*` environment variables, `enable_compile_cache` turns on
  JAX's persistent compilation cache.

Example:
  >>> import tempfile, numpy as np
  >>> from lopt import rundir
  >>> run = rundir.RunDir(tempfile.mkdtemp())
  >>> run.claim({"lr": 1e-3, "steps": 4})
  >>> with run.checkpoints(keep=2) as ck:
  ...   start = ck.latest_step()            # None: a fresh run
  ...   with run.metrics(resume_step=start, tensorboard=False) as log:
  ...     for step in range(1, 5):
  ...       log.write({"step": step, "loss": 1.0 / step})
  ...     ck.save(4, {"w": np.ones(2)})
  >>> ck.latest_step(), len(rundir.read_rows(run.path / "metrics.jsonl"))
  (4, 4)
"""

import importlib

from lopt.rundir import settings
from lopt.rundir._compile_cache import enable_compile_cache
from lopt.rundir._files import (atomic_dir, atomic_path, atomic_write_bytes,
                                atomic_write_json, atomic_write_text, dumps, replace_dir,
                                strict_json)
from lopt.rundir._metrics import MetricsWriter, read_rows
from lopt.rundir._rundir import RunDir, RunDirMismatchError, provenance

__all__ = [
    "settings",
    "RunDir", "RunDirMismatchError", "provenance",
    "MetricsWriter", "read_rows",
    "Checkpointer", "LayoutMismatchError", "to_host",
    "enable_compile_cache",
    "atomic_path", "atomic_write_text", "atomic_write_bytes", "atomic_write_json",
    "atomic_dir", "replace_dir", "strict_json", "dumps",
]

_LAZY = ("Checkpointer", "LayoutMismatchError", "to_host")


def __getattr__(name):
  """The checkpoint names load JAX and orbax on first use: the CLI and the dataset code
  import this part for files and settings and must stay light."""
  if name in _LAZY:
    return getattr(importlib.import_module("lopt.rundir._checkpoints"), name)
  raise AttributeError(f"module 'lopt.rundir' has no attribute {name!r}")
