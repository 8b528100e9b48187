"""The `lopt` command line: thin subcommands over importable functions.

Each subcommand lives in its own module exposing `register(subparsers)`, which adds a parser
and sets `func=<callable(args) -> int>`. Heavy imports happen inside those callables.
Exit codes: 0 success, 2 bad input (unknown names, invalid values, unusable paths; one line
on stderr, no traceback), 1 runtime failure (a diverged run, a full disk: one line with the
cause), 130 interrupted.

Results go to stdout; anything else a library prints goes to stderr (see `lopt.cli._io`).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import os
import shutil
import sys
import tempfile

from lopt.cli import _io

# Subcommand modules, written out by hand (no import side effects populate this).
SUBCOMMANDS = (
    "lopt.cli.train",       # lopt train
    "lopt.cli.tasks",       # lopt tasks
    "lopt.cli.datasets",    # lopt datasets [list|prepare]
    "lopt.cli.pretrained",  # lopt pretrained list|show|add
    "lopt.cli.benchmark",   # lopt benchmark [score]
    "lopt.cli.meta",        # lopt meta-train
    "lopt.cli.nowcast",     # lopt nowcast record|fit
    "lopt.cli.analyze",     # lopt analyze variance|batch-size|schedules|trajectory
    "lopt.cli.demo",        # lopt demo
    "lopt.cli.bench",       # lopt bench NAME
)

# Commands that may build a dataset (tfds progress bars).
_DATA_COMMANDS = ("train", "datasets", "benchmark", "nowcast", "demo", "analyze", "meta-select")

# Output folders a command may create: removed again when the command fails on bad input.
_OUTPUT_ARGS = ("out", "workdir")

# OSErrors that mean "this path is unusable" (bad input, exit 2) rather than a failing machine.
_PATH_ERRNOS = {errno.EEXIST, errno.ENOTDIR, errno.EISDIR, errno.EACCES, errno.EPERM,
                errno.EROFS, errno.ENOENT, errno.ENAMETOOLONG}


class UsageError(Exception):
  """Bad user input: printed without a traceback, exit code 2."""


def version() -> str:
  """`lopt X (jax Y, optax Z)` from the installed distributions (no JAX import)."""
  from importlib import metadata

  def v(name):
    try:
      return metadata.version(name)
    except metadata.PackageNotFoundError:
      return "unknown"
  return f"lopt {v('lopt')} (jax {v('jax')}, optax {v('optax')})"


class _Parser(argparse.ArgumentParser):
  """argparse with a one-line error (not the whole usage block); subparsers inherit it."""

  def error(self, message: str):
    self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
  parser = _Parser(prog="lopt", description=__doc__.splitlines()[0])
  parser.add_argument("--version", action="version", version=version())
  parser.add_argument("--quiet", "-q", action="store_true",
                      help="no progress bars and no library output; results and errors only")
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


def add_no_verify(parser: argparse.ArgumentParser) -> None:
  """`--no-verify`, the same on every command that loads weights (`main` turns it into
  `$LOPT_NO_VERIFY`, which every checkpoint loader reads, workers included)."""
  parser.add_argument("--no-verify", action="store_true",
                      help="load checkpoints whose sha256 differs from the published one (your "
                      "own theta for a pretrained architecture)")


def check_output_dir(path: str | os.PathLike, flag: str = "--out") -> None:
  """Raises UsageError when `path` cannot become a folder this command writes to."""
  p = os.path.abspath(os.fspath(path))
  if os.path.exists(p) and not os.path.isdir(p):
    raise UsageError(f"{flag} {path} exists and is not a folder; pick a new folder name")
  parent = p
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
    raise UsageError(f"{flag} {path}: cannot create or write in {parent} (permission denied "
                     "or not a folder); pick a writable folder")


def _oserror_in(e: BaseException) -> OSError | None:
  """The first OSError in an exception's cause/context chain (orbax wraps them)."""
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    if isinstance(e, OSError) and e.errno is not None:
      return e
    e = e.__cause__ or e.__context__
  return None


def _silence_libraries(no_progress: bool, uses_data: bool) -> None:
  """absl/TF logging below errors; with --no-progress/--quiet, tfds' progress bars off."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  try:
    from absl import logging as absl_logging
    absl_logging.set_verbosity(absl_logging.ERROR)
  except ImportError:
    pass
  if no_progress and uses_data:
    try:
      import tensorflow_datasets as tfds
      tfds.disable_progress_bar()
    except ImportError:
      pass


def _new_outputs(args: argparse.Namespace) -> list[str]:
  return [p for p in (getattr(args, a, None) for a in _OUTPUT_ARGS)
          if isinstance(p, str) and not os.path.exists(p)]


def main(argv: list[str] | None = None) -> int:
  parser = build_parser()
  try:
    args = parser.parse_args(argv)
  except SystemExit as e:  # argparse: --help/--version (0) or a usage error (2)
    return int(e.code or 0) if not isinstance(e.code, str) else 2
  prog = f"lopt {args.command}"
  if args.quiet and hasattr(args, "no_progress"):
    args.no_progress = True
  _silence_libraries(getattr(args, "no_progress", False) or args.quiet,
                     args.command in _DATA_COMMANDS)
  created = _new_outputs(args)
  old_no_verify = os.environ.get("LOPT_NO_VERIFY")
  if getattr(args, "no_verify", False):  # read by every checkpoint loader, workers included
    os.environ["LOPT_NO_VERIFY"] = "1"
  real_out, real_err = sys.stdout, sys.stderr
  sink = open(os.devnull, "w") if args.quiet else None
  # A private temp folder, removed at the end: libraries (tfds' `initialize_from_bucket`)
  # leave empty tmp*tfds folders behind otherwise.
  old_tmp, old_env_tmp = tempfile.tempdir, os.environ.get("TMPDIR")
  tmp = tempfile.mkdtemp(prefix="lopt-")
  tempfile.tempdir = tmp
  os.environ["TMPDIR"] = tmp
  _io._STDOUT.append(real_out)
  rc = 1
  try:
    sys.stdout = sink or real_err
    if sink:
      sys.stderr = sink
    try:
      rc = int(args.func(args) or 0)
    except UsageError as e:
      print(f"{prog}: error: {e}", file=real_err)
      rc = 2
    except KeyboardInterrupt:
      print("interrupted", file=real_err)
      rc = 130
    except BrokenPipeError:
      # The reader went away (`lopt tasks --json | head`): stop quietly, as `cat` does.
      with contextlib.suppress(OSError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), real_out.fileno())
      rc = 141
    except Exception as e:  # noqa: BLE001 - only OSErrors are turned into one line
      err = _oserror_in(e)
      if err is None:
        raise
      where = f": {err.filename}" if err.filename else ""
      if err.errno in _PATH_ERRNOS:
        print(f"{prog}: error: {err.strerror}{where}", file=real_err)
        rc = 2
      else:
        print(f"{prog}: error: {err.strerror}{where} (errno {err.errno}); free space or "
              "fix the device and rerun the same command to resume", file=real_err)
        rc = 1
  finally:
    sys.stdout, sys.stderr = real_out, real_err
    _io._STDOUT.pop()
    if sink:
      sink.close()
    tempfile.tempdir = old_tmp
    if old_env_tmp is None:
      os.environ.pop("TMPDIR", None)
    else:
      os.environ["TMPDIR"] = old_env_tmp
    shutil.rmtree(tmp, ignore_errors=True)
    if old_no_verify is None:
      os.environ.pop("LOPT_NO_VERIFY", None)
    else:
      os.environ["LOPT_NO_VERIFY"] = old_no_verify
  if rc == 2:  # bad input: leave nothing half-written
    for path in created:
      if os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)
  return rc


if __name__ == "__main__":
  sys.exit(main())
