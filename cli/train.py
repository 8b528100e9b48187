"""`lopt train`: train one suite task with one optimizer and print a final JSON line."""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys

from lopt.cli._io import emit_json


def register(sub: argparse._SubParsersAction) -> None:
  from lopt.cli import add_no_verify  # cli/__init__ imports this module: not at the top
  p = sub.add_parser("train", help="train a suite task with an optimizer",
                     description="Train a task from the suite (see `lopt tasks`) with a "
                     "baseline, a learned optimizer or a nowcasting wrapper.")
  p.add_argument("--task", required=True, help="suite task name, e.g. digits-mlp-32")
  p.add_argument("--optimizer", default="adam",
                 help="adam, nadamw, lion, ..., celo, celo-adam, velo, adam+nino, ...; the "
                 "same spec form as `lopt benchmark`: NAME[:path=FILE][:key=value...], e.g. "
                 "celo:path=celo_theta.state or adam:b1=0.95")
  p.add_argument("--lr", type=float, default=None, help="learning rate (baselines only)")
  p.add_argument("--steps", type=int, default=None, help="steps (default: the task's budget)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--eval-every", type=int, default=None)
  p.add_argument("--checkpoint", default=None,
                 help="deprecated: use --optimizer NAME:path=FILE (as in `lopt benchmark`)")
  add_no_verify(p)
  p.add_argument("--tensorboard", action="store_true",
                 help="also write TensorBoard events to <out>/tb (needs tensorboardX)")
  p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                 help="extra optimizer hyperparameter (repeatable), e.g. --set b1=0.95")
  p.add_argument("--out", default=None, help="run directory (metrics, checkpoints, plot); "
                 "an existing run there resumes")
  p.add_argument("--no-progress", action="store_true")
  p.set_defaults(func=run)


def parse_overrides(items: list[str]) -> dict:
  """`["b1=0.95", "nesterov=true"]` -> `{"b1": 0.95, "nesterov": True}` (JSON values)."""
  from lopt.cli import UsageError
  out = {}
  for item in items:
    key, sep, value = item.partition("=")
    if not sep or not key:
      raise UsageError(f"--set expects KEY=VALUE, got {item!r}")
    try:
      out[key] = json.loads(value)
    except json.JSONDecodeError:
      out[key] = value
  return out


def _parse_optimizer(text: str) -> tuple[str, str | None, dict]:
  """`celo:path=F` -> `("celo", "F", {})`; `adam:b1=0.95` -> `("adam", None, {"b1": 0.95})`."""
  from lopt.cli import UsageError
  from lopt.eval import SpecError, parse_spec
  try:
    spec = parse_spec(text)
  except SpecError as e:
    raise UsageError(str(e)) from None
  if spec.tuning is not None:
    raise UsageError(f"{text!r}: `lopt train` runs one setting; tuned specs are for "
                     "`lopt benchmark`")
  return spec.name, spec.checkpoint, spec.hparams_dict


def run(args: argparse.Namespace) -> int:
  from lopt.cli import UsageError
  if args.steps is not None and args.steps <= 0:
    raise UsageError(f"--steps must be a positive integer, got {args.steps}")
  if args.lr is not None and not args.lr > 0:
    raise UsageError(f"--lr must be > 0, got {args.lr}")
  if args.eval_every is not None and args.eval_every <= 0:
    raise UsageError(f"--eval-every must be positive, got {args.eval_every}")
  if args.out is not None:
    from lopt.cli import check_output_dir
    check_output_dir(args.out)
  name, checkpoint, hparams = _parse_optimizer(args.optimizer)
  if args.checkpoint is not None:
    print(f"lopt train: --checkpoint is deprecated; use --optimizer {name}:path=FILE",
          file=sys.stderr)
    if checkpoint is not None:
      raise UsageError("give the checkpoint once: --optimizer NAME:path=FILE")
    checkpoint = args.checkpoint
  hparams.update(parse_overrides(args.set))
  if args.tensorboard and args.out is None:
    raise UsageError("--tensorboard writes into the run folder: also pass --out DIR")
  if args.tensorboard and importlib.util.find_spec("tensorboardX") is None:
    raise UsageError("--tensorboard needs tensorboardX: pip install tensorboardX")
  if args.lr is not None:
    hparams["learning_rate"] = args.lr

  from lopt import optimizers, tasks, training
  from lopt.tasks import datasets
  try:
    spec = tasks.SUITE[args.task]
  except KeyError:
    raise UsageError(f"unknown task {args.task!r}; valid tasks: "
                     f"{', '.join(sorted(tasks.SUITE))}") from None
  steps = args.steps or spec.num_steps
  try:  # the optimizer first: its errors are cheaper to find than loading the data
    tx, info = optimizers.make_optimizer(name, num_steps=steps, checkpoint=checkpoint, **hparams)
  except optimizers.UnknownOptimizerError as e:
    raise UsageError(str(e)) from None
  except (ValueError, TypeError, FileNotFoundError) as e:
    raise UsageError(f"optimizer {args.optimizer!r}: {e}") from None
  except Exception as e:  # checkpoint problems (corrupt file, unavailable download, ...)
    if type(e).__name__.endswith(("CheckpointError", "UnavailableError")):
      raise UsageError(f"optimizer {args.optimizer!r}: {e}") from None
    raise
  try:
    task = spec.make()
  except datasets.DatasetUnavailableError as e:
    raise UsageError(str(e)) from None

  try:
    result = training.train(task, tx, steps, seed=args.seed, eval_every=args.eval_every,
                            out_dir=args.out, progress=not args.no_progress,
                            eval_params=info.eval_params, needs_gradients=info.needs_gradients,
                            hooks=info.hooks, run_info=info.to_json(),
                            tensorboard=args.tensorboard)
  except training.RunDirMismatchError as e:
    raise UsageError(str(e)) from None
  metrics = {"task": args.task, **info.to_json(), "seed": args.seed,
             **result.final_metrics(), "stopped": result.stopped}
  emit_json(metrics)
  if result.stopped:
    print(f"lopt train: {result.stopped}", file=sys.stderr)
    return 1
  return 0
