"""`lopt pretrained list` / `lopt pretrained show NAME`: the known learned-optimizer checkpoints."""

from __future__ import annotations

import importlib

from lopt.cli import UsageError
from lopt.cli._io import emit_json, out


def register(subparsers) -> None:
  p = subparsers.add_parser(
      "pretrained", help="list known pretrained learned optimizers, or show one as JSON",
      description="Known learned-optimizer checkpoints and where they are on this machine "
                  "(explicit path, $LOPT_CHECKPOINT_DIR, user cache, bundled).")
  p.set_defaults(func=_list)
  sub = p.add_subparsers(dest="pretrained_command", metavar="{list,show}")
  sub.add_parser("list", help="table of checkpoints (the default)").set_defaults(func=_list)
  show = sub.add_parser("show", help="one checkpoint's registry entry and location, as JSON")
  show.add_argument("name", help="a name from `lopt pretrained list`")
  show.set_defaults(func=_show)


def _registry():
  # The module, not the same-named function that `lopt.learned_opts` exports.
  return importlib.import_module("lopt.learned_opts.pretrained")


def _size(n: int | None) -> str:
  if n is None:
    return "-"
  return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.0f} kB"


def _list(args) -> int:
  del args
  pt = _registry()
  rows = [("NAME", "ARCHITECTURE", "SIZE", "AVAILABLE")]
  for name, ci in sorted(pt.PRETRAINED.items()):
    found = pt.find_local(name)
    if found is None and ci.url is None:
      continue  # a bundled-only checkpoint that this build does not include
    where = f"{found[0]}: {found[1]}" if found else "download on first use"
    rows.append((name, ci.architecture, _size(ci.size), where))
  widths = [max(len(r[i]) for r in rows) for i in range(3)]
  for r in rows:
    out("  ".join(c.ljust(w) for c, w in zip(r[:3], widths)) + "  " + r[3])
  return 0


def _show(args) -> int:
  pt = _registry()
  try:
    ci = pt.info(args.name)
  except KeyError as e:
    raise UsageError(f"unknown pretrained checkpoint {args.name!r}; known: "
                     f"{', '.join(sorted(pt.PRETRAINED))}") from e
  out = ci.to_json()
  found = pt.find_local(ci.name)
  out["local_path"] = str(found[1]) if found else None
  out["found_in"] = found[0] if found else None
  emit_json(out, indent=1)
  return 0
