"""`lopt tasks`: list the named task suite (split, dataset, params, step budget, what varies)."""

from __future__ import annotations

import argparse

from lopt.cli._io import emit_json, out, to_json


def register(sub: argparse._SubParsersAction) -> None:
  p = sub.add_parser("tasks", help="list the task suite",
                     description="List the named task suite: split (train = meta-training, "
                     "heldout = evaluation only), dataset, parameter count, step budget and "
                     "a description (for held-out tasks: what differs from the train split).")
  p.add_argument("--split", default=None, help="only this split: train or heldout")
  p.add_argument("--demo", action="store_true", help="only the demo subset (seconds on CPU)")
  p.add_argument("--paper", action="store_true", help="only the NiNo-paper task shapes")
  p.add_argument("--families", action="store_true",
                 help="list the task families (`get_family` names) instead")
  p.add_argument("--json", action="store_true", help="one JSON object per line")
  p.set_defaults(func=run)


def rows(split: str | None = None, demo: bool = False, paper: bool = False) -> list[dict]:
  """The listing as plain dicts (no dataset is loaded)."""
  from lopt import tasks
  names = tasks.suite_names(split, demo=True if demo else None, paper=True if paper else None)
  out = []
  for name in names:
    s = tasks.SUITE[name]
    flags = [f for f, on in (("demo", s.demo), ("paper", s.paper)) if on]
    out.append({"name": name, "split": s.split, "dataset": s.dataset,
                "params": s.num_params, "steps": s.num_steps, "flags": flags,
                "description": s.description})
  return out


def _table(items: list[dict]) -> str:
  header = ("name", "split", "dataset", "params", "steps", "flags", "description")
  cells = [[str(r[h]) if h != "flags" else ",".join(r[h]) for h in header] for r in items]
  widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h)
            for i, h in enumerate(header)]
  fmt = lambda row: "  ".join(c.ljust(w) for c, w in zip(row, widths[:-1])) + "  " + row[-1]
  return "\n".join([fmt(list(header))] + [fmt(c) for c in cells])


def run(args: argparse.Namespace) -> int:
  from lopt.cli import UsageError
  from lopt import tasks
  if args.families:
    for name in tasks.FAMILIES:
      fast = " (meta-training throughput benchmark)" if name in tasks.FAST_MLP_FAMILIES else ""
      out(to_json({"family": name}) if args.json else f"{name}{fast}")
    return 0
  if args.split is not None and args.split not in tasks.SUITE_SPLITS:
    raise UsageError(f"unknown split {args.split!r}; valid: {', '.join(tasks.SUITE_SPLITS)}")
  items = rows(args.split, args.demo, args.paper)
  if args.json:
    for r in items:
      emit_json(r)
  else:
    out(_table(items))
  return 0
