"""`lopt analyze {variance,batch-size,schedules,trajectory}`: training-dynamics analyses.

Each writes `<out>/<analysis>.json`, a PNG and a markdown section (`<analysis>.md`) and
prints the markdown. Defaults finish in about a minute on digits-mlp-32 on a laptop CPU.
"""

from __future__ import annotations

import argparse
import pathlib

_HELP = {
    "variance": "seed variance: init vs data-order seeds, loss distributions, min. detectable "
                "difference",
    "batch-size": "steps to a target across batch sizes, LR re-tuned per batch size",
    "schedules": "constant / cosine / WSD / cyclic LR schedules: final loss vs budget",
    "trajectory": "PCA of parameter trajectories, HMM phases of logged metrics, state memory",
}


def register(sub: argparse._SubParsersAction) -> None:
  from lopt.cli import add_no_verify  # cli/__init__ imports this module: not at the top
  p = sub.add_parser("analyze", help="training-dynamics analyses (variance, batch size, "
                     "LR schedules, trajectories)", description=__doc__.splitlines()[0])
  kinds = p.add_subparsers(dest="analysis", required=True, metavar="ANALYSIS")
  for name, (seeds, steps) in {"variance": (4, 300), "batch-size": (1, 200),
                               "schedules": (1, 400), "trajectory": (1, 500)}.items():
    q = kinds.add_parser(name, help=_HELP[name], description=_HELP[name])
    q.add_argument("--task", required=True,
                   help="suite task (schedules: several, comma-separated or repeated)"
                   if name == "schedules" else "suite task, e.g. digits-mlp-32")
    q.add_argument("--optimizer", action="append", default=None,
                   help="optimizer name(s), repeatable or comma-separated (default: "
                   + ("adam" if name == "schedules" else "adam,lopt-fc-v2") + ")")
    q.add_argument("--seeds", type=int, default=seeds,
                   help={"variance": "N: an N x N grid of init x data-order seeds",
                         "batch-size": "seeds per (batch size, LR)",
                         "schedules": "seeds per (schedule, budget, LR)",
                         "trajectory": "seeds 0..N-1, one report each"}[name]
                   + f" (default {seeds})")
    q.add_argument("--steps", type=int, default=steps, help=f"steps per run (default {steps})")
    q.add_argument("--out", required=True, help="output folder (JSON, PNG, markdown)")
    if name in ("variance", "trajectory"):
      q.add_argument("--lr", type=float, default=None,
                     help="learning rate of the hand-designed optimizers (default: theirs)")
    if name == "batch-size":
      q.add_argument("--batch-sizes", default="8,16,32,64,128,256,512,1024")
      q.add_argument("--target", type=float, default=None,
                     help="validation-loss target (default: the loss every batch size reaches)")
      q.add_argument("--lrs", type=int, default=5, help="LR grid points per batch size")
    if name == "schedules":
      q.add_argument("--lrs", default=None, help="peak LRs, comma-separated (default: 5 of "
                     "the optimizer's tuning grid)")
      q.add_argument("--budgets", default=None,
                     help="budgets in steps, comma-separated (default: steps/8, /4, /2, steps)")
    add_no_verify(q)
    q.set_defaults(func=run)


def _names(values: list[str] | None, default: str) -> list[str]:
  return [n.strip() for v in (values or [default]) for n in v.split(",") if n.strip()]


def _floats(text: str | None, what: str) -> list[float] | None:
  from lopt.cli import UsageError
  if text is None:
    return None
  try:
    return [float(x) for x in text.split(",") if x.strip()]
  except ValueError:
    raise UsageError(f"{what} expects comma-separated numbers, got {text!r}") from None


def run(args: argparse.Namespace) -> int:
  from lopt.cli import UsageError, _io, check_output_dir
  check_output_dir(args.out)
  if args.steps <= 0 or args.seeds <= 0:
    raise UsageError(f"--steps and --seeds must be positive, got {args.steps} and {args.seeds}")
  if args.analysis == "variance" and args.seeds < 2:
    raise UsageError("variance needs --seeds >= 2 (an N x N grid of init x data seeds)")
  from lopt import analysis, optimizers, tasks
  from lopt.tasks import datasets
  opts = _names(args.optimizer, "adam" if args.analysis == "schedules" else "adam,lopt-fc-v2")
  task_names = _names([args.task], "")
  for t in task_names:
    if t not in tasks.SUITE:
      raise UsageError(f"unknown task {t!r}; valid tasks: {', '.join(sorted(tasks.SUITE))}")
  if len(task_names) > 1 and args.analysis != "schedules":
    raise UsageError(f"{args.analysis} takes one --task, got {len(task_names)}")
  for name in opts:
    try:
      optimizers.make_optimizer(name, num_steps=args.steps)
    except optimizers.UnknownOptimizerError as e:
      raise UsageError(str(e)) from None
    except (ValueError, FileNotFoundError) as e:
      raise UsageError(f"optimizer {name!r}: {e}") from None
  lr = getattr(args, "lr", None)
  hparams = {n: {"learning_rate": lr} for n in opts
             if lr is not None and analysis.takes_learning_rate(n)}
  out = pathlib.Path(args.out)
  kind = args.analysis.replace("-", "_")
  try:
    if args.analysis == "variance":
      results = [analysis.seed_variance(tasks.get_task(task_names[0]), opts,
                                        num_seeds=args.seeds, num_steps=args.steps,
                                        hparams=hparams)]
      plot, markdown = analysis.plot_variance, analysis.variance_markdown
    elif args.analysis == "batch-size":
      results = [analysis.batch_size_scaling(
          task_names[0], opts, batch_sizes=[int(b) for b in _floats(args.batch_sizes,
                                                                    "--batch-sizes")],
          num_steps=args.steps, num_seeds=args.seeds, num_lrs=args.lrs, target=args.target)]
      plot, markdown = analysis.plot_batch_size, analysis.batch_size_markdown
    elif args.analysis == "schedules":
      budgets = _floats(args.budgets, "--budgets")
      results = [analysis.schedule_tradeoffs(
          tasks.get_task(t), opts, num_steps=args.steps, num_seeds=args.seeds,
          lrs=_floats(args.lrs, "--lrs"), budgets=budgets and [int(b) for b in budgets])
          for t in task_names]
      plot, markdown = analysis.plot_schedules, analysis.schedules_markdown
    else:
      results = [analysis.trajectory_structure(tasks.get_task(task_names[0]), opts,
                                               num_steps=args.steps, seed=s, hparams=hparams)
                 for s in range(args.seeds)]
      plot, markdown = analysis.plot_trajectory, analysis.trajectory_markdown
  except datasets.DatasetUnavailableError as e:
    raise UsageError(str(e)) from None
  except ValueError as e:
    raise UsageError(str(e)) from None
  sections = []
  for i, result in enumerate(results):
    suffix = (f"_{result['task']}" if args.analysis == "schedules" and len(results) > 1 else
              f"_seed{result['seed']}" if args.analysis == "trajectory" and len(results) > 1
              else "")
    image = out / f"{kind}{suffix}.png"
    plot(result, image)
    sections.append(markdown(result, image.name))
  analysis.write_json(out / f"{kind}.json",
                              results[0] if len(results) == 1 else {"results": results})
  text = "\n".join(sections)
  (out / f"{kind}.md").write_text(text)
  _io.out(text)
  _io.out(f"wrote {out / (kind + '.json')}, {kind}*.png and {kind}.md")
  return 0
