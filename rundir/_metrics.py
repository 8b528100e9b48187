"""JSONL metrics that resume cleanly: rows past the restored step are dropped on reopen."""

from __future__ import annotations

import json
import math
import pathlib
from typing import Any, Iterable

from lopt.rundir._files import atomic_write_text, dumps, strict_json

__all__ = ["MetricsWriter", "read_rows"]


def read_rows(path: str | pathlib.Path) -> list[dict]:
  """The rows of a JSONL file; a torn last line (a crash mid-write) is skipped."""
  path = pathlib.Path(path)
  if not path.exists():
    return []
  rows = []
  for line in path.read_text().splitlines():
    try:
      rows.append(json.loads(line))
    except json.JSONDecodeError:
      continue
  return rows


class MetricsWriter:
  """Appends one strict-JSON row per `write` to `path` (process 0 only).

  The resume rule: opening the file with `resume_step=s` keeps the rows with
  `row["step"] <= s` and drops the rest (they were written after the checkpoint the run
  resumes from, and will be written again); `resume_step=None` (a fresh start) drops all.

  Args:
    path: the JSONL file.
    resume_step: the step the run resumes from, or None for a fresh start.
    tensorboard: also write scalars to TensorBoard event files in `path.parent / "tb"`:
      True (needs tensorboardX), None (when tensorboardX is installed) or False.

  Example:
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "metrics.jsonl"
    >>> with MetricsWriter(p, tensorboard=False) as w:
    ...   for step in (1, 2, 3):
    ...     w.write({"step": step, "loss": 1.0 / step})
    >>> with MetricsWriter(p, resume_step=2, tensorboard=False) as w:  # resumed at step 2
    ...   w.write({"step": 3, "loss": float("nan")})
    >>> [r["step"] for r in read_rows(p)], read_rows(p)[-1]["loss"]
    ([1, 2, 3], None)
  """

  def __init__(self, path: str | pathlib.Path, *, resume_step: int | None = None,
               tensorboard: bool | None = None):
    import jax  # here, not at the top: `lopt.rundir` stays importable without loading JAX
    self.path = pathlib.Path(path)
    self.enabled = jax.process_index() == 0
    self.tb = None
    if not self.enabled:
      return
    if self.path.exists():
      keep = [r for r in read_rows(self.path)
              if resume_step is not None and r.get("step", 0) <= resume_step]
      atomic_write_text(self.path, "".join(dumps(r) + "\n" for r in keep))
    else:
      self.path.parent.mkdir(parents=True, exist_ok=True)
    if tensorboard is not False:
      try:
        from tensorboardX import SummaryWriter  # optional dependency
      except ImportError:
        if tensorboard:
          raise ImportError("tensorboard=True needs tensorboardX: pip install tensorboardX "
                            "(or lopt[tensorboard])") from None
      else:
        self.tb = SummaryWriter(str(self.path.parent / "tb"))

  def write(self, row: dict[str, Any], *,
            scalars: Iterable[tuple[str, float, int]] | None = None) -> None:
    """Appends `row` (non-finite numbers become null). With TensorBoard on, writes
    `scalars` (`(tag, value, step)`), by default each finite float of the row as
    `<file stem>/<key>` at `row["step"]`."""
    if not self.enabled:
      return
    row = strict_json(row)
    with self.path.open("a") as f:
      f.write(json.dumps(row, allow_nan=False) + "\n")
    if self.tb is None:
      return
    if scalars is None:
      scalars = [(f"{self.path.stem}/{k}", v, row["step"]) for k, v in row.items()
                 if isinstance(v, float)]
    for tag, value, step in scalars:
      if value is not None and math.isfinite(value):
        self.tb.add_scalar(tag, value, step)
    self.tb.flush()

  def close(self) -> None:
    if self.tb is not None:
      self.tb.close()
      self.tb = None

  def __enter__(self) -> "MetricsWriter":
    return self

  def __exit__(self, *exc) -> None:
    self.close()
