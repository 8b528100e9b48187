"""JAX's persistent compilation cache, turned on the same way by every command."""

from __future__ import annotations

import os

from lopt.rundir import settings

__all__ = ["enable_compile_cache"]


def enable_compile_cache(folder: str | os.PathLike | None = None, *,
                         min_compile_time_s: float = 1.0) -> bool:
  """Turns on JAX's persistent compilation cache in `folder` (default
  `$LOPT_CACHE_DIR/jax`), unless one is configured already: a rerun or resume of the same
  program skips the compile that dominates its first step.

  Args:
    folder: the cache folder.
    min_compile_time_s: cache only programs that took at least this long to compile
      (0: every program, for many small runs that differ only in the seed).

  Returns:
    True when this call turned the cache on.
  """
  import jax  # here, not at the top: `lopt.rundir` stays importable without loading JAX
  if jax.config.jax_compilation_cache_dir:
    return False
  jax.config.update("jax_compilation_cache_dir",
                    str(folder or settings.compile_cache_dir()))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_time_s))
  return True
