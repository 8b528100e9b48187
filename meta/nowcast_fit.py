"""Fit NiNo / WNN+ nowcasters on recorded parameter trajectories (the reference recipe).

Data (as `dataset/dataset.py` of SamsungSAILMontreal/nino): a batch is `batch_trajs`
trajectories of one architecture x `samples_per_traj` windows shifted by one state. A window
is `ctx` context states `stride` snapshots apart, followed by up to `seq_len` target states
at the same spacing (missing ones masked). Inputs and targets are z-scored per tensor with
the *context* statistics (mean, unbiased std + 1e-6), so the model predicts in normalised
space; the loss is L1 over the valid targets at every parameter (fixed-weight auxiliary
edges carry no parameter, so they are masked out by construction).

Training: AdamW (lr 3e-3, wd 1e-2) with a cosine decay to 1e-6, global-norm clipping at 5.
NaN-safe: a batch whose loss or gradients are not finite is skipped (theta and the optimizer
state are left as they were; the count is logged) and a checkpoint is only written when
theta is finite. `<out>` is a `lopt.rundir.RunDir`: its `config.json` is claimed (a folder
holding a fit of another config is refused), checkpoints (theta, optimizer state) go
through orbax into `<out>/checkpoints/` every `save_every` steps, so an interrupted fit
resumes, and `metrics.jsonl` drops the rows past the restored step; the final
nowcaster is written with `lopt.learned_opts.nino.save_nowcaster` into `<out>/nowcaster/`.

Example:
  >>> config = load_config("nowcast_wnnp", {"steps": 200})          # doctest: +SKIP
  >>> fit(config, "runs/traj", "runs/wnnp")                          # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import json
import os
import pathlib
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lopt import rundir
from lopt.learned_opts import nino
from lopt.learned_opts.nino import model as nino_model
from lopt.training import trajectories as traj_lib

__all__ = ["NoTrajectoriesError", "WindowSampler", "load_config", "fit", "normalise",
           "make_optimizer"]


class NoTrajectoriesError(ValueError):
  """The data folder holds no usable trajectory."""


def load_config(name_or_path: str, overrides: dict | None = None) -> dict:
  """`configs/<name>.py` (or a .py path) `get_config()`, with `overrides` applied.

  Unknown override keys raise ValueError (they would otherwise be silently ignored).
  """
  if name_or_path.endswith(".py"):
    path = pathlib.Path(name_or_path)
    if not path.is_file():
      raise FileNotFoundError(f"config file {path} not found")
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
  else:
    try:
      module = importlib.import_module(f"lopt.configs.{name_or_path}")
    except ModuleNotFoundError:
      raise ValueError(f"unknown config {name_or_path!r}: use nowcast_wnnp, nowcast_nino or a "
                       ".py path") from None
  config = dict(module.get_config())
  for key, value in (overrides or {}).items():
    if key not in config:
      raise ValueError(f"unknown config key {key!r}; valid keys: {', '.join(sorted(config))}")
    config[key] = type(config[key])(value) if isinstance(config[key], (int, float)) and \
        not isinstance(config[key], bool) else value
  if config["model"] not in ("wnnp", "nino"):
    raise ValueError(f"config model must be 'wnnp' or 'nino', got {config['model']!r}")
  return config


def normalise(x: np.ndarray, offsets: np.ndarray, eps: float = 1e-6):
  """Per-tensor z-score of context states `x` [ctx, P] (tensor l = offsets[l]:offsets[l+1]).

  Returns `(z, mean[P], std[P])` with the unbiased std over all `ctx` states of the tensor;
  `z = (x - mean) / (std + eps)`.
  """
  ctx = x.shape[0]
  sizes = np.diff(offsets)
  sums = np.add.reduceat(x.sum(0), offsets[:-1]) if len(sizes) else np.zeros(0)
  means = sums / (sizes * ctx)
  mean = np.repeat(means, sizes)
  sq = np.add.reduceat(((x - mean) ** 2).sum(0), offsets[:-1])
  std = np.repeat(np.sqrt(sq / np.maximum(sizes * ctx - 1, 1)), sizes)
  return ((x - mean) / (std + eps)).astype(np.float32), mean, std


@dataclasses.dataclass
class _Group:
  """Trajectories sharing one architecture (one graph, one jit compilation)."""
  graph: Any
  trajs: list
  perm: np.ndarray   # [P] trajectory flat index of each graph-order parameter


class WindowSampler:
  """Samples normalised training windows from trajectories (numpy, host side).

  `stride` (snapshots between states) may be a list: each batch draws one, so the nowcaster
  sees several state spacings.
  """

  def __init__(self, paths, *, ctx: int, seq_len: int, stride, samples_per_traj: int,
               build_graph: Callable | None = None):
    if build_graph is None:
      build_graph = nino.build_graph
    self.strides = [int(s) for s in (stride if isinstance(stride, (list, tuple)) else [stride])]
    self.ctx, self.seq_len, self.spt = ctx, seq_len, samples_per_traj
    self.need = (ctx + min(seq_len, 2 * ctx) + samples_per_traj) * max(self.strides)
    groups: dict[str, _Group] = {}
    unsupported: dict[str, str] = {}
    self.skipped: list[str] = []
    for path in paths:
      t = traj_lib.load_trajectory(path)
      if t.states.shape[0] <= self.need:
        self.skipped.append(f"{path} ({t.states.shape[0]} snapshots <= {self.need} needed)")
        continue
      key = json.dumps([t.meta["layout"], t.meta.get("arch")], sort_keys=True)
      if key in unsupported:
        self.skipped.append(f"{path} ({unsupported[key]})")
        continue
      if key not in groups:
        try:
          graph = build_graph(t.snapshot(0), nino.graph_arch(t.meta.get("arch")))
        except (ValueError, KeyError) as e:  # e.g. an LSTM: no neural-graph description
          unsupported[key] = f"no neural graph for task {t.meta.get('task')!r}: {e}"
          self.skipped.append(f"{path} ({unsupported[key]})")
          continue
        where = {tuple(e["path"]): e for e in t.layout}
        perm = np.concatenate([
            where[(m, n)]["offset"] + np.arange(where[(m, n)]["size"])
            for m, n, _ in graph.leaves])
        groups[key] = _Group(graph=graph, trajs=[], perm=perm)
      groups[key].trajs.append(t)
    if not groups:
      raise NoTrajectoriesError(
          "no trajectory long enough to sample from: need more than "
          f"{self.need} snapshots (ctx + min(seq_len, 2 ctx) + samples_per_traj) * stride; "
          f"skipped: {self.skipped or 'none found'}")
    self.groups = list(groups.values())

  def sample(self, rng: np.random.Generator, batch_trajs: int) -> tuple[int, dict]:
    """Returns `(group index, batch)`; batch arrays are `[B, ...]` with B = trajs x windows:
    `x` [B, ctx, P] normalised context, `y` [B, seq_len, P] normalised targets, `mask`
    [B, seq_len, P] float (1 = valid), `lpe_sign` [B, 8] (one draw per trajectory)."""
    gi = int(rng.integers(len(self.groups)))
    g = self.groups[gi]
    stride = self.strides[int(rng.integers(len(self.strides)))]
    xs, ys, ms = [], [], []
    offsets = g.graph.offsets
    for _ in range(batch_trajs):
      t = g.trajs[int(rng.integers(len(g.trajs)))]
      n = t.states.shape[0]
      need = (self.ctx + min(self.seq_len, 2 * self.ctx) + self.spt) * stride
      start = int(rng.integers(0, n - need))
      ind = np.arange(start, n, stride)[:self.seq_len + self.ctx]
      rows = np.asarray(t.states[ind], np.float64)[:, g.perm]      # [len(ind), P] graph order
      for shift in range(self.spt):
        x = rows[shift:shift + self.ctx]
        z, mean, std = normalise(x, offsets)
        y = rows[shift + self.ctx:shift + self.ctx + self.seq_len]
        yz = (y - mean) / (std + 1e-6)
        pad = self.seq_len - len(y)
        yz = np.concatenate([yz, np.zeros((pad, yz.shape[1]))], 0)
        mask = np.concatenate([np.ones_like(y), np.zeros((pad, y.shape[1]))], 0)
        xs.append(z)
        ys.append(yz.astype(np.float32))
        ms.append(mask.astype(np.float32))
    sign = rng.integers(0, 2, size=(batch_trajs, 8)) * 2 - 1
    return gi, {"x": np.stack(xs), "y": np.stack(ys), "mask": np.stack(ms),
                "lpe_sign": np.repeat(sign, self.spt, axis=0).astype(np.float32)}


def make_optimizer(config: dict) -> optax.GradientTransformation:
  """AdamW + cosine decay to `lr_min`, after global-norm clipping (reference recipe)."""
  schedule = optax.cosine_decay_schedule(config["lr"], max(1, config["steps"]),
                                         alpha=config["lr_min"] / config["lr"])
  return optax.chain(optax.clip_by_global_norm(config["grad_clip"]),
                     optax.adamw(schedule, weight_decay=config["weight_decay"]))


def _loss_fn(apply_all: Callable, lpe_flip: bool):
  def loss(theta, graph, batch):
    def one(x, lpe_sign):
      g = dataclasses.replace(graph, lpe=graph.lpe * lpe_sign) if lpe_flip else graph
      return apply_all(theta, g, x)                       # [seq_len, P]
    pred = jax.vmap(one)(batch["x"], batch["lpe_sign"])   # [B, seq_len, P]
    err = jnp.abs(pred - batch["y"]) * batch["mask"]
    return jnp.sum(err) / jnp.maximum(jnp.sum(batch["mask"]), 1.0)
  return loss


def make_train_step(apply_all: Callable, opt: optax.GradientTransformation, lpe_flip: bool):
  """One NaN-safe step: `(theta, opt_state, graph, batch) -> (theta, opt_state, loss, ok)`."""
  loss_fn = _loss_fn(apply_all, lpe_flip)

  def step(theta, opt_state, graph, batch):
    loss, grads = jax.value_and_grad(loss_fn)(theta, graph, batch)
    ok = jnp.isfinite(loss) & jnp.all(jnp.stack(
        [jnp.all(jnp.isfinite(g)) for g in jax.tree_util.tree_leaves(grads)]))
    grads = jax.tree_util.tree_map(lambda g: jnp.where(ok, g, 0.0), grads)
    updates, new_opt = opt.update(grads, opt_state, theta)
    new_theta = optax.apply_updates(theta, updates)
    keep = lambda new, old: jax.tree_util.tree_map(lambda a, b: jnp.where(ok, a, b), new, old)
    return keep(new_theta, theta), keep(new_opt, opt_state), loss, ok

  return jax.jit(step)


def _all_finite(tree) -> bool:
  return all(bool(np.all(np.isfinite(np.asarray(x)))) for x in jax.tree_util.tree_leaves(tree))


def model_config(config: dict):
  """The `NowcasterConfig` of a fit config (NiNo keeps 9 feature slots: conv-ready)."""
  if config["model"] == "wnnp":
    return nino.NowcasterConfig(kind="wnn", hid=config["hidden"], ctx=config["ctx"],
                                seq_len=config["seq_len"], max_feat=1, lpe=0, n_layers=0)
  return nino.NowcasterConfig(kind="nino", hid=config["hidden"], ctx=config["ctx"],
                              seq_len=config["seq_len"], max_feat=9)


def init_theta(cfg, graph, key):
  """Fresh meta-model weights (the reference init: normal(0.02), zero biases)."""
  return nino_model.make_model(cfg).init(key, *nino_model.example_inputs(cfg, graph))


def make_apply_all(cfg) -> Callable:
  """`(theta, graph, x [ctx, P]) -> [seq_len, P]`: normalised predictions, every horizon."""
  net = nino_model.make_model(cfg)

  def apply_all(theta, graph, x):
    edges = graph.flat_to_edges(x)                                   # [E, F, ctx]
    out = net.apply(theta, edges, jnp.asarray(graph.edge_type), jnp.asarray(graph.edge_index),
                    jnp.asarray(graph.lpe), jnp.asarray(graph.pos_w))  # [E, F, seq_len]
    return graph.edges_to_flat(out).T                                # [seq_len, P]

  return apply_all


def fit(config: dict, data_dir: str | os.PathLike, out_dir: str | os.PathLike, *,
        progress: bool = True) -> dict:
  """Fits the nowcaster of `config` on every trajectory under `data_dir`.

  Returns a summary dict (steps, first/last mean loss, skipped batches, output path).
  """
  from tqdm import tqdm

  data_dir, out_dir = pathlib.Path(data_dir), pathlib.Path(out_dir).absolute()
  paths = traj_lib.list_trajectories(data_dir)
  if not paths:
    raise NoTrajectoriesError(f"no trajectories under {data_dir}; record some with "
                              "`lopt nowcast record --out DIR`")
  run_dir = rundir.RunDir(out_dir)
  run_dir.claim(config)  # a folder holding another fit is refused, as for every loop
  sampler = WindowSampler(paths, ctx=config["ctx"], seq_len=config["seq_len"],
                          stride=config["stride"], samples_per_traj=config["samples_per_traj"])
  cfg = model_config(config)
  theta = init_theta(cfg, sampler.groups[0].graph, jax.random.PRNGKey(config["seed"]))
  apply_all = make_apply_all(cfg)
  opt = make_optimizer(config)
  opt_state = opt.init(theta)
  step_fn = make_train_step(apply_all, opt, config["lpe_flip"] and config["model"] == "nino")

  ckpt = run_dir.checkpoints(keep=2)
  start = ckpt.latest_step()
  if start is not None:
    restored = ckpt.restore(start, {"theta": theta, "opt_state": opt_state})
    theta, opt_state = restored["theta"], restored["opt_state"]
  rng = np.random.default_rng([config["seed"], start or 0])
  log = run_dir.metrics(resume_step=start, tensorboard=False)
  start = start or 0
  losses, skipped, t0 = [], 0, time.time()
  bar = tqdm(total=config["steps"], initial=start, desc=f"fit {config['model']}",
             disable=not progress)
  first_loss = None
  with ckpt, log:
    for step in range(start, config["steps"]):
      gi, batch = sampler.sample(rng, config["batch_trajs"])
      theta, opt_state, loss, ok = step_fn(theta, opt_state, sampler.groups[gi].graph, batch)
      if bool(ok):
        losses.append(float(loss))
        first_loss = losses[0] if first_loss is None else first_loss
      else:
        skipped += 1
      bar.update(1)
      done = step + 1
      if done % config["log_every"] == 0 or done == config["steps"]:
        recent = float(np.mean(losses[-config["log_every"]:])) if losses else float("nan")
        log.write({"step": done, "loss": recent, "skipped": skipped, "time": time.time() - t0})
        bar.set_postfix(loss=f"{recent:.4f}")
      if (done % config["save_every"] == 0 or done == config["steps"]) and _all_finite(theta):
        ckpt.save(done, {"theta": theta, "opt_state": opt_state})
    bar.close()
  if not _all_finite(theta):
    raise FloatingPointError("theta became non-finite; nothing was saved")
  n = min(len(losses), config["log_every"])
  summary = {"model": config["model"], "steps": config["steps"], "resumed_from": start,
          "first_loss": first_loss,
          "final_loss": float(np.mean(losses[-n:])) if n else None,
          "skipped_batches": skipped, "groups": len(sampler.groups),
          "trajectories": sum(len(g.trajs) for g in sampler.groups),
          "skipped_trajectories": sampler.skipped,
          "nowcaster": str(out_dir / "nowcaster")}
  nino.save_nowcaster(out_dir / "nowcaster", nino.Nowcaster(cfg, jax.device_get(theta)),
                      extra_meta={"fit": {"config": config, "data": str(data_dir),
                                          **{k: v for k, v in summary.items()
                                             if k != "nowcaster"}}},
                      overwrite=True)
  return summary
