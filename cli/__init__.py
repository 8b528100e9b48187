"""The `lopt` command line: thin subcommands over importable functions.

Each subcommand lives in its own module exposing `register(subparsers)`, which adds a parser
and sets `func=<callable(args) -> int>`. Heavy imports happen inside those callables.
Exit codes: 0 success, 2 bad input (unknown names, invalid values), 1 runtime failure.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Subcommand modules, written out by hand (no import side effects populate this).
SUBCOMMANDS = (
    "lopt.cli.train",       # lopt train
    "lopt.cli.tasks",       # lopt tasks
    "lopt.cli.datasets",    # lopt datasets [list|prepare]
    "lopt.cli.pretrained",  # lopt pretrained list|show
    "lopt.cli.benchmark",   # lopt benchmark [score]
    "lopt.cli.meta",        # lopt meta-train
    "lopt.cli.nowcast",     # lopt nowcast record|fit
    "lopt.cli.analyze",     # lopt analyze variance|batch-size|schedules|trajectory
)


class UsageError(Exception):
  """Bad user input: printed without a traceback, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="lopt", description=__doc__.splitlines()[0])
  sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
  for name in SUBCOMMANDS:
    try:
      module = importlib.import_module(name)
    except ModuleNotFoundError as e:
      if e.name == name:  # subcommand not present in this build
        continue
      raise
    module.register(sub)
  return parser


def main(argv: list[str] | None = None) -> int:
  parser = build_parser()
  args = parser.parse_args(argv)
  try:
    return int(args.func(args) or 0)
  except UsageError as e:
    print(f"lopt {args.command}: error: {e}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print("interrupted", file=sys.stderr)
    return 130


if __name__ == "__main__":
  sys.exit(main())
