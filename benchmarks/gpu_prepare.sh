#!/usr/bin/env bash
# Builds .gpu/ (git-ignored), what benchmarks/gpu_check.sh needs on a lent GPU machine that
# has no network: Python 3.12 wheels of the packages its image lacks, the prepared datasets'
# array caches (loaded there without tfds), and the Celo checkpoints from ../shared.
# Run here, once, after `make demo` or the held-out benchmark has prepared the datasets:
#   bash benchmarks/gpu_prepare.sh
# then carry `.gpu` (see gpu_check.sh). Stays under the device's 64 MiB transfer limit.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=.gpu
rm -rf "$OUT.tmp" && mkdir -p "$OUT.tmp/whl" "$OUT.tmp/celo"
trap 'rm -rf "$OUT.tmp"' EXIT
# The device image has jax, optax, orbax, chex, msgpack, tqdm, matplotlib, scikit-learn.
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$OUT.tmp/whl" dm-haiku==0.0.17 jmp==0.0.4
# Datasets: the .npz array caches only, recompressed (tfds is not needed to read them).
"$PY" - "$OUT.tmp/tfds" <<'PY'
import pathlib, sys
import numpy as np
from lopt.tasks import datasets
out = pathlib.Path(sys.argv[1])
for name in ("fashion_mnist", "pycode"):
  for split in datasets.SPLITS:
    datasets.load(name, split)                    # prepares it and writes the cache if needed
    src = datasets.array_cache_path(name, split)
    dst = out / src.relative_to(datasets.resolve_data_dir())
    dst.parent.mkdir(parents=True, exist_ok=True)
    with np.load(src) as z:
      np.savez_compressed(dst, **{k: z[k] for k in z.files})
    print(f"{name}/{split}: {dst.stat().st_size / 2**20:.1f} MiB")
PY
cp ../shared/pretrained/celo/celo_theta.state ../shared/pretrained/celo/celo_adam_theta.state \
  ../shared/pretrained/celo/LICENSE "$OUT.tmp/celo/"
rm -rf "$OUT" && mv "$OUT.tmp" "$OUT"
du -sh "$OUT"
