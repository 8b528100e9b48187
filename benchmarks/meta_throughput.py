"""Meta-training throughput: PES outer steps of a small_fc learned optimizer.

Configuration (the Celo/learned_optimization anchor in docs/results.md): `adafac_mlp`
(small_fc_lopt) trained by truncated PES (truncation 50, std 0.01) on the 4 fast MLP
families (MLP hidden 32 on 8x8 images, batch 64), 8 inner problems each, log-uniform
lengths 100-2000 with a random initial offset, global reparam augmentation. One outer step
= 4 families x 8 tasks x 2 antithetic x 50 = 3,200 inner steps.

Prints inner steps/s, time to the first outer step, and ratios against (a) the reference
implementation's anchor (3,100 inner steps/s, 80 s to the first step, same CPU class) and
(b) a plain vmapped Adam unroll of the same tasks measured in this run (machine-load
calibration: how close the meta-training machinery gets to bare inner training).

  python -m lopt.benchmarks.meta_throughput [--steps 10] [--tasks 8] [--no-baseline]
      [--compile-cache DIR]
"""

from __future__ import annotations

import argparse
import time

T_START = time.time()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

REF_STEPS_PER_S = 3100.0
REF_FIRST_STEP_S = 80.0
TARGET_STEPS_PER_S = 12000.0
TARGET_FIRST_STEP_S = 15.0


def build(num_tasks: int, trunc: int, families: list[str]):
  from lopt import learned_opts, meta, tasks
  lopt = learned_opts.get("adafac_mlp")
  ests = []
  for name in families:
    fam = tasks.augment.ReparamFamily(tasks.get_family(name), "global", (0.1, 10.0))
    u = meta.Unroller(fam, lopt, meta.LogUniformSchedule(100, 2000), random_offset=2000)
    ests.append(meta.PES(u, trunc_length=trunc, std=0.01))
  return meta.MetaTrainer(lopt, ests, [num_tasks] * len(ests), optax.adam(3e-4))


def plain_unroll_rate(num_tasks: int, trunc: int, families: list[str], repeats: int) -> float:
  """Inner steps/s of a bare vmapped Adam unroll of the same tasks (2x for antithetic)."""
  from lopt import tasks
  fams = tuple(tasks.get_family(n) for n in families)
  opt = optax.adam(1e-3)

  def one(fam, key):
    k1, k2, k3 = jax.random.split(key, 3)
    task = fam.task(fam.sample(k1))
    params = task.init(k2)

    def body(carry, k):
      p, s = carry
      loss, g = jax.value_and_grad(lambda p: task.loss(p, k, task.sample_batch(k))[0])(p)
      u, s = opt.update(g, s, p)
      return (optax.apply_updates(p, u), s), loss

    _, losses = jax.lax.scan(body, (params, opt.init(params)), jax.random.split(k3, trunc))
    return jnp.mean(losses)

  @jax.jit
  def run(fams, key):
    keys = jax.random.split(key, len(fams))
    return sum(jnp.mean(jax.vmap(lambda k: one(f, k))(jax.random.split(kk, 2 * num_tasks)))
               for f, kk in zip(fams, keys))

  jax.block_until_ready(run(fams, jax.random.PRNGKey(0)))
  t = time.time()
  for i in range(repeats):
    jax.block_until_ready(run(fams, jax.random.PRNGKey(i + 1)))
  dt = (time.time() - t) / repeats
  return len(fams) * 2 * num_tasks * trunc / dt


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--steps", type=int, default=10, help="timed outer steps")
  p.add_argument("--tasks", type=int, default=8, help="inner problems per family")
  p.add_argument("--trunc", type=int, default=50, help="truncation length")
  p.add_argument("--no-baseline", action="store_true", help="skip the plain-unroll baseline")
  p.add_argument("--compile-cache", default=None, metavar="DIR",
                 help="use JAX's persistent compilation cache in DIR (as `lopt meta-train` "
                 "does): run twice to see the warm start of a rerun or resume")
  args = p.parse_args()
  if args.compile_cache:
    from lopt.meta import enable_compile_cache
    enable_compile_cache(args.compile_cache)
  from lopt.tasks import FAST_MLP_FAMILIES
  families = list(FAST_MLP_FAMILIES)
  inner_per_outer = len(families) * args.tasks * 2 * args.trunc

  t0 = time.time()
  trainer = build(args.tasks, args.trunc, families)
  state = trainer.init(jax.random.PRNGKey(0))
  jax.block_until_ready(state)
  t_init = time.time() - t0
  state, _ = trainer.step(state)
  t_first = time.time() - t0
  t_first_process = time.time() - T_START
  times = []
  for _ in range(args.steps):
    t = time.time()
    state, m = trainer.step(state)
    times.append(time.time() - t)
  times.sort()
  median = times[len(times) // 2]
  rate = inner_per_outer / median
  import os
  print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}, backend "
        f"{jax.default_backend()}, load average {os.getloadavg()[0]:.1f} on "
        f"{os.cpu_count()} cores; compilation cache: {args.compile_cache or 'off'}")
  print(f"config: adafac_mlp + PES, {len(families)} families x {args.tasks} tasks x 2 "
        f"antithetic x trunc {args.trunc} = {inner_per_outer} inner steps / outer step")
  print(f"build+init {t_init:.1f} s; first outer step done {t_first:.1f} s after build "
        f"({t_first_process:.1f} s after process start, imports included)")
  print(f"outer step median {median * 1e3:.0f} ms (min {times[0] * 1e3:.0f}, max "
        f"{times[-1] * 1e3:.0f}) over {args.steps} steps")
  print(f"inner steps/s: {rate:,.0f}  (x{rate / REF_STEPS_PER_S:.2f} vs reference "
        f"{REF_STEPS_PER_S:,.0f}; target {TARGET_STEPS_PER_S:,.0f}: "
        f"{'met' if rate >= TARGET_STEPS_PER_S else 'not met'})")
  print(f"time to first outer step: {t_first:.1f} s  (reference {REF_FIRST_STEP_S:.0f} s / ours = "
        f"x{REF_FIRST_STEP_S / t_first:.2f}; target {TARGET_FIRST_STEP_S:.0f} s: "
        f"{'met' if t_first <= TARGET_FIRST_STEP_S else 'not met'})")
  print(f"meta_loss {float(m['meta_loss']):.4f}")
  if not args.no_baseline:
    base = plain_unroll_rate(args.tasks, args.trunc, families, max(3, args.steps // 2))
    print(f"plain vmapped Adam unroll (same tasks, no learned optimizer, no resets): "
          f"{base:,.0f} inner steps/s; meta-training runs at {rate / base:.2f}x of it")


if __name__ == "__main__":
  main()
