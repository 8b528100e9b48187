#!/usr/bin/env bash
# The device check for a lent GPU machine (see the device tool README of the workplace): one
# prepared script, run once, that measures the vectorised/sequential speedup of the held-out
# protocol on the GPU (issue #13; on the 2-core CPU it is bound at about 1.1x), and, with the
# time left, the GPU step/meta-training benchmarks. `GPU_BENCH_TASKS="task ..."` also runs
# those held-out tasks with the strong baselines in one vectorised process (results eval §3f).
#
#   here:   bash benchmarks/gpu_prepare.sh                      # builds .gpu/ (32 MiB)
#   device: run(command="bash benchmarks/gpu_check.sh", carry=[".gpu"], timeout_s=600)
#
# Every stage runs under `timeout` against one deadline ($GPU_CHECK_SECONDS, default 560 s)
# so its results are packed into $OUT before the call's limit. Benchmark runs are resumable:
# unpack a returned tarball at the repo root and `lopt benchmark` goes on from there.
#
# History: on an H200 on 2026-11-26 (eval §3d), 12 worker processes sharing the GPU ran at
# 0.25 s per step each on fmnist-conv-32-64-64 and one lease finished only 3 tuning trials.
# Since then a task's LR grid and seeds run as one vmapped program in one process (on a GPU
# every group is vmapped), which is what this script uses.
set -u
T0=$(date +%s)
DEADLINE=${GPU_CHECK_SECONDS:-560}
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
left() { echo $(( DEADLINE - ($(date +%s) - T0) )); }
log() { echo "[gpu_check +$(( $(date +%s) - T0 ))s] $*" | tee -a "$OUT/gpu_check.log"; }

python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .gpu/whl/*.whl || exit 1
mkdir -p /tmp/pkg && ln -sfn "$PWD" /tmp/pkg/lopt      # the repo root is the package
export PYTHONPATH=/tmp/pkg:/tmp/site PYTHONUNBUFFERED=1
export LOPT_DATA_DIR=$PWD/.gpu/tfds LOPT_CACHE_DIR=/tmp/lopt_cache
export XLA_PYTHON_CLIENT_PREALLOCATE=false              # grow GPU memory as needed
export JAX_DEFAULT_MATMUL_PRECISION=highest             # fp32 matmuls/convs (no TF32), as on CPU
nvidia-smi -L 2>&1 | tee -a "$OUT/gpu_check.log"
python3 -c "import jax, optax, haiku; print('jax', jax.__version__, 'optax', optax.__version__,
  'haiku', haiku.__version__, jax.devices())" 2>&1 | tee -a "$OUT/gpu_check.log"

# XLA's GPU autotuning compiles many kernel candidates per matmul/conv: minutes for these
# small programs (first device run: 2 runs of 4 steps took 120 s). Turn it off when the
# image's XLA knows the flag.
GPU_FLAGS="--xla_gpu_autotune_level=0"
if XLA_FLAGS="$GPU_FLAGS" python3 -c "import jax.numpy as jnp; jnp.ones(2).block_until_ready()" \
    > /dev/null 2>&1; then export XLA_FLAGS="$GPU_FLAGS"; log "XLA_FLAGS=$XLA_FLAGS"; fi

# The held-out protocol of results eval §3f: 9-point grid at 2x the budget, 3 seeds.
GRID=0.0001,0.000237,0.000562,0.00133,0.00316,0.0075,0.0178,0.0422,0.1
OPTS="adam-tuned,shampoo-tuned,muon-tuned,nadamw-tuned:trials=8,celo:path=.gpu/celo/celo_theta.state"
bench() {  # bench TASK SECONDS: one process, vectorised groups
  local out="runs/heldout_strong_$1"
  log "benchmark $1 (limit $2 s)"
  timeout -k 15 "$2" python3 -m lopt.cli benchmark --tasks "$1" --optimizers "$OPTS" \
    --seeds 3 --envelope-factor 2 --lr-grid "$GRID" --out "$out" \
    --tuning-dir "$out/tuning" > "$OUT/bench_$1.log" 2>&1
  log "benchmark $1 exit $?"
  tar czf "$OUT/$1.tar.gz" --exclude jax_cache "$out" && log "packed $OUT/$1.tar.gz"
}
for t in ${GPU_BENCH_TASKS:-}; do bench "$t" $(( $(left) * 45 / 100 )); done

# Vectorised vs sequential on the GPU, held-out tasks, both ways in one process; the last
# line of the log is `vectorised/sequential speedup: N.NN`.
if [ "$(left)" -gt 120 ]; then
  log "benchmark_throughput (held-out pair, limit $(( $(left) - 60 )) s)"
  timeout -k 15 "$(( $(left) - 60 ))" python3 -m lopt.benchmarks.benchmark_throughput \
    --tasks fmnist-conv-16-32-32,pycode-transformer-3x64 \
    --optimizers adam-tuned,shampoo-tuned,muon-tuned --envelope-factor 2 --lr-grid "$GRID" \
    ${GPU_THROUGHPUT_ARGS:-} > "$OUT/throughput.log" 2>&1
  log "benchmark_throughput exit $?: $(tail -1 "$OUT/throughput.log")"
fi

if [ "$(left)" -gt 90 ]; then
  log "lopt_step.py"
  timeout "$(( $(left) - 45 ))" python3 benchmarks/lopt_step.py --sizes 1m,10m --no-mem \
    --rounds 2 --json "$OUT/lopt_step.json" >> "$OUT/gpu_check.log" 2>&1
fi
if [ "$(left)" -gt 60 ]; then
  log "meta_throughput.py"
  timeout "$(( $(left) - 10 ))" python3 benchmarks/meta_throughput.py --steps 5 \
    >> "$OUT/gpu_check.log" 2>&1
fi
log "done"
