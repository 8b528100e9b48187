"""`lopt pretrained [list]` / `show NAME` / `add NAME FILE`: every known learned optimizer and
nowcaster, where its weights are on this machine, and installing an official file."""

from __future__ import annotations

import importlib

from lopt.cli import UsageError
from lopt.cli._io import emit_json, out


def register(subparsers) -> None:
  p = subparsers.add_parser(
      "pretrained", help="list known learned optimizers and nowcasters, show one, add a file",
      description="Known learned-optimizer and nowcaster checkpoints and where they are on "
                  "this machine (explicit path, $LOPT_CHECKPOINT_DIR, user cache, bundled).")
  p.set_defaults(func=_list)
  sub = p.add_subparsers(dest="pretrained_command", metavar="{list,show,add}")
  sub.add_parser("list", help="table of checkpoints (the default)").set_defaults(func=_list)
  show = sub.add_parser("show", help="one checkpoint's registry entry and location, as JSON")
  show.add_argument("name", help="a name from `lopt pretrained list`")
  show.set_defaults(func=_show)
  add = sub.add_parser("add", help="check an official file's sha256 and copy it into the "
                       "user cache, where every command finds it offline")
  add.add_argument("name", help="celo, celo-adam, velo, nino, wnnp or wnnp_h32")
  add.add_argument("file", help="the downloaded file, e.g. celo_theta.state or nino_mlp.pt")
  add.set_defaults(func=_add)


def _registry():
  # The module, not the same-named function that `lopt.learned_opts` exports.
  return importlib.import_module("lopt.learned_opts.pretrained")


def _nowcasters():
  return importlib.import_module("lopt.learned_opts.nino.nowcaster")


def _size(n: int | None) -> str:
  if n is None:
    return "-"
  return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.0f} kB"


def _nowcaster_rows() -> list[tuple[str, str, str, str]]:
  """Official NiNo / WNN+ files and the nowcasters shipped with lopt."""
  nc = _nowcasters()
  nowcast = importlib.import_module("lopt.learned_opts.nino.nowcast")
  rows = []
  for name, (file, _, size) in sorted(nc.OFFICIAL.items()):
    found = next((r / file for r in nc._search_roots() if (r / file).is_file()), None)
    rows.append((name, "nowcaster (official)", _size(size),
                 f"{'found' if found else 'download on first use'}"
                 + (f": {found}" if found else "")))
  for name in sorted(nowcast.SHIPPED):
    path = nowcast.shipped_dir() / name
    rows.append((name, "nowcaster (lopt)", "-",
                 f"bundled: {path}" if path.is_dir() else "missing from this install"))
  return rows


def _list(args) -> int:
  del args
  pt = _registry()
  rows = [("NAME", "KIND", "SIZE", "AVAILABLE")]
  for name, ci in sorted(pt.PRETRAINED.items()):
    found = pt.find_local(name)
    if found is None and ci.url is None:
      continue  # a bundled-only checkpoint that this build does not include
    where = f"{found[0]}: {found[1]}" if found else "download on first use"
    rows.append((name, f"optimizer ({ci.architecture})", _size(ci.size), where))
  rows += _nowcaster_rows()
  widths = [max(len(r[i]) for r in rows) for i in range(3)]
  for r in rows:
    out("  ".join(c.ljust(w) for c, w in zip(r[:3], widths)) + "  " + r[3])
  return 0


def _show(args) -> int:
  pt, nc = _registry(), _nowcasters()
  try:
    ci = pt.info(args.name)
  except KeyError:
    ci = None
  if ci is None:
    key = nc._ALIASES.get(args.name, args.name)
    if key in nc.OFFICIAL:
      file, sha, size = nc.OFFICIAL[key]
      found = next((r / file for r in nc._search_roots() if (r / file).is_file()), None)
      emit_json({"name": key, "kind": "nowcaster", "filename": file, "sha256": sha,
                 "size": size, "url": nc._URL + file,
                 "local_path": str(found) if found else None}, indent=1)
      return 0
    nowcast = importlib.import_module("lopt.learned_opts.nino.nowcast")
    if args.name in nowcast.SHIPPED:
      emit_json({"name": args.name, "kind": "nowcaster", "description":
                 nowcast.SHIPPED[args.name],
                 "local_path": str(nowcast.shipped_dir() / args.name)}, indent=1)
      return 0
    known = sorted(pt.PRETRAINED) + sorted(nc.OFFICIAL) + sorted(nowcast.SHIPPED)
    raise UsageError(f"unknown pretrained checkpoint {args.name!r}; known: {', '.join(known)}")
  info = ci.to_json()
  found = pt.find_local(ci.name)
  info["local_path"] = str(found[1]) if found else None
  info["found_in"] = found[0] if found else None
  emit_json(info, indent=1)
  return 0


def _add(args) -> int:
  import os
  pt, nc = _registry(), _nowcasters()
  if not os.path.isfile(args.file):
    raise UsageError(f"{args.file}: no such file")
  try:
    if nc._ALIASES.get(args.name, args.name) in nc.OFFICIAL:
      dest = nc.add_official(args.name, args.file)
    else:
      dest = pt.add(args.name, args.file)
  except KeyError:
    raise UsageError(f"unknown pretrained checkpoint {args.name!r}; known: "
                     f"{', '.join(sorted(pt.PRETRAINED) + sorted(nc.OFFICIAL))}") from None
  except (pt.CheckpointIntegrityError, FileNotFoundError) as e:
    raise UsageError(str(e)) from None
  emit_json({"name": args.name, "installed": str(dest)})
  return 0
