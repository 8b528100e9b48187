"""Output of the `lopt` command: results on stdout, everything else out of its way.

`main` points `sys.stdout` at stderr (or at /dev/null with `--quiet`) while a command runs,
so that library chatter (tfds' "Downloading and preparing dataset ...", absl logging,
stray prints) never mixes into `lopt train ... | jq`. Commands write their results with
`out` / `emit_json`, which go to the real stdout.

    >>> import math
    >>> to_json({"valid_accuracy": math.nan, "loss": 0.5})
    '{"valid_accuracy": null, "loss": 0.5}'
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

from lopt import rundir

_STDOUT: list[TextIO] = []  # the real stdout of the running command (a stack: nested mains)


def result_stream() -> TextIO:
  return _STDOUT[-1] if _STDOUT else sys.stdout


def out(text: str = "") -> None:
  """One line of a command's result (tables, paths) on the real stdout."""
  stream = result_stream()
  stream.write(text + "\n")
  stream.flush()


def to_json(obj: Any, **kwargs: Any) -> str:
  """Standard JSON: NaN and infinities become null (bare `NaN` breaks `jq` and browsers)."""
  return rundir.dumps(obj, **kwargs)


def emit_json(obj: Any, **kwargs: Any) -> None:
  out(to_json(obj, **kwargs))
