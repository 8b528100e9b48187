"""`lopt nowcast record|fit`: record Adam trajectories, fit NiNo / WNN+ nowcasters on them."""

from __future__ import annotations

import argparse
import json
import pathlib

from lopt.cli._io import emit_json


def register(sub: argparse._SubParsersAction) -> None:
  p = sub.add_parser("nowcast", help="record trajectories and fit nowcasters (NiNo, WNN+)",
                     description="Parameter nowcasting: record parameter trajectories of Adam "
                     "runs, and fit NiNo / WNN+ nowcasters on them.")
  nsub = p.add_subparsers(dest="nowcast_command", required=True, metavar="ACTION")

  r = nsub.add_parser("record", help="record Adam parameter trajectories (float16 memmaps)")
  r.add_argument("--suite", default="train", help="task suite split to record (default: train)")
  r.add_argument("--tasks", default=None,
                 help="comma-separated task names (default: every task of --suite)")
  r.add_argument("--steps", type=int, default=None, help="steps per run (default: task budget)")
  r.add_argument("--every", type=int, default=4, help="snapshot spacing in steps (default 4)")
  r.add_argument("--seeds", default="0", help="comma-separated seeds, e.g. 0,1,2")
  r.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
  r.add_argument("--out", required=True, help="output folder (<out>/<task>/seed<k>/)")
  r.add_argument("--no-progress", action="store_true")
  r.set_defaults(func=run_record)

  f = nsub.add_parser("fit", help="fit a NiNo or WNN+ nowcaster on recorded trajectories")
  f.add_argument("--data", required=True, help="folder of trajectories (from `record`)")
  f.add_argument("--config", default="nowcast_wnnp",
                 help="config module in lopt.configs or a .py path (default nowcast_wnnp)")
  f.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                 help="config override (repeatable), e.g. --set steps=2000")
  f.add_argument("--out", required=True, help="run folder (checkpoints, metrics.jsonl, "
                 "final nowcaster); an existing run resumes")
  f.add_argument("--no-progress", action="store_true")
  f.set_defaults(func=run_fit)


def _ints(text: str, what: str) -> list[int]:
  from lopt.cli import UsageError
  try:
    return [int(x) for x in text.split(",") if x.strip()]
  except ValueError:
    raise UsageError(f"{what} expects comma-separated integers, got {text!r}") from None


def run_record(args: argparse.Namespace) -> int:
  from lopt.cli import UsageError
  if args.every <= 0 or (args.steps is not None and args.steps <= 0):
    raise UsageError("--steps and --every must be positive integers")
  if not args.lr > 0:
    raise UsageError(f"--lr must be > 0, got {args.lr}")
  seeds = _ints(args.seeds, "--seeds")
  from lopt.cli import check_output_dir
  check_output_dir(args.out)
  from lopt import rundir, tasks
  from lopt.tasks import datasets
  from lopt.training import trajectories

  if args.tasks:
    names = [n.strip() for n in args.tasks.split(",") if n.strip()]
  else:
    try:
      names = list(tasks.suite_names(args.suite))
    except (KeyError, ValueError) as e:
      raise UsageError(f"unknown suite {args.suite!r}: {e}") from None
  unknown = [n for n in names if n not in tasks.SUITE]
  if unknown:
    raise UsageError(f"unknown task(s) {', '.join(unknown)}; valid tasks: "
                     f"{', '.join(sorted(tasks.SUITE))}")
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  from tqdm import tqdm
  for name in names:
    spec = tasks.SUITE[name]
    steps = args.steps or spec.num_steps
    if args.every > steps:
      raise UsageError(f"--every ({args.every}) is larger than --steps ({steps})")
    try:
      task = spec.make()
    except datasets.DatasetUnavailableError as e:
      raise UsageError(str(e)) from None
    for seed in seeds:
      bar = tqdm(total=steps, desc=f"{name} seed {seed}", disable=args.no_progress)
      try:
        traj = trajectories.record_trajectory(
            task, out / name / f"seed{seed}", num_steps=steps, every=args.every, seed=seed,
            lr=args.lr, progress=lambda d: bar.update(d - bar.n))
      except rundir.RunDirMismatchError as e:
        raise UsageError(str(e)) from None
      finally:
        bar.close()
      line = {"task": name, "seed": seed, "path": str(traj.path),
              "snapshots": int(traj.states.shape[0]), "params": int(traj.states.shape[1]),
              "final_train_loss": traj.meta["train_loss"][-1] if traj.meta["train_loss"] else None}
      with open(out / "index.jsonl", "a") as fh:
        fh.write(json.dumps(line) + "\n")
      emit_json(line)
  return 0


def run_fit(args: argparse.Namespace) -> int:
  from lopt.cli import UsageError
  from lopt.cli import check_output_dir
  from lopt.cli.train import parse_overrides
  from lopt import rundir
  from lopt.meta import nowcast_fit
  check_output_dir(args.out)
  try:
    config = nowcast_fit.load_config(args.config, parse_overrides(args.set))
  except (ValueError, TypeError, FileNotFoundError, ModuleNotFoundError) as e:
    raise UsageError(str(e)) from None
  data = pathlib.Path(args.data)
  if not data.is_dir():
    raise UsageError(f"--data {data} is not a folder; record trajectories first with "
                     "`lopt nowcast record --out DIR`")
  try:
    result = nowcast_fit.fit(config, data, args.out, progress=not args.no_progress)
  except (nowcast_fit.NoTrajectoriesError, rundir.RunDirMismatchError) as e:
    raise UsageError(str(e)) from None
  emit_json(result)
  return 0
