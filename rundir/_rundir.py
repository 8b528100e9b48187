"""A run directory: one config, claimed once, and the resume rule every loop follows."""

from __future__ import annotations

import json
import os
import pathlib
import platform
import sys
from typing import TYPE_CHECKING, Any, Sequence

from lopt.rundir._files import atomic_write_json, strict_json
from lopt.rundir._metrics import MetricsWriter

if TYPE_CHECKING:
  from lopt.rundir._checkpoints import Checkpointer

__all__ = ["RunDir", "RunDirMismatchError", "provenance"]

# Recorded beside the config, never compared: a resume on an upgraded install is allowed.
PROVENANCE = "provenance"


class RunDirMismatchError(ValueError):
  """The folder holds a different run; resuming it would mix two experiments."""


def _short(x: Any, n: int = 60) -> str:
  r = repr(x)
  return r if len(r) <= n else r[:n - 3] + "..."


class RunDir:
  """The files of one long-running command's output folder.

  The rule, the same for every loop (inner training, meta-training, nowcaster fitting,
  benchmarks): `claim(config)` writes the config file, or refuses a folder whose config
  differs (`RunDirMismatchError`, listing the differing keys); a run then resumes from its
  latest checkpoint (`checkpoints()`), and its metrics (`metrics()`) drop rows past the
  restored step.

  Args:
    path: the folder (created on `claim`).
    config_file: the config's file name in it.

  Example:
    >>> import tempfile
    >>> run = RunDir(tempfile.mkdtemp(), config_file="run.json")
    >>> run.claim({"task": "quadratic", "num_steps": 100})
    >>> run.claim({"task": "quadratic", "num_steps": 100})  # the same run: resume
    >>> run.claim({"task": "quadratic", "num_steps": 200})  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    ...
    lopt.rundir.RunDirMismatchError: ... run.json has a different config (num_steps: 100 != 200)
  """

  def __init__(self, path: str | os.PathLike, *, config_file: str = "config.json"):
    self.path = pathlib.Path(path)
    self.config_path = self.path / config_file

  def stored_config(self) -> dict | None:
    """The claimed config (without its provenance), or None."""
    if not self.config_path.exists():
      return None
    old = json.loads(self.config_path.read_text())
    old.pop(PROVENANCE, None)
    return old

  def check(self, config: dict, *, keys: Sequence[str] | None = None,
            error: type[RunDirMismatchError] = RunDirMismatchError) -> None:
    """Raises `error` when the folder holds a config that differs from `config` in `keys`
    (default: any key); writes nothing."""
    old = self.stored_config()
    if old is None:
      return
    new = strict_json(config)
    names = keys if keys is not None else sorted(set(old) | set(new))
    diff = [k for k in names if old.get(k) != new.get(k)]
    if diff:
      shown = ", ".join(f"{k}: {_short(old.get(k))} != {_short(new.get(k))}"
                        for k in diff[:5]) + (f", and {len(diff) - 5} more" if len(diff) > 5
                                              else "")
      raise error(f"{self.path} holds a different run: {self.config_path.name} has a "
                  f"different config ({shown}); rerun with the same settings to resume it, "
                  "or use another output folder (or delete this one)")

  def claim(self, config: dict, *, keys: Sequence[str] | None = None,
            record_provenance: bool = False,
            error: type[RunDirMismatchError] = RunDirMismatchError) -> None:
    """Writes `config` (atomically), or refuses a different one (see `check`).

    Args:
      config: a JSON-able dict (non-finite floats are stored as null).
      keys: compare only these keys; the others may change, and the file is then rewritten
        with the new config (a benchmark may add optimizers or seeds).
      record_provenance: also record versions, device and command line (never compared).
      error: the error raised, a subclass of `RunDirMismatchError` (so each command keeps
        its own error type and every caller can catch the common one).
    """
    self.check(config, keys=keys, error=error)
    if self.stored_config() == strict_json(config):
      return
    extra = {PROVENANCE: provenance()} if record_provenance else {}
    atomic_write_json(self.config_path, {**config, **extra}, sort_keys=True)

  def metrics(self, name: str = "metrics.jsonl", *, resume_step: int | None = None,
              tensorboard: bool | None = None) -> MetricsWriter:
    """A `MetricsWriter` for `path/name`, truncated past `resume_step`."""
    return MetricsWriter(self.path / name, resume_step=resume_step, tensorboard=tensorboard)

  def checkpoints(self, *, keep: int = 3, subdir: str = "checkpoints") -> "Checkpointer":
    """A `Checkpointer` on `path/subdir`."""
    from lopt.rundir._checkpoints import Checkpointer  # loads JAX and orbax (see __init__)
    return Checkpointer(self.path / subdir, keep=keep)


def provenance() -> dict:
  """Versions, device and command line (what produced a run folder's files)."""
  from importlib import metadata

  def v(name):
    try:
      return metadata.version(name)
    except metadata.PackageNotFoundError:
      return None
  out = {"lopt": v("lopt"), "jax": v("jax"), "jaxlib": v("jaxlib"), "optax": v("optax"),
         "python": platform.python_version(), "command": _command()}
  try:
    import jax
    out["device"] = f"{jax.default_backend()}: {jax.devices()[0].device_kind}"
  except Exception:  # noqa: BLE001 - provenance must never fail a run
    out["device"] = None
  return out


def _command() -> str:
  argv = list(sys.argv)
  if argv and (argv[0].endswith(os.path.join("cli", "__main__.py"))
               or os.path.basename(argv[0]) == "lopt"):
    argv[0] = "lopt"
  return " ".join(argv)
