"""`lopt datasets`: list the datasets; `lopt datasets prepare NAME`: build one into the data dir."""

from __future__ import annotations

import argparse

from lopt.cli import UsageError
from lopt.cli._io import out


def register(subparsers) -> None:
  p = subparsers.add_parser(
      "datasets", help="list datasets (sizes, shapes, offline availability) or prepare one",
      description="List lopt's datasets, or prepare one into the data dir "
                  "($LOPT_DATA_DIR, default ~/.cache/lopt/tfds).")
  p.add_argument("--data-dir", default=None, help="prepared-data folder (default: "
                 "$LOPT_DATA_DIR or ~/.cache/lopt/tfds)")
  p.set_defaults(func=_list)
  sub = p.add_subparsers(dest="datasets_command", metavar="{list,prepare}")
  ls = sub.add_parser("list", help="list datasets (the default)")
  ls.set_defaults(func=_list)
  prep = sub.add_parser("prepare", help="build a dataset into the data dir (once)")
  prep.add_argument("name", help="a dataset name from `lopt datasets`")
  prep.add_argument("--manual-dir", default=None, help="fashion_mnist: folder with the IDX "
                    ".gz files (default: $LOPT_FASHION_MNIST_DIR or "
                    "/usr/share/datasets/fashion-mnist)")
  prep.set_defaults(func=_prepare)
  for q in (ls, prep):
    q.add_argument("--data-dir", default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def _availability(info, data_dir) -> str:
  from lopt.tasks import datasets
  if datasets.is_prepared(info.name, data_dir=data_dir):
    return "prepared"
  if info.name == "fashion_mnist":
    try:
      datasets.check_fashion_mnist_dir()
      return f"offline (files in {datasets.fashion_mnist_dir()})"
    except datasets.DatasetUnavailableError:
      return f"needs IDX files (none in {datasets.fashion_mnist_dir()})"
  if info.offline:
    return "offline (embedded)"
  return "needs internet + TF"


def _list(args) -> int:
  from lopt.tasks import datasets
  rows = [("NAME", "KIND", "SHAPE", "CLASSES", "TRAIN/VALID/TEST", "AVAILABILITY")]
  for name, info in datasets.DATASETS.items():
    shape = "bytes" if info.kind == "text" else "x".join(map(str, info.shape))
    classes = str(info.num_classes or info.vocab_size)
    unit = " bytes" if info.kind == "text" else ""
    sizes = ("/".join(f"{info.splits[s]:,}" for s in datasets.SPLITS) + unit
             if info.splits else "-")
    if name == "pycode":
      sizes = "<=" + sizes
    rows.append((name, info.kind, shape, classes, sizes, _availability(info, args.data_dir)))
  widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
  for r in rows:
    out("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
  out(f"\ndata dir: {datasets.resolve_data_dir(args.data_dir)}")
  return 0


def _prepare(args) -> int:
  from lopt.tasks import datasets
  try:
    builder = datasets.prepare(args.name, data_dir=args.data_dir, manual_dir=args.manual_dir)
  except datasets.UnknownDatasetError as e:
    raise UsageError(str(e)) from None
  except datasets.DatasetUnavailableError as e:  # missing files or no internet: input
    raise UsageError(str(e)) from None
  sizes = {s: v.num_examples for s, v in builder.info.splits.items()}
  out(f"{args.name}: prepared in {builder.data_path} ({sizes})")
  return 0
