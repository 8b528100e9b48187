"""`lopt meta-train --config configs/X.py --workdir DIR [--set key=value ...]`."""

from __future__ import annotations

import argparse
import json
import pathlib

from lopt.cli._io import out


def register(subparsers) -> None:
  from lopt.cli import add_no_verify  # cli/__init__ imports this module: not at the top
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
  p.add_argument("--resume", action="store_true",
                 help="continue the run in --workdir (from its checkpoint, or from a committed "
                      "small_state.npz); refused when there is none")
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
  add_no_verify(p)
  p.set_defaults(func=_main)
  q = subparsers.add_parser(
      "meta-select", help="compare candidate learned optimizers on the meta-validation set",
      description="Scores candidates (theta directories or pretrained names) against tuned "
      "Adam on the meta-validation tasks of a config's training distribution "
      "(lopt.meta.selection); writes selection.json/.md/.png.")
  q.add_argument("--config", required=True, help="the meta-training config (its families "
                 "define the training draw the meta-validation set must avoid)")
  q.add_argument("--candidate", action="append", required=True, metavar="NAME=SOURCE",
                 help="a candidate: NAME=theta directory or pretrained name (repeatable)")
  q.add_argument("--seeds", type=int, default=2)
  q.add_argument("--reference", default=None, metavar="SELECTION_JSON",
                 help="reuse the tuned-Adam reference of an earlier selection.json (same "
                      "config and seeds) instead of re-running Adam")
  q.add_argument("--out", required=True, help="output folder")
  add_no_verify(q)
  q.set_defaults(func=_select)


def _main(args: argparse.Namespace) -> int:
  from lopt.cli import UsageError
  from lopt.meta import distributed
  from lopt.meta import ConfigError, apply_overrides, load_config
  from lopt.cli import check_output_dir
  check_output_dir(args.workdir, "--workdir")
  try:
    cfg = apply_overrides(load_config(args.config), args.overrides)
  except ConfigError as e:
    raise UsageError(str(e)) from None
  _check_overrides(load_config(args.config), cfg, args.overrides)
  if args.distributed:
    distributed.initialize(args.coordinator, args.num_processes, args.process_id)
  from lopt.meta import enable_compile_cache, meta_train
  if not args.no_compile_cache:
    enable_compile_cache()
  try:
    summary = meta_train(cfg, args.workdir, progress=not args.no_progress, resume=args.resume)
  except ConfigError as e:
    raise UsageError(str(e)) from None
  if summary.get("theta"):
    out(f"meta-trained {summary['step']} outer steps ({summary['skipped']} skipped); "
          f"theta saved to {summary['theta']}")
  return 0


def _select(args: argparse.Namespace) -> int:
  from lopt.cli import UsageError, check_output_dir
  check_output_dir(args.out)
  from lopt.meta import selection
  from lopt.meta import ConfigError, load_config
  try:
    cfg = load_config(args.config)
  except ConfigError as e:
    raise UsageError(str(e)) from None
  specs = [f["spec"] for f in cfg["families"] if isinstance(f, dict) and "spec" in f]
  if not specs:
    raise UsageError(f"{args.config} has no distribution families ({{'spec': ...}}); the "
                     "meta-validation set is defined against such a draw")
  if args.seeds < 1:
    raise UsageError("--seeds must be >= 1")
  candidates = {}
  for item in args.candidate:
    name, _, source = item.partition("=")
    if not name or not source:
      raise UsageError(f"--candidate {item!r} must look like NAME=SOURCE")
    try:
      candidates[name] = selection.candidate(source)
    except (FileNotFoundError, KeyError, ValueError) as e:
      raise UsageError(str(e)) from None
  tasks = selection.meta_valid_tasks(specs)
  reference = None
  if args.reference:
    try:
      earlier = json.loads(pathlib.Path(args.reference).read_text())
    except (OSError, ValueError) as e:
      raise UsageError(f"--reference {args.reference}: {e}") from None
    names = [n for n, _, _ in tasks]
    if earlier.get("tasks") != names or earlier.get("seeds") != args.seeds:
      raise UsageError(f"--reference {args.reference} was measured on other tasks or seeds; "
                       "drop --reference to re-run tuned Adam")
    reference = {t: {k: float("inf") if v is None else v for k, v in row.items()}
                 for t, row in earlier["reference"].items()}   # JSON wrote inf as null
  result = selection.select(candidates, tasks, seeds=args.seeds, out=args.out,
                            reference=reference)
  out((pathlib.Path(args.out) / "selection.md").read_text().rstrip("\n"))
  out(f"chosen: {result['chosen']}")
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
