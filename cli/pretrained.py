"""`lopt pretrained [list]` / `show NAME` / `add NAME FILE`: every known learned optimizer and
nowcaster, where its weights are on this machine, and installing an official file."""

from __future__ import annotations

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


def _learned_opts():
  import lopt.learned_opts as lo  # here, not at the top: it loads JAX, and `lopt -h` should not
  return lo


def _size(n: int | None) -> str:
  if n is None:
    return "-"
  return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.0f} kB"


def _list(args) -> int:
  del args
  lo = _learned_opts()
  rows = [("NAME", "KIND", "SIZE", "AVAILABLE")]
  for ci in lo.weights():  # learned optimizers, then nowcasters (official and lopt's own)
    found = lo.find_local(ci.name)
    if found is None and ci.url is None:
      continue  # a bundled-only checkpoint that this build does not include
    where = f"{found[0]}: {found[1]}" if found else "download on first use"
    kind = (f"optimizer ({ci.architecture})" if ci.kind == "optimizer"
            else "nowcaster (official)" if ci.url else "nowcaster (lopt)")
    rows.append((ci.name, kind, _size(ci.size), where))
  widths = [max(len(r[i]) for r in rows) for i in range(3)]
  for r in rows:
    out("  ".join(c.ljust(w) for c, w in zip(r[:3], widths)) + "  " + r[3])
  return 0


def _show(args) -> int:
  lo = _learned_opts()
  try:
    ci = lo.weights_info(args.name)
  except KeyError:
    known = [ci.name for ci in lo.weights()]
    raise UsageError(f"unknown pretrained checkpoint {args.name!r}; known: "
                     f"{', '.join(known)}") from None
  info = ci.to_json()
  found = lo.find_local(ci.name)
  info["local_path"] = str(found[1]) if found else None
  info["found_in"] = found[0] if found else None
  emit_json(info, indent=1)
  return 0


def _add(args) -> int:
  import os
  lo = _learned_opts()
  if not os.path.isfile(args.file):
    raise UsageError(f"{args.file}: no such file")
  try:
    dest = lo.add_weights(args.name, args.file)
  except KeyError:
    raise UsageError(f"unknown pretrained checkpoint {args.name!r}; known: "
                     f"{', '.join(ci.name for ci in lo.weights())}") from None
  except (lo.CheckpointIntegrityError, FileNotFoundError) as e:
    raise UsageError(str(e)) from None
  emit_json({"name": args.name, "installed": str(dest)})
  return 0
