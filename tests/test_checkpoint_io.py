"""Theta file formats: flax msgpack (VeLO / Celo) without flax, and our orbax + lopt.json."""

import json
import os
import pathlib

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from lopt.learned_opts import checkpoint_io as cio
from lopt.learned_opts import registry

GOLDEN_THETAS = [  # (file under shared/, keys json under golden/learned_opts, top-level format)
    ("golden/learned_opts/adafac_mlp_theta.ckpt", "adafac_mlp_theta_keys.json", "velo"),
    ("golden/learned_opts/velo_small_theta.ckpt", "velo_small_theta_keys.json", "velo"),
    ("pretrained/celo/celo_theta.state", "celo_theta_keys.json", "celo"),
    ("pretrained/celo/celo_adam_theta.state", "celo_adam_theta_keys.json", "celo"),
]


def _keystr_shapes(theta):
  return {jax.tree_util.keystr(k): (list(np.shape(x)), str(np.asarray(x).dtype))
          for k, x in jax.tree_util.tree_flatten_with_path(theta)[0]}


def _normalise_ref_keys(ref):
  # The reference stores haiku's LSTMState namedtuple (`.cell`); the file holds a map.
  return {k.replace(".cell", "['cell']").replace(".hidden", "['hidden']"): (v[0], v[1])
          for k, v in ref.items()}


@pytest.mark.parametrize("rel,keys_json,fmt", GOLDEN_THETAS)
def test_reads_reference_theta_files_with_reference_shapes(shared_dir, rel, keys_json, fmt):
  path = shared_dir / rel
  tree = cio.read_msgpack(path)
  assert cio.detect_format(path) == fmt
  raw = tree["params"] if fmt == "velo" else tree
  ref = json.loads((shared_dir / "golden/learned_opts" / keys_json).read_text())
  assert _keystr_shapes(raw) == _normalise_ref_keys(ref)
  theta = cio.load_theta(path)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(theta))
  if fmt == "velo":
    assert tree["step"] == 0 and tree["gen_id"].startswith("golden_")


@pytest.mark.parametrize("rel,n_params", [("pretrained/celo/celo_theta.state", 37_089),
                                          ("pretrained/celo/celo_adam_theta.state", 36_865)])
def test_celo_parameter_counts(shared_dir, rel, n_params):
  theta = cio.load_theta(shared_dir / rel, "celo")
  assert sum(x.size for x in jax.tree.leaves(theta)) == n_params


def test_full_velo_file_size_and_count(shared_dir):
  path = shared_dir / "golden/learned_opts/velo_full_theta_prng0.ckpt"
  theta = cio.load_theta(path, "velo")
  assert sum(x.size for x in jax.tree.leaves(theta)) == 2_320_385
  assert theta["rnn_params"]["rnn/linear"]["w"].shape == (1024, 2048)
  assert theta["ff_mod_stack"]["~"]["w1"].shape == (256, 4, 4)


@pytest.mark.parametrize("rel", [g[0] for g in GOLDEN_THETAS])
def test_writer_reproduces_reference_bytes(shared_dir, rel, tmp_path):
  data = (shared_dir / rel).read_bytes()
  out = tmp_path / "copy"
  cio.write_msgpack(out, cio.read_msgpack(data))
  assert out.read_bytes() == data
  assert os.listdir(tmp_path) == ["copy"]  # no temp file left behind


def test_roundtrip_dtypes_scalars_tuples_and_chunks(tmp_path, monkeypatch):
  tree = {"bf16": np.arange(6, dtype=ml_dtypes.bfloat16).reshape(2, 3),
          "i32": np.arange(4, dtype=np.int32), "scalar": np.float32(2.5),
          "complex": 1 + 2j, "tup": (np.ones(2, np.float32), 3), "s": "x",
          "big": np.arange(1000, dtype=np.float32).reshape(10, 100)}
  monkeypatch.setattr(cio, "_MAX_CHUNK_BYTES", 512)  # force flax's chunked-array layout
  cio.write_msgpack(tmp_path / "t", tree)
  back = cio.read_msgpack(tmp_path / "t")
  assert back["bf16"].dtype == ml_dtypes.bfloat16
  np.testing.assert_array_equal(back["bf16"], tree["bf16"])
  np.testing.assert_array_equal(back["i32"], tree["i32"])
  assert back["scalar"] == np.float32(2.5) and isinstance(back["scalar"], np.float32)
  assert back["complex"] == 1 + 2j and back["s"] == "x"
  np.testing.assert_array_equal(back["tup"]["0"], np.ones(2)) and back["tup"]["1"] == 3
  np.testing.assert_array_equal(back["big"], tree["big"])


@pytest.mark.parametrize("cut", [0, 1, 100, 0.5, -1])
def test_truncated_file_is_a_clear_error(shared_dir, tmp_path, cut):
  data = (shared_dir / "pretrained/celo/celo_adam_theta.state").read_bytes()
  n = int(len(data) * cut) if isinstance(cut, float) else (cut if cut >= 0 else len(data) + cut)
  bad = tmp_path / "theta.state"
  bad.write_bytes(data[:n])
  with pytest.raises(cio.CheckpointFormatError, match="theta.state"):
    cio.load_theta(bad)


def test_corrupt_array_record_and_garbage(tmp_path):
  import msgpack
  payload = msgpack.packb(([4, 4], "float32", b"\0" * 10), use_bin_type=True)
  bad = tmp_path / "bad.ckpt"
  bad.write_bytes(msgpack.packb({"params": {"w": msgpack.ExtType(1, payload)}, "step": 0}))
  with pytest.raises(cio.CheckpointFormatError, match=r"bad.ckpt.*needs 64 bytes"):
    cio.load_theta(bad)
  junk = tmp_path / "junk"
  junk.write_bytes(b"\x01\x02garbage")
  with pytest.raises(cio.CheckpointFormatError, match="junk"):
    cio.load_theta(junk)
  notmap = tmp_path / "list"
  cio.write_msgpack(notmap, 3)
  with pytest.raises(cio.CheckpointFormatError, match="list"):
    cio.load_theta(notmap)


def test_wrong_format_argument(shared_dir):
  with pytest.raises(cio.CheckpointFormatError, match="format='celo'"):
    cio.load_theta(shared_dir / "pretrained/celo/celo_theta.state", "velo")
  with pytest.raises(cio.CheckpointFormatError, match="format='velo'"):
    cio.load_theta(shared_dir / "golden/learned_opts/adafac_mlp_theta.ckpt", "celo")
  with pytest.raises(FileNotFoundError):
    cio.load_theta(shared_dir / "no_such_file")


def test_theta_shape_mismatch_names_file_and_key(shared_dir):
  path = shared_dir / "pretrained/celo/celo_adam_theta.state"
  with pytest.raises(cio.ThetaMismatchError) as e:
    cio.load_theta(path, lopt=registry.get("mlp"))
  msg = str(e.value)
  assert "celo_adam_theta.state" in msg and "missing keys" in msg and "mlp/~/linear_0/w" in msg


def test_orbax_roundtrip_self_describing(tmp_path):
  lopt = registry.get("rnn_mlp", lstm_hidden_size=8)
  theta = lopt.init_meta(jax.random.PRNGKey(3))
  out = cio.save_theta(tmp_path / "ckpt", lopt, theta, extra_meta={"outer_step": 7})
  assert sorted(os.listdir(tmp_path)) == ["ckpt"]  # the temp dir was renamed into place
  meta = json.loads((out / "lopt.json").read_text())
  assert meta["architecture"] == "rnn_mlp" and meta["format_version"] == 1
  assert meta["hparams"]["lstm_hidden_size"] == 8 and meta["outer_step"] == 7
  assert meta["hparams"]["decays"] == [0.5, 0.9, 0.99, 0.999, 0.9999]
  assert cio.detect_format(out) == "orbax"
  lopt2, theta2 = cio.load_optimizer(out)
  assert lopt2 == lopt  # tuples restored from JSON lists, so hashable and equal
  hash(lopt2)
  jax.tree.map(np.testing.assert_array_equal, theta2, theta)
  with pytest.raises(FileExistsError):
    cio.save_theta(out, lopt, theta)
  cio.save_theta(out, lopt, jax.tree.map(lambda x: x + 1, theta), overwrite=True)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b + 1),
               cio.load_theta(out), theta)
  assert sorted(os.listdir(tmp_path)) == ["ckpt"]


def test_orbax_wrong_architecture_and_bad_theta_leave_nothing(tmp_path):
  lopt = registry.get("rnn_mlp", lstm_hidden_size=8)
  theta = lopt.init_meta(jax.random.PRNGKey(0))
  out = cio.save_theta(tmp_path / "ckpt", lopt, theta)
  with pytest.raises(cio.ThetaMismatchError, match="holds a 'rnn_mlp' checkpoint"):
    cio.load_optimizer(out, architecture="mlp")
  with pytest.raises(cio.ThetaMismatchError, match=r"(?s)ckpt.*shape mismatches"):
    cio.load_theta(out, lopt=registry.get("rnn_mlp"))
  bad = dict(theta, initial_from_mlp=jnp.zeros(3))
  with pytest.raises(cio.ThetaMismatchError, match="initial_from_mlp"):
    cio.save_theta(tmp_path / "bad", lopt, bad)
  assert sorted(os.listdir(tmp_path)) == ["ckpt"]


def test_orbax_corrupt_directory(tmp_path):
  lopt = registry.get("learnable_adam")
  out = cio.save_theta(tmp_path / "ckpt", lopt, lopt.init_meta(jax.random.PRNGKey(0)))
  for p in sorted((out / "theta").rglob("*"), reverse=True):
    if p.is_file() and p.name != "_CHECKPOINT_METADATA":
      p.write_bytes(b"broken")
  with pytest.raises(cio.CheckpointFormatError, match="ckpt"):
    cio.load_theta(out)
  (out / "lopt.json").write_text("{not json")
  with pytest.raises(cio.CheckpointFormatError, match="lopt.json"):
    cio.load_optimizer(out)


def test_msgpack_writer_velo_and_celo_formats(tmp_path):
  lopt = registry.get("mlp", hidden_size=4)
  theta = lopt.init_meta(jax.random.PRNGKey(0))
  cio.save_theta_msgpack(tmp_path / "params", theta, format="velo", gen_id="g", step=5)
  cio.save_theta_msgpack(tmp_path / "theta.state", theta, format="celo")
  raw = cio.read_msgpack(tmp_path / "params")
  assert raw["gen_id"] == "g" and raw["step"] == 5
  for name, fmt in (("params", "velo"), ("theta.state", "celo")):
    assert cio.detect_format(tmp_path / name) == fmt
    lopt2, theta2 = cio.load_optimizer(tmp_path / name, architecture="mlp", hidden_size=4)
    jax.tree.map(np.testing.assert_array_equal, theta2, theta)
  with pytest.raises(ValueError, match="pass architecture"):
    cio.load_optimizer(tmp_path / "params")


def test_reading_needs_no_tensorflow_or_torch(shared_dir):
  import subprocess
  import sys
  code = ("import sys; from lopt.learned_opts import load_theta; "
          f"load_theta({str(shared_dir / 'pretrained/celo/celo_theta.state')!r}); "
          "bad = [m for m in ('tensorflow', 'torch', 'flax') if m in sys.modules]; "
          "assert not bad, bad")
  subprocess.run([sys.executable, "-c", code], check=True, timeout=120,
                 cwd=pathlib.Path(__file__).parent)


def test_velo_directory_layout(shared_dir, tmp_path):
  """learned_optimization's layout `<name>/params` (+ config.gin) loads from the directory."""
  (tmp_path / "ck").mkdir()
  os.symlink(shared_dir / "golden/learned_opts/adafac_mlp_theta.ckpt", tmp_path / "ck/params")
  assert cio.detect_format(tmp_path / "ck") == "velo"
  theta = cio.load_theta(tmp_path / "ck")
  assert theta["nn"]["~"]["w0"].shape == (39, 4)


_DTYPES = ["float32", "float16", "bfloat16", "int32", "uint8", "bool", "float64", "int64"]


@hypothesis.settings(max_examples=25, deadline=None, derandomize=True)
@hypothesis.given(shape=st.lists(st.integers(0, 4), max_size=4), dtype=st.sampled_from(_DTYPES),
                  key=st.text(min_size=1, max_size=8))
def test_msgpack_roundtrip_any_array(shape, dtype, key):
  rng = np.random.default_rng(0)
  arr = (rng.normal(size=shape) * 10).astype(ml_dtypes.bfloat16 if dtype == "bfloat16" else dtype)
  back = cio.from_msgpack_bytes(cio.to_msgpack_bytes({key: {"a": arr}}))
  assert back[key]["a"].dtype == arr.dtype and back[key]["a"].shape == arr.shape
  np.testing.assert_array_equal(back[key]["a"], arr)
