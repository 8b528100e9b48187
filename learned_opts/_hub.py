"""The weights hub: every known learned-optimizer theta and nowcaster, found or downloaded.

One row type (`CheckpointInfo`) in two tables, `PRETRAINED` (learned optimizers, keyed by
the name `lo.pretrained` takes) and `NOWCASTERS` (the official NiNo / WNN+ files), looked up
together through `WEIGHTS`; both share one search order, one offline switch and one
download-verify-replace routine. `pretrained("celo")` returns `(lopt, theta)`;
`nino.load_nowcaster("wnnp")` reads its file through `resolve_checkpoint` too.

Where a file is looked for, in order:

1. an explicit `path=` (a file or a checkpoint directory);
2. `$LOPT_CHECKPOINT_DIR/<home>/<filename>`, or the file under the name it is distributed
   as (e.g. `$LOPT_CHECKPOINT_DIR/celo/celo_theta.state`, see `CheckpointInfo.alt_paths`);
   `<home>` is the entry's name for learned optimizers and `nino` for nowcasters;
3. the user cache `${XDG_CACHE_HOME:-~/.cache}/lopt/checkpoints/<home>/<filename>`
   (`lopt pretrained add NAME FILE` puts a file there after checking it);
4. package data `lopt/learned_opts/checkpoints/<home>/` (bundled with lopt);
5. a download of the official URL into the user cache, when online and unless
   `LOPT_OFFLINE=1`; the file is verified (sha256, or size where no hash is published) and
   moved into place atomically.

Wherever a file comes from, when its entry has a published sha256 (or size) the file
is verified, and a mismatch raises `CheckpointIntegrityError`: a corrupted download or a
few flipped bytes would otherwise train silently to a different result. Your own
meta-trained theta of the same architecture is not the published file: load it with
`verify=False` (`--no-verify` in the CLI, or `LOPT_NO_VERIFY=1`), or by architecture name
(`lo.load("celo", ...)` vs `lo.load_optimizer(path, architecture="celo")`).

Offline, `CheckpointUnavailableError` says where to put the file.

To register new published weights, add a `CheckpointInfo` row to `PRETRAINED` (a learned
optimizer: `architecture` is a name from `registry.ARCHITECTURES`) or to `NOWCASTERS`
(`kind="nowcaster"`, `home="nino"`, a `.pt` file in the reference format).

Example:
  >>> from lopt.learned_opts import PRETRAINED, weights
  >>> sorted(PRETRAINED)[:2]
  ['celo', 'celo-adam']
  >>> [(ci.name, ci.kind) for ci in weights() if ci.name in ("celo", "wnnp")]
  [('celo', 'optimizer'), ('wnnp', 'nowcaster')]
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import importlib.resources
import os
import pathlib
import shutil
import urllib.error
import urllib.request
from typing import Any

from lopt.learned_opts import checkpoint_io
from lopt import rundir
from lopt.rundir import settings

__all__ = ["CheckpointInfo", "PRETRAINED", "NOWCASTERS", "WEIGHTS", "weights",
           "CheckpointUnavailableError", "CheckpointIntegrityError", "pretrained",
           "resolve_checkpoint", "find_local", "cache_dir", "bundled_dir", "info", "available",
           "add", "verify_file", "verification_on", "offline"]

DOWNLOAD_TIMEOUT_S = 15.0


class CheckpointUnavailableError(FileNotFoundError):
  """The checkpoint is not on this machine and could not be downloaded."""


class CheckpointIntegrityError(ValueError):
  """A checkpoint file does not have the published size or sha256."""


@dataclasses.dataclass(frozen=True)
class CheckpointInfo:
  """One known set of weights. `filename` is "" when they are a directory (orbax)."""

  name: str
  architecture: str
  hparams: dict[str, Any]
  filename: str
  format: str                # "velo" | "celo" | "orbax"
  sha256: str | None
  size: int | None
  url: str | None
  licence: str
  description: str
  alt_paths: tuple[str, ...] = ()  # other places under a root, as the file is distributed
  kind: str = "optimizer"          # "optimizer" (a theta) | "nowcaster"
  home: str = ""                   # the folder under each root ("": `name`)
  aliases: tuple[str, ...] = ()    # other names accepted by `info`

  def to_json(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


_CELO_RAW = "https://raw.githubusercontent.com/amoudgl/celo/main/algoperf/submissions"

PRETRAINED: dict[str, CheckpointInfo] = {
    "celo": CheckpointInfo(
        name="celo", architecture="celo", hparams={}, filename="theta.state", format="celo",
        sha256="35683c6123069c101d62ec1f8b2e6d70d50a43e67ebe09953b27620a7dcb836b",
        size=149_216, url=f"{_CELO_RAW}/celo/theta.state", licence="MIT (amoudgl/celo)",
        description="Celo (Moudgil et al., TMLR 2025): learned MLP update + learned LSTM "
                    "scheduler, 37,089 meta-parameters; the AlgoPerf submission theta.",
        alt_paths=("celo/celo_theta.state", "celo_theta.state")),
    "celo-adam": CheckpointInfo(
        name="celo-adam", architecture="celo_adam", hparams={}, filename="theta.state",
        format="celo",
        sha256="99c65fa0218a739c32eac4e8a99523b6fed92e2926d0c5d64e83835637b75d38",
        size=147_803, url=f"{_CELO_RAW}/celo_adam/theta.state", licence="MIT (amoudgl/celo)",
        description="Celo-Adam: Adam update with Celo's learned LSTM scheduler, 36,865 "
                    "meta-parameters.",
        alt_paths=("celo-adam/celo_adam_theta.state", "celo/celo_adam_theta.state",
                   "celo_adam_theta.state"), aliases=("celo_adam",)),
    "velo": CheckpointInfo(
        name="velo", architecture="velo",
        hparams={"lstm_hidden_size": 512, "param_inits": 256},
        filename="params", format="velo", sha256=None, size=9_282_564,
        url="https://storage.googleapis.com/gresearch/learned_optimization/pretrained_lopts/"
            "aug12_continue_on_bigger_2xbs_200kstep_bigproblem_v2_5620/params",
        licence="Apache-2.0 (google/learned_optimization)",
        description="VeLO (Metz et al. 2022, arXiv 2211.09760): HyperV2 with a 512-unit "
                    "per-tensor LSTM over 256 banked MLPs, 2,320,385 meta-parameters. No "
                    "sha256 is published; the download is verified by its size only."),
    "lopt-fc-v1": CheckpointInfo(
        name="lopt-fc-v1", architecture="adafac_mlp", hparams={}, filename="", format="orbax",
        sha256=None, size=None, url=None, licence="Apache-2.0 (lopt)",
        description="lopt's own small per-parameter MLP optimizer, meta-trained with lopt "
                    "(bundled when released; its lopt.json gives the architecture).",
        aliases=("lopt_fc_v1",)),
    "lopt-fc-v2": CheckpointInfo(
        name="lopt-fc-v2", architecture="adafac_mlp", hparams={}, filename="", format="orbax",
        sha256=None, size=None, url=None, licence="Apache-2.0 (lopt)",
        description="lopt-fc-v1 meta-trained 11,750 more outer steps with the same recipe "
                    "(configs/lopt_fc_v2.py): lower training loss, bundled.",
        aliases=("lopt_fc_v2",)),
    "lopt-v3": CheckpointInfo(
        name="lopt-v3", architecture="celo_adam", hparams={}, filename="", format="orbax",
        sha256=None, size=None, url=None,
        licence="MIT (warm start: amoudgl/celo Celo-Adam weights; notice in LICENSE-celo) "
                "and Apache-2.0 (lopt)",
        description="Celo-Adam's learned scheduler warm-started from the official weights and "
                    "meta-trained by lopt for validation loss (outer_valid) on a broad, "
                    "held-out-disjoint task distribution (configs/lopt_v3.py); needs "
                    "num_steps. Model card: learned_opts/checkpoints/lopt-v3/MODEL_CARD.md.",
        aliases=("lopt_v3",)),
}

_NINO_RAW = "https://github.com/SamsungSAILMontreal/nino/raw/main/checkpoints"


def _official_nowcaster(name: str, filename: str, sha256: str, size: int, aliases: tuple,
                        description: str) -> CheckpointInfo:
  return CheckpointInfo(
      name=name, architecture="nino" if name == "nino" else "wnn", hparams={},
      filename=filename, format="torch", sha256=sha256, size=size,
      url=f"{_NINO_RAW}/{filename}", licence="MIT (SamsungSAILMontreal/nino)",
      description=description, kind="nowcaster", home="nino", aliases=aliases)


NOWCASTERS: dict[str, CheckpointInfo] = {
    "nino": _official_nowcaster(
        "nino", "nino_no_posw.pt",
        "2e2186e4a0e50193080eb9074648786ef25cd5ac3149a7df790127fe41101620", 2_215_116,
        ("nino_no_posw",), "NiNo (Knyazev et al. 2025): the GNN nowcaster without token-id "
        "embeddings."),
    "wnnp": _official_nowcaster(
        "wnnp", "nino_mlp.pt",
        "34d9ff3703274fa07615e27937dac8ea07f375ed95b5bde6d39abd8c41c06f52", 233_551,
        ("nino_mlp", "wnn", "wnn+"), "WNN+ (hidden 128): a per-parameter MLP nowcaster."),
    "wnnp_h32": _official_nowcaster(
        "wnnp_h32", "nino_mlp_h32.pt",
        "389e4d51e79a72bb9d780812504c98146073cc2a96da38be3b72d8abe0b6fd7d", 24_580,
        ("nino_mlp_h32", "wnn_h32"), "WNN+ (hidden 32)."),
    # Fitted and shipped by lopt (`lopt nowcast fit`), bundled like lopt-fc-v2.
    "wnnp_lopt": CheckpointInfo(
        name="wnnp_lopt", architecture="wnn", hparams={}, filename="", format="orbax",
        sha256=None, size=None, url=None, licence="Apache-2.0 (lopt)",
        description="WNN+ h32 fitted by lopt on Adam trajectories of digits / MNIST-1D MLPs "
                    "and convnets (configs/nowcast_wnnp.py), bundled.", kind="nowcaster"),
    "nino_lopt": CheckpointInfo(
        name="nino_lopt", architecture="nino", hparams={}, filename="", format="orbax",
        sha256=None, size=None, url=None, licence="Apache-2.0 (lopt)",
        description="NiNo h32 fitted by lopt on the same trajectories (configs/nowcast_nino.py), "
                    "bundled.", kind="nowcaster"),
}

# Every known entry, learned optimizers first; a live view, so a row added to either table
# (or patched in a test) is seen everywhere.
WEIGHTS = collections.ChainMap(PRETRAINED, NOWCASTERS)


def weights(kind: str | None = None) -> list[CheckpointInfo]:
  """Every known entry of both tables (or those of one `kind`), sorted by kind then name."""
  return [ci for _, ci in sorted(((ci.kind != "optimizer", n), ci) for n, ci in WEIGHTS.items())
          if kind is None or ci.kind == kind]


def _canonical(name: str, kind: str | None) -> str | None:
  for key, ci in WEIGHTS.items():
    if (kind is None or ci.kind == kind) and (name == key or name in ci.aliases):
      return key
  return None


def info(name: str, *, kind: str | None = None) -> CheckpointInfo:
  """The entry for `name` or one of its aliases (`celo_adam` for `celo-adam`, `nino_mlp` for
  `wnnp`); `kind` ("optimizer" | "nowcaster") restricts the search."""
  key = _canonical(name, kind)
  if key is None:
    table = NOWCASTERS if kind == "nowcaster" else PRETRAINED if kind else WEIGHTS
    what = "nowcaster" if kind == "nowcaster" else "pretrained checkpoint"
    aliases = sorted(a for ci in table.values() for a in ci.aliases)
    raise KeyError(f"unknown {what} {name!r}; known: {', '.join(sorted(table))}"
                   + (f" (aliases {', '.join(aliases)})" if kind == "nowcaster" else ""))
  return WEIGHTS[key]


def cache_dir() -> pathlib.Path:
  """`${XDG_CACHE_HOME:-~/.cache}/lopt/checkpoints`."""
  root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return pathlib.Path(root) / "lopt" / "checkpoints"


def bundled_dir() -> pathlib.Path:
  """The package-data folder `lopt/learned_opts/checkpoints`."""
  return pathlib.Path(str(importlib.resources.files("lopt.learned_opts") / "checkpoints"))


def _target(root: pathlib.Path, ci: CheckpointInfo) -> pathlib.Path:
  home = root / (ci.home or ci.name)
  return home / ci.filename if ci.filename else home


def offline() -> bool:
  """Whether `$LOPT_OFFLINE` forbids downloads."""
  return settings.offline()


def _present(path: pathlib.Path, ci: CheckpointInfo) -> bool:
  if ci.format == "orbax":
    return (path / checkpoint_io.LOPT_JSON).is_file()
  return path.is_file()


def _sha256(path: pathlib.Path) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def verification_on(verify: bool | None = None) -> bool:
  """`verify`, or (None) on unless `$LOPT_NO_VERIFY` is set (what `--no-verify` sets)."""
  return settings.verify_weights(verify)


def verify_file(path: pathlib.Path, ci: CheckpointInfo, *, hint: str = "") -> None:
  """Checks the published size and sha256 of a single-file checkpoint."""
  if ci.format == "orbax" or path.is_dir():
    return
  size = path.stat().st_size
  if ci.size is not None and size != ci.size:
    raise CheckpointIntegrityError(
        f"{path}: {size:,} bytes, but {ci.name!r} is {ci.size:,} bytes (a partial download or "
        f"another file?). Delete it and fetch it again from {ci.url}{hint}")
  if ci.sha256 is not None:
    digest = _sha256(path)
    if digest != ci.sha256:
      raise CheckpointIntegrityError(
          f"{path}: sha256 {digest}, but {ci.name!r} has sha256 {ci.sha256}. Delete it and "
          f"fetch it again from {ci.url}{hint}")


def _search_roots() -> list[tuple[str, pathlib.Path]]:
  roots = []
  env = settings.checkpoint_dir()
  if env is not None:
    roots.append(("$LOPT_CHECKPOINT_DIR", env))
  roots.append(("user cache", cache_dir()))
  roots.append(("bundled", bundled_dir()))
  return roots


def find_local(name: str, *, kind: str | None = None) -> tuple[str, pathlib.Path] | None:
  """`(where, path)` of the first local copy of `name` (no download, no hash check)."""
  ci = info(name, kind=kind)
  for where, root in _search_roots():
    for path in [_target(root, ci)] + [root / alt for alt in ci.alt_paths]:
      if _present(path, ci):
        return where, path
  return None


def available(name: str, *, kind: str | None = None) -> bool:
  return find_local(name, kind=kind) is not None


def _where_to_put(ci: CheckpointInfo) -> str:
  env = settings.checkpoint_dir()
  places = [str(_target(cache_dir(), ci))]
  if env is not None:
    places.insert(0, str(_target(env, ci)))
  else:
    places.append(f"$LOPT_CHECKPOINT_DIR/{ci.home or ci.name}/{ci.filename}".rstrip("/"))
  return " or ".join(places)


def _install_hint(ci: CheckpointInfo) -> str:
  names = ", ".join(dict.fromkeys([ci.filename, *(pathlib.Path(a).name for a in ci.alt_paths)]))
  return (f"`lopt pretrained add {ci.name} FILE` (hash-checked; FILE as distributed: {names}),"
          f" or put it at {_where_to_put(ci)}")


def _download(ci: CheckpointInfo, dest: pathlib.Path) -> pathlib.Path:
  with rundir.atomic_path(dest) as tmp:  # verified before it takes the final name
    with open(tmp, "wb") as out, urllib.request.urlopen(
        ci.url, timeout=DOWNLOAD_TIMEOUT_S) as resp:
      shutil.copyfileobj(resp, out, 1 << 20)
    verify_file(tmp, ci)
  return dest


def add(name: str, file: str | os.PathLike, *, kind: str | None = None) -> pathlib.Path:
  """Copies an official weights file into the user cache after checking its hash.

  Example: `add("celo", "../shared/pretrained/celo/celo_theta.state")`; from then on
  `pretrained("celo")` finds it offline (likewise `add("wnnp", "nino_mlp.pt")` for
  `load_nowcaster("wnnp")`). Raises CheckpointIntegrityError on a mismatch.
  """
  ci = info(name, kind=kind)
  src = pathlib.Path(file).expanduser()
  if ci.format == "orbax" or not src.is_file():
    raise FileNotFoundError(f"{src}: not a file" if ci.format != "orbax" else
                            f"{ci.name!r} is bundled with lopt; nothing to add")
  if ci.sha256 is None and ci.size is None:
    raise CheckpointIntegrityError(f"{ci.name!r} has no published hash or size to check")
  verify_file(src, ci)
  dest = _target(cache_dir(), ci)
  with rundir.atomic_path(dest) as tmp:
    shutil.copyfile(src, tmp)
  return dest


_OWN_FILE_HINT = (" (if this is your own theta for this architecture, pass --no-verify or "
                  "verify=False)")


def resolve_checkpoint(name: str, path: str | os.PathLike | None = None, *,
                       download: bool = True, verify: bool | None = None,
                       kind: str | None = None) -> pathlib.Path:
  """The local path of checkpoint `name`, downloading it if needed (see the module doc).

  Raises:
    KeyError: unknown name. FileNotFoundError: an explicit `path` that does not exist.
    CheckpointIntegrityError: a local or downloaded file with the wrong size/hash.
    CheckpointUnavailableError: not found locally and no download possible; the message
      gives the URL and the exact paths to put the file at.
  """
  ci = info(name, kind=kind)
  check = verification_on(verify)
  if path is not None:
    path = pathlib.Path(path).expanduser()
    # A nowcaster is only ever a file, so a directory means "the file inside it".
    if path.is_dir() and ci.filename and (ci.kind == "nowcaster"
                                          or (path / ci.filename).is_file()):
      path = path / ci.filename
    if not path.exists():
      raise FileNotFoundError(f"{path}: no such file or directory ({ci.kind} {ci.name!r} is "
                              f"{ci.filename or 'a directory'})")
    if check:
      verify_file(path, ci, hint=_OWN_FILE_HINT)
    return path
  found = find_local(ci.name)
  if found is not None:
    if check:
      verify_file(found[1], ci, hint=_OWN_FILE_HINT)
    return found[1]
  if ci.url is None:
    raise CheckpointUnavailableError(
        f"checkpoint {ci.name!r} is not on this machine and has no download URL (it is "
        f"bundled with lopt releases that include it). Put it at {_where_to_put(ci)}")
  if not download or offline():
    why = "LOPT_OFFLINE is set" if offline() else "download=False"
    raise CheckpointUnavailableError(
        f"checkpoint {ci.name!r} is not on this machine and {why}. Download {ci.url} and "
        f"install it with {_install_hint(ci)}")
  dest = _target(cache_dir(), ci)
  try:
    return _download(ci, dest)
  except (urllib.error.URLError, OSError, TimeoutError) as e:
    raise CheckpointUnavailableError(
        f"checkpoint {ci.name!r} could not be downloaded from {ci.url} ({e}); are you "
        f"offline? Download it elsewhere and install it with {_install_hint(ci)}") from e


def pretrained(name: str, *, path: str | os.PathLike | None = None, download: bool = True,
               verify: bool | None = None) -> tuple[Any, Any]:
  """`(lopt, theta)` for a known checkpoint, e.g. `lopt, theta = pretrained("celo")`.

  The theta is checked against the architecture's shapes; for orbax checkpoints the
  architecture and hparams come from the checkpoint's `lopt.json`.
  """
  from lopt.learned_opts import registry
  ci = info(name, kind="optimizer")
  file = resolve_checkpoint(ci.name, path, download=download, verify=verify)
  if file.is_dir() and (file / checkpoint_io.LOPT_JSON).exists():
    return checkpoint_io.load_optimizer(file)
  lopt = registry.get(ci.architecture, **ci.hparams)
  fmt = None if path is not None else ci.format
  return lopt, checkpoint_io.load_theta(file, fmt, lopt=lopt)


verify = verify_file  # the name before `resolve_checkpoint(..., verify=)` existed
