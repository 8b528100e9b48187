"""Speed and memory of one learned-optimizer step against optax.adam, in one process.

For each size (1M and/or 10M float32 parameters spread over `n x {w: [d, d], b: [d]}` plus a
conv kernel, layer-norm scales and an embedding), it jits `params, state = step(params,
state, grads, loss)` (the optimizer update plus `optax.apply_updates`, params and state
donated) for optax.adam(1e-3), AdafacMLP, Celo, Celo-Adam and VeLO (full size: LSTM 512, 256
MLPs), warms each up, then times interleaved rounds (`block_until_ready`) and prints the
median ms and the ratio to Adam measured in the same run.

Wall time is the headline; `cpu ms` (process CPU time, all threads) is also printed because
on a shared machine it is far less sensitive to other jobs.

Memory, per optimizer, in a fresh subprocess (so high-water marks do not mix):
  * `rss`: peak RSS (`VmHWM`, reset through `/proc/self/clear_refs` after compiling) minus
    the RSS before the optimizer state was created: state + step temporaries + new params.
  * `xla`: optimizer state bytes + the compiled step's temp buffers
    (`compiled.memory_analysis()`), i.e. what the optimizer holds at its step's peak.
The "extra memory" ratio is that number over Adam's.

    python -m lopt.benchmarks.lopt_step --sizes 1m          # or: --sizes 1m,10m --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import optax

SIZES = {"1m": (4, 512), "10m": (10, 1024)}
OPTS = ("adam", "adafac_mlp", "celo", "celo_adam", "velo")


def make_params(size: str, key=jax.random.PRNGKey(0)) -> dict:
  """A realistic pytree: square dense layers with biases, a conv kernel, LN scales, an
  embedding. `1m` ~ 1.1M and `10m` ~ 10.6M parameters."""
  n, d = SIZES[size]
  ks = iter(jax.random.split(key, 2 * n + 4))
  p = {}
  for i in range(n):
    p[f"dense_{i}"] = {"w": jax.random.normal(next(ks), (d, d)) / d ** 0.5,
                       "b": jnp.zeros((d,))}
    p[f"ln_{i}"] = {"scale": jnp.ones((d,))}
  p["conv"] = {"w": jax.random.normal(next(ks), (3, 3, 32, 64)) * 0.05, "b": jnp.zeros((64,))}
  p["embed"] = {"table": jax.random.normal(next(ks), (d // 4, d)) * 0.02}
  return p


def make_opt(name: str, num_steps: int = 1000) -> optax.GradientTransformationExtraArgs:
  if name == "adam":
    return optax.adam(1e-3)
  from lopt.learned_opts import registry
  lopt = registry.get(name)   # default hparams: VeLO full size (LSTM 512, 256 MLPs)
  theta = jax.jit(lopt.init_meta)(jax.random.PRNGKey(0))
  return lopt.make(theta, num_steps=num_steps)


def make_step(opt):
  def step(params, state, grads, loss):
    updates, state = opt.update(grads, state, params, loss=loss)
    return optax.apply_updates(params, updates), state
  return jax.jit(step, donate_argnums=(0, 1))


def _nbytes(tree) -> int:
  return sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(tree))


def time_all(size: str, names, rounds: int, iters: int) -> dict:
  params0 = make_params(size)
  grads = jax.tree_util.tree_map(lambda p: 0.01 * jnp.cos(p * 7.0 + 1.0), params0)
  loss = jnp.asarray(2.0)
  runs = {}
  for name in names:
    opt = make_opt(name)
    params = jax.tree_util.tree_map(jnp.copy, params0)
    state = opt.init(params)
    step = make_step(opt)
    t0 = time.perf_counter()
    params, state = step(params, state, grads, loss)
    jax.block_until_ready(params)
    runs[name] = {"step": step, "params": params, "state": state, "ms": [], "cpu": [],
                  "warmup_s": time.perf_counter() - t0}
  for _ in range(rounds):
    for name in names:
      r = runs[name]
      for _ in range(iters):
        t0, c0 = time.perf_counter(), time.process_time()
        r["params"], r["state"] = r["step"](r["params"], r["state"], grads, loss)
        jax.block_until_ready((r["params"], r["state"]))
        r["ms"].append(1e3 * (time.perf_counter() - t0))
        r["cpu"].append(1e3 * (time.process_time() - c0))
  n_params = sum(x.size for x in jax.tree_util.tree_leaves(params0))
  return {"n_params": n_params,
          **{k: {"median_ms": statistics.median(v["ms"]),
                 "median_cpu_ms": statistics.median(v["cpu"]), "warmup_s": v["warmup_s"]}
             for k, v in runs.items()}}


def _proc_status(field: str) -> float:
  """VmRSS / VmHWM of this process in MiB (Linux)."""
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith(field + ":"):
        return int(line.split()[1]) / 1024.0
  raise RuntimeError(f"{field} not in /proc/self/status")


def mem_child(size: str, name: str) -> dict:
  """Run in a fresh process: peak-RSS increase of the optimizer and XLA's view of it.

  The step is compiled first (against the abstract state), then the RSS high-water mark is
  reset (`/proc/self/clear_refs`), so the number is the optimizer's state and step
  temporaries, not imports, params, grads or compilation.
  """
  params = make_params(size)
  grads = jax.tree_util.tree_map(lambda p: 0.01 * jnp.cos(p * 7.0 + 1.0), params)
  jax.block_until_ready((params, grads))
  opt = make_opt(name)
  abstract_state = jax.eval_shape(opt.init, params)
  step = make_step(opt)
  compiled = step.lower(params, abstract_state, grads, jnp.asarray(2.0)).compile()
  ma = compiled.memory_analysis()
  temp = int(getattr(ma, "temp_size_in_bytes", 0)) if ma is not None else 0
  init = jax.jit(opt.init)
  jax.block_until_ready(jax.eval_shape(init, params))
  init = init.lower(params).compile()
  base = _proc_status("VmRSS")
  with open("/proc/self/clear_refs", "w") as f:
    f.write("5")                      # reset VmHWM to the current RSS
  state = init(params)
  state_bytes = _nbytes(state)
  for _ in range(3):
    params, state = compiled(params, state, grads, jnp.asarray(2.0))
  jax.block_until_ready((params, state))
  peak = _proc_status("VmHWM")
  return {"rss_mib": peak - base, "state_mib": state_bytes / 2 ** 20,
          "temp_mib": temp / 2 ** 20, "xla_mib": (state_bytes + temp) / 2 ** 20}


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--sizes", default="1m", help="comma list of 1m,10m")
  ap.add_argument("--opts", default=",".join(OPTS))
  ap.add_argument("--rounds", type=int, default=3)
  ap.add_argument("--iters", type=int, default=0, help="timed steps per round (0: auto)")
  ap.add_argument("--no-mem", action="store_true", help="skip the memory subprocesses")
  ap.add_argument("--mem-child", nargs=2, metavar=("SIZE", "OPT"), help=argparse.SUPPRESS)
  ap.add_argument("--json", help="also write the results here")
  args = ap.parse_args(argv)
  if args.mem_child:
    print(json.dumps(mem_child(*args.mem_child)))
    return
  names = [n for n in args.opts.split(",") if n]
  if "adam" not in names:
    names = ["adam"] + names
  results = {"device": str(jax.devices()[0]), "cpus": os.cpu_count()}
  for size in args.sizes.split(","):
    iters = args.iters or (10 if size == "1m" else 5)
    res = time_all(size, names, args.rounds, iters)
    if not args.no_mem:
      for name in names:
        out = subprocess.run([sys.executable, "-m", "lopt.benchmarks.lopt_step", "--mem-child",
                              size, name], capture_output=True, text=True, check=True)
        res[name].update(json.loads(out.stdout.strip().splitlines()[-1]))
    results[size] = res
    adam = res["adam"]
    print(f"\n== {size}: {res['n_params']:,} float32 params, {results['device']}, "
          f"{args.rounds} rounds x {iters} steps ==")
    hdr = (f"{'optimizer':<11} {'median ms':>10} {'x adam':>7} {'cpu ms':>8} {'x adam':>7}"
           f" {'warmup s':>9}")
    if not args.no_mem:
      hdr += f" {'rss MiB':>8} {'x adam':>7} {'state+tmp MiB':>14} {'x adam':>7}"
    print(hdr)
    for name in names:
      r = res[name]
      line = (f"{name:<11} {r['median_ms']:>10.2f} {r['median_ms'] / adam['median_ms']:>7.2f}"
              f" {r['median_cpu_ms']:>8.2f} {r['median_cpu_ms'] / adam['median_cpu_ms']:>7.2f}"
              f" {r['warmup_s']:>9.1f}")
      if not args.no_mem:
        line += (f" {r['rss_mib']:>8.1f} {r['rss_mib'] / max(adam['rss_mib'], 1e-9):>7.2f}"
                 f" {r['xla_mib']:>14.1f} {r['xla_mib'] / adam['xla_mib']:>7.2f}")
      print(line)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(results, f, indent=1, default=float)


if __name__ == "__main__":
  main()
