"""Speed and memory of one nowcast step (NiNo, WNN+) against one Adam step, one CPU thread.

For four models (the reference's: ConvNet 42-84-84 and MLP 784-128-10 at ~0.1M parameters,
ConvNet 128-256-256 and MLP 784-1024-256-10 at ~1M, 28x28x1 inputs, 10 classes) it measures:

Times are CPU seconds of the pinned one-thread child (robust to other jobs on the machine);
wall-clock medians are kept in the JSON (`wall_s`).

* graph build: `build_graph` with Laplacian encodings, cache cleared (median of 3);
* NiNo step / WNN+ step: one jitted `Nowcaster.predict(history, k)` with the official weights
  (z-scoring, edge gather, meta-model, scatter back, unscaling), compile excluded (median of 3);
* Adam step: jitted `optax.adam` update + apply (median of 30); full step: forward, backward
  and Adam on a batch of 128 (median of 10);
* edges/s = graph edges / NiNo step time; ratios to the Adam step and to the full step;
* peak memory: extra resident memory over the level right before the call (VmHWM reset through
  /proc/self/clear_refs), first call after compilation; a fresh process per (model, method).

Every measurement runs in a child process pinned to one CPU with XLA's CPU thread pool off,
so figures compare with the reference's `torch.set_num_threads(1)` numbers
(shared/research/reference_runs_nino_data/throughput_cpu_1thread.json). Ratios are measured
in the same run; absolute seconds are noisy on a shared machine.

Usage:
  python -m lopt.benchmarks.nowcast_step                 # all four models (a few minutes)
  python -m lopt.benchmarks.nowcast_step --models conv_100k,mlp_100k --out nowcast_step.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

MODELS = {
    "conv_100k": ("conv", (42, 84, 84)),
    "mlp_100k": ("mlp", (128,)),
    "conv_1m": ("conv", (128, 256, 256)),
    "mlp_1m": ("mlp", (1024, 256)),
}
REFERENCE = {  # torch, one thread (reference_runs_nino.md §2): NiNo s, WNN+ s, Adam s, full s
    "conv_100k": (0.116, 0.307, 1.10e-3, 0.117),
    "mlp_100k": (1.88, 0.41, 1.10e-3, 2.5e-3),
    "conv_1m": (1.69, 2.47, 4.47e-3, 0.68),
    "mlp_1m": (17.6, 3.40, 5.0e-3, 10.8e-3),
}
REFERENCE_MEM_GB = {"conv_100k": (0.08, 0.18), "mlp_100k": (0.37, 0.17),
                    "conv_1m": (0.43, 1.49), "mlp_1m": (3.70, 1.60)}
# The official NiNo weights: $LOPT_SHARED_DIR/pretrained/nino, else ../shared beside the repo.
_SHARED = os.path.join(os.environ.get("LOPT_SHARED_DIR") or os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared"), "pretrained", "nino")


def _mem_kb() -> dict:
  out = {}
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith(("VmHWM", "VmRSS")):
        k, v = line.split(":")
        out[k] = int(v.split()[0])
  return out


def _reset_peak() -> bool:
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")
    return True
  except OSError:
    return False


_WALL: dict = {}


def _median_time(fn, reps: int, label: str = "") -> tuple[float, list]:
  """Median CPU seconds of `fn` (this process, all threads) over `reps` calls.

  CPU time rather than wall time: the child is pinned to one CPU with one compute thread, so
  CPU time is the single-thread cost even when other jobs share the CPU; the wall-clock
  medians are kept in `_WALL` (reported as `wall_s`)."""
  times, walls = [], []
  for _ in range(reps):
    t, w = time.process_time(), time.perf_counter()
    fn()
    times.append(time.process_time() - t)
    walls.append(time.perf_counter() - w)
  _WALL[label] = sorted(walls)[len(walls) // 2]
  return sorted(times)[len(times) // 2], times


def _net(kind, widths):
  import functools
  import haiku as hk
  from lopt.tasks import models
  if kind == "mlp":
    fn = functools.partial(models.mlp_classifier, hidden=widths, num_classes=10)
  else:
    fn = functools.partial(models.conv_classifier, channels=widths, num_classes=10)
  return hk.without_apply_rng(hk.transform(fn))


def child(model: str, what: str, nowcaster_dir: str | None) -> dict:
  """One measurement in this (fresh, one-thread) process."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax
  kind, widths = MODELS[model]
  net = _net(kind, widths)
  x = jnp.zeros((128, 28, 28, 1), jnp.float32)
  params = net.init(jax.random.PRNGKey(0), x[:1])
  n_params = sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(params))
  out = {"model": model, "what": what, "n_params": n_params}

  if what == "base":
    from lopt.learned_opts.nino import graph as graph_lib
    def build():
      graph_lib._build_cached.cache_clear()
      return graph_lib.build_graph(params)
    _reset_peak()
    before = _mem_kb()["VmRSS"]
    g = build()
    out["graph_peak_extra_gb"] = (_mem_kb()["VmHWM"] - before) / 2**20
    out["graph_build_s"], _ = _median_time(build, 3, "graph_build_s")
    out.update(n_nodes=g.n_nodes, n_edges=g.n_edges, max_feat=g.max_feat)

    opt = optax.adam(1e-3)
    state = opt.init(params)
    grads = jax.tree_util.tree_map(jnp.ones_like, params)

    @jax.jit
    def adam_step(p, s, g):
      u, s = opt.update(g, s, p)
      return optax.apply_updates(p, u), s
    jax.block_until_ready(adam_step(params, state, grads))
    out["adam_step_s"], _ = _median_time(
        lambda: jax.block_until_ready(adam_step(params, state, grads)), 30, "adam_step_s")

    labels = jnp.zeros((128,), jnp.int32)

    @jax.jit
    def full_step(p, s):
      def loss(q):
        logits = net.apply(q, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
      g = jax.grad(loss)(p)
      u, s = opt.update(g, s, p)
      return optax.apply_updates(p, u), s
    jax.block_until_ready(full_step(params, state))
    _reset_peak()
    before = _mem_kb()["VmRSS"]
    jax.block_until_ready(full_step(params, state))
    out["full_step_peak_extra_gb"] = (_mem_kb()["VmHWM"] - before) / 2**20
    out["full_step_s"], _ = _median_time(lambda: jax.block_until_ready(full_step(params, state)),
                                         10, "full_step_s")
    out["wall_s"] = dict(_WALL)
    return out

  from lopt.learned_opts import nino
  name = {"nino": "nino", "wnnp": "wnnp"}[what]
  nc = nino.load_nowcaster(name, path=nowcaster_dir) if nowcaster_dir else \
      nino.load_nowcaster(name)
  keys = jax.random.split(jax.random.PRNGKey(1), 5)
  steps = [jax.tree_util.tree_map(lambda p, k=k: 0.01 * jax.random.normal(k, p.shape), params)
           for k in keys]
  history = jax.tree_util.tree_map(
      lambda p, *d: p[None] + jnp.cumsum(jnp.stack(d), 0), params, *steps)   # [5, ...]
  g = nino.build_graph(params)
  out.update(n_nodes=g.n_nodes, n_edges=g.n_edges, max_feat=g.max_feat)
  fn = jax.jit(lambda nc_, h, k: nc_.predict(h, k))
  k = jnp.asarray(1, jnp.int32)
  t = time.perf_counter()
  compiled = fn.lower(nc, history, k).compile()
  out["compile_s"] = time.perf_counter() - t
  _reset_peak()
  before = _mem_kb()["VmRSS"]
  pred = jax.block_until_ready(compiled(nc, history, k))
  out["peak_extra_gb"] = (_mem_kb()["VmHWM"] - before) / 2**20
  out["finite"] = bool(all(bool(jnp.all(jnp.isfinite(a)))
                           for a in jax.tree_util.tree_leaves(pred)))
  out["step_s"], out["raw_s"] = _median_time(
      lambda: jax.block_until_ready(compiled(nc, history, k)), 3, "step_s")
  out["edges_per_s"] = g.n_edges / out["step_s"]
  out["wall_s"] = dict(_WALL)
  return out


def _spawn(model: str, what: str, args) -> dict:
  env = dict(os.environ)
  env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false "
                      "intra_op_parallelism_threads=1").strip()
  env["OMP_NUM_THREADS"] = env["OPENBLAS_NUM_THREADS"] = env["MKL_NUM_THREADS"] = "1"
  cmd = [sys.executable, __file__, "--child", model, what, "--cpu", str(args.cpu)]
  if args.nowcaster_dir:
    cmd += ["--nowcaster-dir", args.nowcaster_dir]
  res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
  if res.returncode != 0:
    return {"model": model, "what": what, "error": res.stderr.strip().splitlines()[-1:]}
  return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--models", default=",".join(MODELS))
  ap.add_argument("--methods", default="nino,wnnp")
  ap.add_argument("--cpu", type=int, default=0, help="CPU the children are pinned to")
  ap.add_argument("--timeout", type=int, default=900, help="seconds per child process")
  ap.add_argument("--nowcaster-dir", default=_SHARED if os.path.isdir(_SHARED) else None,
                  help="folder with the official .pt files (default: %(default)s)")
  ap.add_argument("--out", default=None, help="write all figures as JSON here")
  ap.add_argument("--child", nargs=2, metavar=("MODEL", "WHAT"), help=argparse.SUPPRESS)
  args = ap.parse_args(argv)
  if args.child:
    try:
      os.sched_setaffinity(0, {args.cpu})
    except (AttributeError, OSError):
      pass
    print(json.dumps(child(*args.child, args.nowcaster_dir)))
    return 0

  rows = []
  for model in args.models.split(","):
    r = {"model": model}
    base = _spawn(model, "base", args)
    r.update({k: v for k, v in base.items() if k not in ("what",)})
    for what in args.methods.split(","):
      m = _spawn(model, what, args)
      r[what] = m
      print(f"{model} {what}: {m}", file=sys.stderr, flush=True)
    rows.append(r)

  print(f"\n| model | params | N / E / F | graph build | NiNo step | WNN+ step | Adam step | "
        f"full step | NiNo/Adam | WNN+/Adam | NiNo/full | NiNo edges/s | peak NiNo / WNN+ | "
        f"torch ref NiNo (edges/s) |")
  print("|" + "---|" * 14)
  for r in rows:
    if "error" in r:
      print(f"| {r['model']} | error: {r['error']} |")
      continue
    nino, wnnp = r.get("nino", {}), r.get("wnnp", {})
    ref = REFERENCE[r["model"]]
    def s(d, key="step_s"):
      return f"{d[key]:.3g} s" if key in d else "n/a"
    def ratio(d, den):
      if "step_s" not in d:
        return "n/a"
      v = d["step_s"] / den
      return f"{v:.0f}x" if v >= 10 else f"{v:.2f}x"
    print(f"| {r['model']} | {r['n_params']:,} | {r['n_nodes']} / {r['n_edges']:,} / "
          f"{r['max_feat']} | {r['graph_build_s'] * 1e3:.0f} ms | {s(nino)} | {s(wnnp)} | "
          f"{r['adam_step_s'] * 1e3:.2f} ms | {r['full_step_s'] * 1e3:.1f} ms | "
          f"{ratio(nino, r['adam_step_s'])} | {ratio(wnnp, r['adam_step_s'])} | "
          f"{ratio(nino, r['full_step_s'])} | "
          f"{nino.get('edges_per_s', float('nan')) / 1e3:.0f}k | "
          f"{nino.get('peak_extra_gb', float('nan')):.2f} / "
          f"{wnnp.get('peak_extra_gb', float('nan')):.2f} GB | "
          f"{ref[0]} s ({r['n_edges'] / ref[0] / 1e3:.0f}k) |")
  if args.out:
    with open(args.out, "w") as f:
      json.dump({"rows": rows, "reference_torch_1thread": REFERENCE,
                 "reference_peak_gb": REFERENCE_MEM_GB}, f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
