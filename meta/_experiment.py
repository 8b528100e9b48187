"""`meta_train(cfg, workdir)`: the whole experiment behind `lopt meta-train`.

Writes into `workdir`, through `lopt.rundir` (the resume rule every loop shares):
`config.json` (the resolved config; a rerun with a different config is refused),
`metrics.jsonl`, `eval.jsonl`, `checkpoints/<step>/` (orbax, keep N) and, at the end,
`theta/` (`lopt.learned_opts.save_theta`: loadable with `load_optimizer`).
Rerunning the same command resumes from the latest checkpoint.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import jax

from lopt import rundir
from lopt.learned_opts import UnknownOptimizerError, save_theta, save_theta_msgpack
from lopt.meta._config import ConfigError, build_eval_fn, build_trainer
from lopt.meta._checkpoint import SMALL_STATE, save_small
from lopt.meta._train import run
from lopt.rundir import Checkpointer, settings, to_host

__all__ = ["meta_train", "export_theta", "export_small", "stopping_point",
           "enable_compile_cache", "default_cache_dir", "WorkdirMismatchError"]


def default_cache_dir() -> pathlib.Path:
  """`$LOPT_CACHE_DIR/jax`, else `~/.cache/lopt/jax` (`lopt.rundir.settings`)."""
  return settings.compile_cache_dir()


def enable_compile_cache(folder: str | pathlib.Path | None = None) -> None:
  """Turns on JAX's persistent compilation cache (unless one is configured already): a
  rerun or resume of the same config skips the compile that dominates its first step."""
  rundir.enable_compile_cache(folder, min_compile_time_s=1.0)


class WorkdirMismatchError(ConfigError, rundir.RunDirMismatchError):
  """`workdir` holds a run with another config (a `ConfigError` for `lopt meta-train`)."""


def meta_train(cfg: dict, workdir: str | pathlib.Path, *, progress: bool = True,
               stop_after: int | None = None, devices=None, resume: bool = False
               ) -> dict[str, Any]:
  """Runs (or resumes) the experiment `cfg` in `workdir`; returns a summary dict.

  `resume=True` insists on continuing: `workdir` must hold this config and a checkpoint or
  a small resume state (`small_state.npz`, e.g. a committed stopping point copied there).
  """
  workdir = pathlib.Path(workdir)
  primary = jax.process_index() == 0
  if resume and not ((workdir / "config.json").exists() and (
      (workdir / SMALL_STATE).exists() or any((workdir / "checkpoints").glob("[0-9]*")))):
    raise ConfigError(f"--resume: {workdir} holds no run to continue (it needs config.json "
                      f"and a checkpoint or {SMALL_STATE}); drop --resume to start one")
  run_dir = rundir.RunDir(workdir)
  if primary:
    run_dir.check(cfg, error=WorkdirMismatchError)
  trainer = build_trainer(cfg, devices=devices)  # invalid configs fail here, nothing written
  if primary:
    run_dir.claim(cfg, error=WorkdirMismatchError)
  state = run(trainer, workdir, num_steps=int(cfg["num_steps"]), seed=int(cfg["seed"]),
              checkpoint_every=int(cfg["checkpoint_every"]), keep=int(cfg["keep"]),
              log_every=int(cfg["log_every"]), eval_every=int((cfg.get("eval") or {})
                                                               .get("every", 0)),
              eval_fn=build_eval_fn(cfg, trainer.lopt), progress=progress,
              stop_after=stop_after)
  theta = to_host(state.theta)
  step = int(to_host(state.step))
  summary = {"step": step, "skipped": int(to_host(state.skipped)), "workdir": str(workdir)}
  if jax.process_index() == 0 and step >= int(cfg["num_steps"]):
    try:
      save_theta(workdir / "theta", trainer.lopt, theta, overwrite=True,
                 extra_meta={"outer_step": step, "config": cfg.get("name", "")})
      summary["theta"] = str(workdir / "theta")
    except UnknownOptimizerError:  # a test stand-in outside the registry: bare msgpack
      save_theta_msgpack(workdir / "theta.msgpack", theta, step=step)
      summary["theta"] = str(workdir / "theta.msgpack")
  return summary


def _restore(workdir: pathlib.Path, step: int | None):
  """`(config, trainer, host state)` of a run's checkpoint (latest by default)."""
  cfg = json.loads((workdir / "config.json").read_text())
  trainer = build_trainer(cfg, devices=jax.devices()[:1])
  ckpt = Checkpointer(workdir / "checkpoints")
  step = ckpt.latest_step() if step is None else step
  if step is None:
    raise ConfigError(f"{workdir} has no checkpoint yet")
  template = jax.eval_shape(trainer._init, trainer.estimators, jax.random.PRNGKey(0))
  state = ckpt.restore(step, template)
  ckpt.close()
  return cfg, trainer, state


def export_theta(workdir: str | pathlib.Path, out: str | pathlib.Path, *,
                 step: int | None = None) -> pathlib.Path:
  """Writes theta of a run's checkpoint (latest by default) with `save_theta`.

  Useful when a run was stopped before `num_steps` (e.g. by a time limit).
  """
  cfg, trainer, state = _restore(pathlib.Path(workdir), step)
  return save_theta(out, trainer.lopt, state.theta, overwrite=True,
                    extra_meta={"outer_step": int(state.step), "config": cfg.get("name", ""),
                                "skipped": int(state.skipped)})


def export_small(workdir: str | pathlib.Path, *, step: int | None = None) -> pathlib.Path:
  """Writes `workdir/small_state.npz` from a full checkpoint (latest by default), for runs
  whose checkpoints predate the small state."""
  workdir = pathlib.Path(workdir)
  save_small(workdir / SMALL_STATE, _restore(workdir, step)[2])
  return workdir / SMALL_STATE


def stopping_point(workdir: str | pathlib.Path, out: str | pathlib.Path) -> pathlib.Path:
  """Copies what a later session needs to continue the run in `workdir` into `out` (to be
  committed): `config.json`, `small_state.npz` and `metrics.jsonl`. Continue with

      mkdir -p runs/NAME && cp OUT/* runs/NAME/
      lopt meta-train --config CONFIG --workdir runs/NAME --resume
  """
  import shutil
  workdir, out = pathlib.Path(workdir), pathlib.Path(out)
  if not (workdir / SMALL_STATE).exists():
    export_small(workdir)
  out.mkdir(parents=True, exist_ok=True)
  for name in ("config.json", SMALL_STATE, "metrics.jsonl"):
    if (workdir / name).exists():
      shutil.copy2(workdir / name, out / name)
  return out
