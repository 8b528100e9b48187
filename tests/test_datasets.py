"""Tests for lopt.tasks.datasets: the tfds builders, `load`, the stock path, helpers, CLI."""

import argparse
import gzip
import hashlib
import pathlib
import struct
import subprocess
import sys
import textwrap
from concurrent import futures

import jax
import numpy as np
import pytest

from lopt.tasks import datasets
from lopt.tasks.datasets import _builders, stock

FASHION_DIR = pathlib.Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
  """A fresh data dir with digits, mnist1d and pycode prepared once per session (worker)."""
  d = tmp_path_factory.mktemp("lopt_tfds")
  for name in ("digits", "mnist1d", "pycode"):
    datasets.prepare(name, data_dir=d)
  return d


def _rows(x):
  """Each example as bytes, for set/multiset comparisons."""
  return [r.tobytes() for r in np.ascontiguousarray(x).reshape(len(x), -1)]


# ----------------------------------------------------------------------------- registry & errors

def test_unknown_dataset_lists_valid_names(data_dir):
  with pytest.raises(datasets.UnknownDatasetError) as e:
    datasets.load("cifar11", "train", data_dir=data_dir)
  assert isinstance(e.value, ValueError)
  for name in ("digits", "mnist1d", "pycode", "fashion_mnist", "mnist", "cifar10"):
    assert name in str(e.value)
  with pytest.raises(datasets.UnknownDatasetError):
    datasets.prepare("nope", data_dir=data_dir)


def test_unknown_split_is_an_error(data_dir):
  with pytest.raises(ValueError, match="valid splits: train, valid, test"):
    datasets.load("digits", "validation", data_dir=data_dir)


def test_registry_is_consistent():
  for name, info in datasets.DATASETS.items():
    assert info.name == name
    assert info.kind in ("image", "text")
    assert (info.num_classes is not None) == (info.kind == "image")
    assert info.offline != info.stock
    if info.stock:
      assert set(info.tfds_splits) == set(datasets.SPLITS)
  assert set(datasets.OFFLINE) == {"digits", "mnist1d", "pycode", "fashion_mnist"}


def test_data_dir_resolution(monkeypatch, tmp_path):
  monkeypatch.setenv("LOPT_DATA_DIR", str(tmp_path / "env"))
  assert datasets.resolve_data_dir() == (tmp_path / "env").resolve()
  assert datasets.resolve_data_dir(tmp_path / "arg") == (tmp_path / "arg").resolve()
  monkeypatch.delenv("LOPT_DATA_DIR")
  assert datasets.resolve_data_dir() == pathlib.Path("~/.cache/lopt/tfds").expanduser().resolve()


# ----------------------------------------------------------------------------- digits

def test_digits_shapes_dtypes_and_range(data_dir):
  for split, n in (("train", 1197), ("valid", 300), ("test", 300)):
    d = datasets.load("digits", split, data_dir=data_dir)
    assert d["image"].shape == (n, 8, 8, 1) and d["image"].dtype == np.float32
    assert d["label"].shape == (n,) and d["label"].dtype == np.int32
    assert d["image"].min() == 0.0 and d["image"].max() == 1.0
    assert set(np.unique(d["label"])) == set(range(10))  # every class in every split


def test_digits_splits_partition_sklearn_digits(data_dir):
  from sklearn.datasets import load_digits
  bunch = load_digits()
  ref = sorted(zip(_rows((bunch.images[..., None] / 16).astype(np.float32)), bunch.target))
  parts = [datasets.load("digits", s, data_dir=data_dir) for s in datasets.SPLITS]
  got = sorted(p for d in parts for p in zip(_rows(d["image"]), d["label"]))
  assert got == ref  # together the splits are exactly the 1,797 digits, each once
  # disjoint by example: no (image, label) pair of train appears in test or valid unless
  # sklearn itself holds duplicates of it
  counts = {}
  for r in ref:
    counts[r] = counts.get(r, 0) + 1
  train = set(zip(_rows(parts[0]["image"]), parts[0]["label"]))
  for d in parts[1:]:
    for r in zip(_rows(d["image"]), d["label"]):
      assert r not in train or counts[r] > 1


def test_load_is_cached_and_read_only(data_dir):
  a = datasets.load("digits", "train", data_dir=data_dir)
  b = datasets.load("digits", "train", data_dir=data_dir)
  assert a is b
  with pytest.raises(ValueError):
    a["image"][0, 0, 0, 0] = 5.0


def test_decoded_arrays_are_cached_on_disk(tmp_path, monkeypatch):
  """The second process-level load reads the .npz beside the prepared data, not the
  records; a corrupt cache file is rebuilt."""
  from lopt.tasks.datasets import _load
  datasets.clear_cache()
  first = {s: datasets.load("digits", s, data_dir=tmp_path) for s in datasets.SPLITS}
  caches = sorted(tmp_path.rglob("lopt_arrays_*.npz"))
  assert [c.name for c in caches] == [f"lopt_arrays_{s}.npz" for s in sorted(datasets.SPLITS)]
  assert not list(tmp_path.rglob(".*.tmp"))                  # no temporary files left
  datasets.clear_cache()
  monkeypatch.setattr(_load, "_read_all", lambda source: pytest.fail("read the records"))
  again = datasets.load("digits", "train", data_dir=tmp_path)
  np.testing.assert_array_equal(again["image"], first["train"]["image"])
  np.testing.assert_array_equal(again["label"], first["train"]["label"])
  assert again["image"].dtype == np.float32 and not again["image"].flags.writeable
  monkeypatch.undo()
  train_cache = [c for c in caches if c.name == "lopt_arrays_train.npz"][0]
  train_cache.write_bytes(b"not an npz")
  datasets.clear_cache()
  rebuilt = datasets.load("digits", "train", data_dir=tmp_path)
  np.testing.assert_array_equal(rebuilt["image"], first["train"]["image"])
  with np.load(train_cache) as z:
    assert z["image"].shape == (1197, 8, 8, 1)
  datasets.clear_cache()


def test_prepared_dataset_loads_without_tfds(tmp_path):
  """Once prepared and loaded, a lopt dataset loads from its array cache in a process
  where tfds cannot be imported (e.g. a GPU machine given only the cache files)."""
  datasets.clear_cache()
  first = datasets.load("digits", "valid", data_dir=tmp_path)
  path = datasets.array_cache_path("digits", "valid", data_dir=tmp_path)
  assert path is not None and path.is_file()
  assert path.parent == pathlib.Path(str(datasets.prepare("digits", data_dir=tmp_path).data_path))
  assert datasets.array_cache_path("mnist", "train") is None       # stock: tfds owns it
  np.save(tmp_path / "expected.npy", first["image"])
  script = textwrap.dedent(f"""
      import sys
      sys.modules["tensorflow_datasets"] = None   # any import of tfds now fails
      import numpy as np
      from lopt.tasks import datasets
      d = datasets.load("digits", "valid", data_dir={str(tmp_path)!r})
      np.testing.assert_array_equal(d["image"], np.load({str(tmp_path / "expected.npy")!r}))
      try:
        datasets.load("digits", "test", data_dir={str(tmp_path / "empty")!r})
      except ImportError:
        print("unprepared needs tfds")
      print("ok")
  """)
  out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       timeout=120)
  assert out.returncode == 0, out.stderr
  assert out.stdout.split() == ["unprepared", "needs", "tfds", "ok"]
  datasets.clear_cache()


def test_prepare_is_deterministic(data_dir, tmp_path):
  datasets.clear_cache()
  for name in ("digits",):  # mnist1d: compared with a fresh generation below
    for split in datasets.SPLITS:
      a = datasets.load(name, split, data_dir=data_dir)
      b = datasets.load(name, split, data_dir=tmp_path)  # prepared again from scratch
      np.testing.assert_array_equal(a["image"], b["image"])
      np.testing.assert_array_equal(a["label"], b["label"])


# ----------------------------------------------------------------------------- mnist1d

def test_mnist1d_matches_a_fresh_generation(data_dir):
  state = np.random.get_state()[1].copy()
  ref = _builders.mnist1d_arrays()  # make_dataset(get_dataset_args()), offline
  np.testing.assert_array_equal(np.random.get_state()[1], state)  # global RNG left alone
  tr, va, te = (datasets.load("mnist1d", s, data_dir=data_dir) for s in datasets.SPLITS)
  assert tr["image"].shape == (3500, 40) and va["image"].shape == (500, 40)
  assert te["image"].shape == (1000, 40) and te["label"].dtype == np.int32
  for split, d in zip(datasets.SPLITS, (tr, va, te)):
    np.testing.assert_array_equal(d["image"], ref[split][0])
    np.testing.assert_array_equal(d["label"], ref[split][1])
  assert set(np.unique(tr["label"])) == set(range(10))


# ----------------------------------------------------------------------------- pycode

def test_pycode_streams(data_dir):
  files = _builders.pycode_files()
  assert files == _builders.pycode_files()  # deterministic file list
  names = {s: {p.as_posix() for p in fs} for s, fs in files.items()}
  assert not names["train"] & names["valid"]
  assert not names["train"] & names["test"]
  assert not names["valid"] & names["test"]
  for split, budget in _builders.PYCODE_BUDGET.items():
    assert files[split] == sorted(files[split])
    tokens = datasets.load("pycode", split, data_dir=data_dir)["tokens"]
    assert tokens.dtype == np.uint8 and tokens.ndim == 1
    assert budget // 2 < tokens.size <= budget + len(files[split])  # + added final newlines
    first = files[split][0].read_bytes()
    assert tokens[:len(first)].tobytes() == first  # files concatenated in sorted order
    assert b"def " in tokens[:200_000].tobytes()


# ----------------------------------------------------------------------------- fashion_mnist

def _write_idx(path, array):
  header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(
      f">{array.ndim}I", *array.shape)
  with gzip.open(path, "wb") as f:
    f.write(header + array.astype(np.uint8).tobytes())


def _tiny_fashion(folder, n_train=12, n_test=5):
  rng = np.random.default_rng(0)
  arrays = {
      "train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
      "train_labels": rng.integers(0, 10, (n_train,), dtype=np.uint8),
      "test_images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
      "test_labels": rng.integers(0, 10, (n_test,), dtype=np.uint8),
  }
  folder.mkdir(parents=True, exist_ok=True)
  for key, filename in _builders.FASHION_MNIST_FILES.items():
    _write_idx(folder / filename, arrays[key])
  return arrays


def test_fashion_mnist_builder_on_tiny_idx_files(tmp_path):
  ref = _tiny_fashion(tmp_path / "idx")
  dd = tmp_path / "data"
  tr = datasets.load("fashion_mnist", "train", data_dir=dd, manual_dir=tmp_path / "idx")
  va = datasets.load("fashion_mnist", "valid", data_dir=dd)
  te = datasets.load("fashion_mnist", "test", data_dir=dd)
  # valid = the last 1/6 of the official train set (2 of 12 here, 10,000 of 60,000 for real)
  assert tr["image"].shape == (10, 28, 28, 1) and va["image"].shape == (2, 28, 28, 1)
  assert te["image"].shape == (5, 28, 28, 1) and tr["image"].dtype == np.float32
  x = ref["train_images"][..., None] / np.float32(255)
  np.testing.assert_allclose(tr["image"], x[:10], rtol=1e-6)
  np.testing.assert_allclose(va["image"], x[10:], rtol=1e-6)
  np.testing.assert_allclose(te["image"], ref["test_images"][..., None] / np.float32(255),
                             rtol=1e-6)
  np.testing.assert_array_equal(tr["label"], ref["train_labels"][:10])
  np.testing.assert_array_equal(va["label"], ref["train_labels"][10:])
  np.testing.assert_array_equal(te["label"], ref["test_labels"])


def test_fashion_mnist_missing_dir_says_how_to_get_files(tmp_path):
  with pytest.raises(datasets.DatasetUnavailableError) as e:
    datasets.prepare("fashion_mnist", data_dir=tmp_path / "data", manual_dir=tmp_path / "nope")
  assert "apt-get install dataset-fashion-mnist" in str(e.value)
  assert "LOPT_FASHION_MNIST_DIR" in str(e.value)
  assert not (tmp_path / "data" / "lopt_fashion_mnist").exists()  # no partial files


def test_fashion_mnist_env_var_names_the_dir(tmp_path, monkeypatch):
  monkeypatch.setenv("LOPT_FASHION_MNIST_DIR", str(tmp_path / "elsewhere"))
  with pytest.raises(datasets.DatasetUnavailableError, match="elsewhere"):
    datasets.load("fashion_mnist", "train", data_dir=tmp_path / "data")


def test_read_idx_rejects_malformed_files(tmp_path):
  bad = tmp_path / "bad.gz"
  with gzip.open(bad, "wb") as f:
    f.write(b"\x00\x00\x0d\x01" + b"\x00" * 8)  # dtype 0x0d (float), not ubyte
  with pytest.raises(ValueError, match="not an IDX file"):
    _builders.read_idx(bad)
  short = tmp_path / "short.gz"
  with gzip.open(short, "wb") as f:
    f.write(struct.pack(">BBBBI", 0, 0, 8, 1, 10) + b"\x01" * 3)
  with pytest.raises(ValueError, match="holds 3 bytes"):
    _builders.read_idx(short)


@pytest.mark.skipif(not FASHION_DIR.is_dir(),
                    reason=f"{FASHION_DIR} absent (apt-get install dataset-fashion-mnist)")
def test_real_fashion_mnist_from_debian_files():
  # The default data dir (prepared once per machine, ~45 MB, like any user's first `load`):
  # checked against the raw files below, so a stale copy cannot pass.
  tr, va, te = (datasets.load("fashion_mnist", s, manual_dir=FASHION_DIR)
                for s in datasets.SPLITS)
  assert tr["image"].shape == (50000, 28, 28, 1)
  assert va["image"].shape == (10000, 28, 28, 1) and te["image"].shape == (10000, 28, 28, 1)
  assert 0.0 <= tr["image"].min() and tr["image"].max() == 1.0
  np.testing.assert_array_equal(np.bincount(te["label"]), [1000] * 10)  # balanced test set
  np.testing.assert_array_equal(np.bincount(np.concatenate([tr["label"], va["label"]])),
                                [6000] * 10)
  raw = _builders.read_idx(FASHION_DIR / "t10k-images-idx3-ubyte.gz")
  np.testing.assert_array_equal((te["image"][..., 0] * 255).round().astype(np.uint8), raw)


# ----------------------------------------------------------------------------- concurrency

def test_concurrent_prepare_from_processes_and_threads(tmp_path):
  script = textwrap.dedent(f"""
      import hashlib
      from lopt.tasks import datasets
      d = datasets.load("digits", "train", data_dir={str(tmp_path / "procs")!r})
      print(hashlib.sha256(d["image"].tobytes() + d["label"].tobytes()).hexdigest())
  """)
  procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True) for _ in range(2)]
  outs = [p.communicate(timeout=180) for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err[-2000:]
  digests = {out.strip().splitlines()[-1] for out, _ in outs}
  d = datasets.load("digits", "train", data_dir=tmp_path / "procs")
  assert digests == {hashlib.sha256(d["image"].tobytes() + d["label"].tobytes()).hexdigest()}
  with futures.ThreadPoolExecutor(3) as pool:
    builders = list(pool.map(lambda _: datasets.prepare("digits", data_dir=tmp_path / "thr"),
                             range(3)))
  assert all(b.info.splits["train"].num_examples == 1197 for b in builders)
  leftovers = [p for p in (tmp_path / "thr" / "lopt_digits").iterdir() if p.name != "1.0.0"]
  assert not leftovers


# ----------------------------------------------------------------------------- stock tfds

def test_stock_offline_fails_fast_naming_alternatives(tmp_path, monkeypatch):
  def no_probe(*args, **kwargs):
    raise AssertionError("LOPT_OFFLINE must skip the network probe")
  monkeypatch.setattr(stock, "network_available", no_probe)
  monkeypatch.setenv("LOPT_OFFLINE", "1")
  with pytest.raises(datasets.DatasetUnavailableError) as e:
    datasets.load("mnist", "train", data_dir=tmp_path)
  for name in datasets.OFFLINE:
    assert name in str(e.value)
  assert "lopt datasets prepare mnist" in str(e.value)


def test_stock_without_tensorflow_or_network(tmp_path, monkeypatch):
  monkeypatch.delenv("LOPT_OFFLINE", raising=False)
  monkeypatch.setattr(stock, "has_tensorflow", lambda: False)
  monkeypatch.setattr(stock, "network_available", lambda *a, **k: True)
  with pytest.raises(datasets.DatasetUnavailableError, match="TensorFlow"):
    datasets.load("cifar10", "test", data_dir=tmp_path)
  monkeypatch.setattr(stock, "has_tensorflow", lambda: True)
  monkeypatch.setattr(stock, "network_available", lambda *a, **k: False)
  with pytest.raises(datasets.DatasetUnavailableError, match="no network connection to "
                     "www.cs.toronto.edu"):
    datasets.load("cifar10", "test", data_dir=tmp_path)


def test_stock_path_with_tfds_mock_data(tmp_path, monkeypatch):
  import tensorflow_datasets as tfds
  monkeypatch.delenv("LOPT_OFFLINE", raising=False)
  monkeypatch.setattr(stock, "has_tensorflow", lambda: True)  # as if online with TF
  monkeypatch.setattr(stock, "network_available", lambda *a, **k: True)
  with tfds.testing.mock_data(num_examples=6, policy=tfds.testing.MockPolicy.USE_CODE):
    for split in datasets.SPLITS:
      d = datasets.load("cifar10", split, data_dir=tmp_path)
      assert d["image"].shape == (6, 32, 32, 3) and d["image"].dtype == np.float32
      assert 0.0 <= d["image"].min() and d["image"].max() <= 1.0
      assert d["label"].dtype == np.int32 and d["label"].max() < 10
    text = datasets.load("tiny_shakespeare", "train", data_dir=tmp_path)["tokens"]
    assert text.dtype == np.uint8 and text.size > 6
    batches = list(datasets.iterate_batches("mnist", "train", 2, data_dir=tmp_path, epochs=1))
    assert [b["image"].shape for b in batches] == [(2, 28, 28, 1)] * 3
  datasets.clear_cache()


# ----------------------------------------------------------------------------- helpers

def test_resize_images_area():
  rng = np.random.default_rng(0)
  x = rng.random((3, 28, 28, 2), dtype=np.float32)
  pooled = x.reshape(3, 7, 4, 7, 4, 2).mean(axis=(2, 4))
  np.testing.assert_allclose(datasets.resize_images(x, 7), pooled, rtol=1e-5, atol=1e-6)
  y = datasets.resize_images(x, 8)  # 3.5 input pixels per output pixel
  assert y.shape == (3, 8, 8, 2) and isinstance(y, np.ndarray)
  np.testing.assert_allclose(y.mean(axis=(1, 2)), x.mean(axis=(1, 2)), rtol=1e-5)
  np.testing.assert_allclose(datasets.resize_images(np.ones((1, 28, 28, 1)), (8, 4)), 1.0,
                             rtol=1e-6)
  yj = jax.jit(lambda a: datasets.resize_images(a, 8))(jax.numpy.asarray(x))
  assert isinstance(yj, jax.Array)
  np.testing.assert_allclose(np.asarray(yj), y, rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="down only"):
    datasets.resize_images(x, 32)


def test_sample_batch_and_windows_inside_jit(data_dir):
  d = jax.device_put(datasets.load("digits", "train", data_dir=data_dir))
  batch = jax.jit(datasets.sample_batch, static_argnums=2)(jax.random.PRNGKey(0), d, 16)
  assert batch["image"].shape == (16, 8, 8, 1) and batch["label"].shape == (16,)
  table = dict(zip(_rows(np.asarray(d["image"])), np.asarray(d["label"])))
  for img, lab in zip(_rows(np.asarray(batch["image"])), np.asarray(batch["label"])):
    assert table[img] == lab  # images and labels stay paired
  other = datasets.sample_batch(jax.random.PRNGKey(1), d, 16)
  assert not np.array_equal(np.asarray(batch["label"]), np.asarray(other["label"])) or \
      not np.array_equal(np.asarray(batch["image"]), np.asarray(other["image"]))
  tokens = jax.numpy.arange(1000, dtype=jax.numpy.int32)
  w = jax.jit(datasets.sample_windows, static_argnums=(2, 3))(jax.random.PRNGKey(2), tokens, 8, 33)
  assert w.shape == (8, 33)
  np.testing.assert_array_equal(np.diff(np.asarray(w), axis=1), 1)  # contiguous windows


def test_iterate_batches_is_seeded(data_dir):
  def run(seed):
    return list(datasets.iterate_batches("digits", "valid", 64, seed=seed, data_dir=data_dir,
                                         epochs=1))
  a, b, c = run(0), run(0), run(1)
  assert len(a) == 300 // 64 and a[0]["image"].shape == (64, 8, 8, 1)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["label"], y["label"])
  assert any(not np.array_equal(x["label"], y["label"]) for x, y in zip(a, c))
  rows = next(datasets.iterate_batches("pycode", "test", 4, seq_len=128, data_dir=data_dir))
  assert rows["tokens"].shape == (4, 128) and rows["tokens"].dtype == np.uint8
  with pytest.raises(ValueError, match="seq_len"):
    next(datasets.iterate_batches("pycode", "test", 4, data_dir=data_dir))


# ----------------------------------------------------------------------------- CLI

def _cli(argv):
  from lopt.cli import datasets as cli_datasets
  parser = argparse.ArgumentParser(prog="lopt")
  cli_datasets.register(parser.add_subparsers(dest="command"))
  args = parser.parse_args(argv)
  return args.func(args)


def test_cli_lists_and_prepares(data_dir, tmp_path, capsys):
  assert _cli(["datasets", "--data-dir", str(data_dir)]) == 0
  out = capsys.readouterr().out
  for name in datasets.DATASETS:
    assert name in out
  assert "1,197/300/300" in out and "prepared" in out and "needs internet + TF" in out
  assert _cli(["datasets", "prepare", "digits", "--data-dir", str(tmp_path)]) == 0
  assert "'train': 1197" in capsys.readouterr().out
  assert datasets.is_prepared("digits", data_dir=tmp_path)
  from lopt.cli import UsageError
  with pytest.raises(UsageError, match="valid names"):
    _cli(["datasets", "prepare", "nope", "--data-dir", str(tmp_path)])
  with pytest.raises(UsageError, match="apt-get install"):  # missing files: bad input, exit 2
    _cli(["datasets", "prepare", "fashion_mnist", "--data-dir", str(tmp_path),
          "--manual-dir", str(tmp_path / "none")])
