"""The torch-free checkpoint reader: synthetic torch.save-layout zips and the shared .pt files."""

import collections
import io
import pickle
import zipfile

import ml_dtypes
import numpy as np
import pytest

from lopt.learned_opts.nino.torch_io import TorchFormatError, load_torch_zip


class _Global:
  """A GLOBAL opcode `module.name` (torch is not installed, so no real object to pickle)."""

  def __init__(self, module, name):
    self.module, self.name = module, name

  def __call__(self, *a):  # save_reduce wants a callable
    raise NotImplementedError


class _Storage:

  def __init__(self, key, arr, type_name):
    self.key, self.arr, self.type_name = key, arr, type_name


class _Tensor:
  """Pickles like torch: `_rebuild_tensor_v2(storage, offset, size, stride, False, {})`."""

  def __init__(self, storage, offset, size, stride):
    self.args = (storage, offset, tuple(size), tuple(stride), False, collections.OrderedDict())

  def __reduce__(self):
    return _Global("torch._utils", "_rebuild_tensor_v2"), self.args


def _save_global(pickler, obj):
  pickler.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())


class _Writer(pickle._Pickler):
  dispatch = {**pickle._Pickler.dispatch, _Global: _save_global}

  def persistent_id(self, obj):
    if isinstance(obj, _Storage):
      return ("storage", _Global("torch", obj.type_name), obj.key, "cpu", obj.arr.size)
    return None


def _write_pt(path, obj, storages, prefix="archive"):
  buf = io.BytesIO()
  _Writer(buf, protocol=2).dump(obj)
  with zipfile.ZipFile(path, "w") as zf:
    zf.writestr(f"{prefix}/data.pkl", buf.getvalue())
    zf.writestr(f"{prefix}/version", "3\n")
    for st in storages:
      zf.writestr(f"{prefix}/data/{st.key}", st.arr.tobytes())


def test_reads_synthetic_checkpoint(tmp_path):
  rng = np.random.default_rng(0)
  w = rng.standard_normal((3, 4)).astype(np.float32)
  s_w = _Storage("0", w.reshape(-1), "FloatStorage")
  d = rng.standard_normal(6)
  s_d = _Storage("1", d, "DoubleStorage")
  bf = rng.standard_normal(5).astype(ml_dtypes.bfloat16)
  s_bf = _Storage("2", bf, "BFloat16Storage")
  s_i = _Storage("3", np.array([7], np.int64), "LongStorage")
  sd = collections.OrderedDict([
      ("w", _Tensor(s_w, 0, (3, 4), (4, 1))),
      ("w_t", _Tensor(s_w, 0, (4, 3), (1, 4))),          # transposed view of the same storage
      ("row", _Tensor(s_w, 4, (4,), (1,))),              # offset view
      ("d", _Tensor(s_d, 2, (2, 2), (2, 1))),
      ("bf", _Tensor(s_bf, 0, (5,), (1,))),
      ("step", _Tensor(s_i, 0, (), ())),
  ])
  path = tmp_path / "ckpt.pt"
  _write_pt(path, {"state_dict": sd, "model_args": {"hid": 32, "gnn": False}, "tag": (1, "x")},
            [s_w, s_d, s_bf, s_i])
  out = load_torch_zip(path)
  got = out["state_dict"]
  assert isinstance(got, collections.OrderedDict) and list(got) == list(sd)
  np.testing.assert_array_equal(got["w"], w)
  np.testing.assert_array_equal(got["w_t"], w.T)
  np.testing.assert_array_equal(got["row"], w[1])
  np.testing.assert_array_equal(got["d"], d[2:6].reshape(2, 2))
  assert got["bf"].dtype == ml_dtypes.bfloat16
  np.testing.assert_array_equal(got["bf"], bf)
  assert got["step"] == 7
  assert out["model_args"] == {"hid": 32, "gnn": False} and out["tag"] == (1, "x")


def test_refuses_arbitrary_globals(tmp_path):
  path = tmp_path / "evil.pt"
  _write_pt(path, {"x": _EvilReduce()}, [])
  with pytest.raises(TorchFormatError, match="refusing to unpickle"):
    load_torch_zip(path)


class _EvilReduce:

  def __reduce__(self):
    return _Global("os", "system"), ("echo pwned",)


def test_rejects_non_zip_and_missing(tmp_path):
  bad = tmp_path / "legacy.pt"
  bad.write_bytes(b"\x80\x02legacy torch format")
  with pytest.raises(TorchFormatError, match="not a torch zip"):
    load_torch_zip(bad)
  with pytest.raises(FileNotFoundError):
    load_torch_zip(tmp_path / "nope.pt")


def test_rejects_overrunning_tensor(tmp_path):
  s = _Storage("0", np.zeros(4, np.float32), "FloatStorage")
  path = tmp_path / "short.pt"
  _write_pt(path, {"t": _Tensor(s, 2, (3,), (1,))}, [s])
  with pytest.raises(TorchFormatError, match="overruns"):
    load_torch_zip(path)


@pytest.mark.parametrize("name,n_params,n_tensors", [
    ("nino_no_posw", 549_992, 49), ("nino_mlp", 57_384, 11), ("nino_mlp_h32", 5_160, 11)])
def test_reads_official_checkpoints(shared_dir, name, n_params, n_tensors):
  obj = load_torch_zip(shared_dir / "pretrained" / "nino" / f"{name}.pt")
  sd = obj["state_dict"]
  assert len(sd) == n_tensors
  assert sum(v.size for v in sd.values()) == n_params
  assert all(v.dtype == np.float32 and np.isfinite(v).all() for v in sd.values())
  assert sd["layer_embed.weight"].shape[0] == 15
