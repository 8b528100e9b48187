"""`lopt bench NAME [ARGS...]`: a speed benchmark shipped in `lopt.benchmarks`.

The same as `python -m lopt.benchmarks.NAME ARGS...` (run in a child process: the scripts
set XLA flags and spawn their own children); `lopt bench` alone lists them.
"""

from __future__ import annotations

import argparse
import importlib.util
import pathlib
import subprocess
import sys


def names() -> list[str]:
  spec = importlib.util.find_spec("lopt.benchmarks")
  if spec is None or not spec.submodule_search_locations:
    return []
  root = pathlib.Path(list(spec.submodule_search_locations)[0])
  return sorted(p.stem for p in root.glob("*.py") if not p.stem.startswith("_"))


def register(sub: argparse._SubParsersAction) -> None:
  p = sub.add_parser("bench", help="run a speed benchmark (lopt.benchmarks.NAME)",
                     description=__doc__.splitlines()[0])
  p.add_argument("name", nargs="?", default=None, help="benchmark name; none: list them")
  p.add_argument("args", nargs=argparse.REMAINDER, help="its arguments (see NAME --help)")
  p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
  from lopt.cli import UsageError
  from lopt.cli._io import out
  available = names()
  if args.name is None:
    for name in available:
      out(name)
    return 0
  if args.name not in available:
    raise UsageError(f"unknown benchmark {args.name!r}; available: {', '.join(available)}")
  # The child inherits the process's real stdout/stderr file descriptors.
  return subprocess.call([sys.executable, "-m", f"lopt.benchmarks.{args.name}", *args.args])
