"""`lopt meta-train --config configs/X.py --workdir DIR [--set key=value ...]`."""

from __future__ import annotations

import argparse

from lopt.cli._io import out


def register(subparsers) -> None:
  p = subparsers.add_parser(
      "meta-train", help="meta-train a learned optimizer from a config file (resumable)",
      description="Meta-trains a learned optimizer as described by a config file "
      "(a shipped name such as lopt_fc_v2, or a .py file with get_config()). Rerun the same command to resume.")
  p.add_argument("--config", required=True,
                 help="a shipped config by name (meta_smoke, lopt_fc_v2, ...) or a path to a "
                 "config file with get_config()")
  p.add_argument("--workdir", required=True, help="run directory (metrics, checkpoints, theta)")
  p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                 help="override a config value, e.g. --set outer.learning_rate=1e-3 (repeatable)")
  p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
  p.add_argument("--no-compile-cache", action="store_true",
                 help="do not use JAX's persistent compilation cache (default: "
                 "$LOPT_CACHE_DIR/jax or ~/.cache/lopt/jax)")
  p.add_argument("--distributed", action="store_true",
                 help="call jax.distributed.initialize() first (multi-host; reads the "
                 "cluster environment or --coordinator/--num-processes/--process-id)")
  p.add_argument("--coordinator", default=None, help="host:port of process 0")
  p.add_argument("--num-processes", type=int, default=None)
  p.add_argument("--process-id", type=int, default=None)
  p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
  from lopt.cli import UsageError
  from lopt.meta import distributed
  from lopt.meta._config import ConfigError, apply_overrides, load_config
  from lopt.cli import check_output_dir
  check_output_dir(args.workdir, "--workdir")
  try:
    cfg = apply_overrides(load_config(args.config), args.overrides)
  except ConfigError as e:
    raise UsageError(str(e)) from None
  _check_overrides(load_config(args.config), cfg, args.overrides)
  if args.distributed:
    distributed.initialize(args.coordinator, args.num_processes, args.process_id)
  from lopt.meta._experiment import enable_compile_cache, meta_train
  if not args.no_compile_cache:
    enable_compile_cache()
  try:
    summary = meta_train(cfg, args.workdir, progress=not args.no_progress)
  except ConfigError as e:
    raise UsageError(str(e)) from None
  if summary.get("theta"):
    out(f"meta-trained {summary['step']} outer steps ({summary['skipped']} skipped); "
          f"theta saved to {summary['theta']}")
  return 0


def _check_overrides(before: dict, after: dict, overrides: list[str]) -> None:
  """`--set` keys must exist in the config and keep a number a number: caught here, not as
  a traceback from inside the meta-training loop."""
  from lopt.cli import UsageError
  for item in overrides:
    key = item.split("=", 1)[0].strip()
    old, new = before, after
    for part in key.split("."):
      if isinstance(old, dict) and part in old:
        old, new = old[part], new[part]
      elif isinstance(old, list) and part.isdigit() and int(part) < len(old):
        old, new = old[int(part)], new[int(part)]
      elif ".hparams." in f".{key}." or key.startswith("hparams."):
        old = None  # a component's hparams take keys the config need not list
        break
      else:
        raise UsageError(f"--set {item}: the config has no key {key!r}")
    number = lambda x: isinstance(x, (int, float)) and not isinstance(x, bool)
    if number(old) and not number(new):
      raise UsageError(f"--set {item}: {key} must be a number, got {new!r}")
