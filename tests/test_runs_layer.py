"""`lopt.rundir`: claim/refuse, JSONL resume truncation, checkpoints (zero-size leaves, the
older layouts), atomic writes, strict JSON and the `LOPT_*` settings."""

from __future__ import annotations

import json
import pathlib

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from lopt import rundir
from lopt.rundir import settings


# -- claim / refuse ---------------------------------------------------------------------

def test_claim_writes_then_accepts_the_same_config_and_refuses_another(tmp_path):
  run = rundir.RunDir(tmp_path / "run")
  run.claim({"lr": 0.1, "steps": 10, "shape": (2, 3)})
  assert json.loads((tmp_path / "run" / "config.json").read_text())["shape"] == [2, 3]
  run.claim({"lr": 0.1, "steps": 10, "shape": (2, 3)})  # the same run: resume
  with pytest.raises(rundir.RunDirMismatchError, match=r"different config \(lr: 0.1 != 0.2, "
                     r"new: None != 1\)") as e:
    run.claim({"lr": 0.2, "steps": 10, "shape": (2, 3), "new": 1})
  assert "another output folder" in str(e.value)
  assert run.stored_config() == {"lr": 0.1, "steps": 10, "shape": [2, 3]}  # untouched


def test_claim_with_compared_keys_rewrites_the_others_and_provenance_is_not_compared(
    tmp_path):
  run = rundir.RunDir(tmp_path, config_file="run.json")
  run.claim({"tasks": ["a"], "seeds": [0]}, keys=("tasks",), record_provenance=True)
  assert "jax" in json.loads(run.config_path.read_text())["provenance"]
  run.claim({"tasks": ["a"], "seeds": [0, 1]}, keys=("tasks",))    # more seeds: fine
  assert run.stored_config() == {"tasks": ["a"], "seeds": [0, 1]}
  with pytest.raises(rundir.RunDirMismatchError, match="tasks"):
    run.claim({"tasks": ["b"], "seeds": [0]}, keys=("tasks",))


def test_claim_raises_the_callers_subclass(tmp_path):
  class CommandError(Exception):
    pass

  class Mine(CommandError, rundir.RunDirMismatchError):
    pass
  rundir.RunDir(tmp_path).claim({"a": 1})
  with pytest.raises(CommandError, match="a: 1 != 2"):
    rundir.RunDir(tmp_path).claim({"a": 2}, error=Mine)
  rundir.RunDir(tmp_path).check({"a": 1})  # check writes nothing and accepts the same


# -- metrics ----------------------------------------------------------------------------

def test_metrics_resume_truncates_rows_past_the_restored_step(tmp_path):
  path = tmp_path / "metrics.jsonl"
  with rundir.MetricsWriter(path, tensorboard=False) as w:
    for step in range(1, 6):
      w.write({"step": step, "loss": np.float32(1.0 / step)})
  with path.open("a") as f:
    f.write('{"step": 6, "lo')                       # a row torn by a crash
  with rundir.MetricsWriter(path, resume_step=3, tensorboard=False) as w:
    w.write({"step": 4, "loss": float("nan"), "grad": np.inf})
  rows = rundir.read_rows(path)
  assert [r["step"] for r in rows] == [1, 2, 3, 4]
  assert rows[-1] == {"step": 4, "loss": None, "grad": None}
  assert "NaN" not in path.read_text() and "Infinity" not in path.read_text()
  rundir.MetricsWriter(path, resume_step=None, tensorboard=False).close()  # a fresh start
  assert path.read_text() == ""


# -- checkpoints ------------------------------------------------------------------------

def _state():
  return {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "step": np.int32(7),
          "key": np.asarray(jax.random.PRNGKey(3)), "empty": np.zeros((0, 4), np.float32),
          "nested": (np.float32(1.5), {"b": np.ones(2, np.int64)})}


def _assert_same(a, b):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(la) == len(lb)
  for x, y in zip(la, lb):
    np.testing.assert_array_equal(x, y)
    assert np.asarray(x).dtype == np.asarray(y).dtype and np.shape(x) == np.shape(y)


def test_checkpoint_roundtrip_with_a_zero_size_leaf_keeps_the_last_n(tmp_path):
  state = _state()
  with rundir.Checkpointer(tmp_path / "ck", keep=2) as ck:
    assert ck.latest_step() is None
    for step in (1, 2, 3):
      ck.save(step, state, meta={"eval_index": step})
    assert ck.latest_step() == 3 and ck.meta(3)["eval_index"] == 3
    template = jax.tree.map(np.zeros_like, state)
    back = ck.restore(3, template)
    abstract = ck.restore(3, jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x),
                                                                         np.asarray(x).dtype),
                                          state))
  _assert_same(state, back)
  _assert_same(state, abstract)
  assert sorted(p.name for p in (tmp_path / "ck").iterdir() if p.name.isdigit()) == ["2", "3"]
  back["w"][0, 0] = 9.0  # restored arrays are writable host copies
  with pytest.raises(rundir.LayoutMismatchError, match="different state layout"):
    rundir.Checkpointer(tmp_path / "ck").restore(3, dict(state, extra=np.zeros(2)))


def test_older_checkpoint_layouts_still_restore(tmp_path):
  """Run folders written before this layer: meta-training (`default` item of flat leaves +
  leaves.json), nowcaster fitting (`default` item of the tree), inner training (`state` item
  of the tree with 1-element stand-ins for zero-size leaves, and a `meta` JSON item)."""
  state = _state()
  leaves = jax.tree.leaves(state)
  options = ocp.CheckpointManagerOptions(enable_async_checkpointing=False)
  # meta-training
  d = tmp_path / "meta"
  with ocp.CheckpointManager(d.absolute(), options=options) as m:
    m.save(5, args=ocp.args.StandardSave({f"l{i:05d}": x for i, x in enumerate(leaves)
                                          if np.size(x)}))
  (d / "leaves.json").write_text(json.dumps(
      [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(state)[0]]))
  # nowcaster fitting (no zero-size leaves there)
  small = {"theta": {"w": state["w"]}, "opt_state": (state["step"],)}
  with ocp.CheckpointManager((tmp_path / "fit").absolute(), options=options) as m:
    m.save(4, args=ocp.args.StandardSave(small))
  # inner training
  packed = jax.tree.map(lambda x: np.zeros([1], x.dtype) if np.size(x) == 0 else x, state)
  with ocp.CheckpointManager((tmp_path / "train").absolute(), options=options) as m:
    m.save(2, args=ocp.args.Composite(state=ocp.args.StandardSave(packed),
                                      meta=ocp.args.JsonSave({"eval_index": 2, "step": 40})))
  template = jax.tree.map(np.zeros_like, state)
  with rundir.Checkpointer(d) as ck:
    _assert_same(state, ck.restore(ck.latest_step(), template))
    ck.save(6, state)                            # a resumed run then writes the new layout
    _assert_same(state, ck.restore(6, template))
  with rundir.Checkpointer(tmp_path / "fit") as ck:
    _assert_same(small, ck.restore(4, jax.tree.map(np.zeros_like, small)))
  with rundir.Checkpointer(tmp_path / "train") as ck:
    assert ck.meta(2) == {"eval_index": 2, "step": 40}
    _assert_same(state, ck.restore(2, template))


def test_run_dir_resume_rule_end_to_end(tmp_path):
  """Claim, checkpoint at step 2, crash after logging step 3, resume: step 3 is redone."""
  run = rundir.RunDir(tmp_path)
  run.claim({"steps": 4})
  with run.checkpoints(keep=2) as ck, run.metrics(tensorboard=False) as log:
    for step in (1, 2, 3):
      log.write({"step": step})
      if step == 2:
        ck.save(step, {"x": np.float32(step)})
  with run.checkpoints(keep=2) as ck:
    start = ck.latest_step()
    with run.metrics(resume_step=start, tensorboard=False) as log:
      for step in range(start + 1, 5):
        log.write({"step": step})
  assert [r["step"] for r in rundir.read_rows(tmp_path / "metrics.jsonl")] == [1, 2, 3, 4]


# -- atomic writes and strict JSON ------------------------------------------------------

def test_atomic_write_leaves_no_temp_file_and_the_old_content_on_failure(tmp_path):
  path = rundir.atomic_write_text(tmp_path / "a.txt", "old")
  with pytest.raises(RuntimeError):
    with rundir.atomic_path(path) as tmp:
      tmp.write_text("half")
      raise RuntimeError("crash mid-write")
  assert path.read_text() == "old"
  assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]
  with pytest.raises(TypeError):
    rundir.atomic_write_json(tmp_path / "b.json", {"x": object()})
  assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_atomic_dir_replaces_whole_or_not_at_all(tmp_path):
  target = tmp_path / "d"
  with rundir.atomic_dir(target) as tmp:
    (tmp / "x").write_text("1")
  with pytest.raises(RuntimeError):
    with rundir.atomic_dir(target) as tmp:
      (tmp / "y").write_text("2")
      raise RuntimeError("crash")
  assert [p.name for p in target.iterdir()] == ["x"]
  with rundir.atomic_dir(target) as tmp:
    (tmp / "z").write_text("3")
  assert [p.name for p in target.iterdir()] == ["z"]
  assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]
  with pytest.raises(FileExistsError):
    with rundir.atomic_dir(target, overwrite=False):
      pass


def test_strict_json_nan_and_inf_become_null_or_strings():
  obj = {"a": float("nan"), "b": [np.float32(np.inf), -np.inf], "c": np.arange(2),
         "d": np.bool_(True), "e": jax.numpy.float32(2.5), 3: (1, "s", None)}
  assert rundir.strict_json(obj) == {"a": None, "b": [None, None], "c": [0, 1], "d": True,
                                   "e": 2.5, "3": [1, "s", None]}
  assert rundir.strict_json(obj, nonfinite="string")["b"] == ["inf", "-inf"]
  assert json.loads(rundir.dumps(obj))["a"] is None


# -- settings ---------------------------------------------------------------------------

def test_settings_resolve_the_lopt_environment_variables(monkeypatch, tmp_path):
  for name in ("LOPT_CACHE_DIR", "LOPT_DATA_DIR", "LOPT_CHECKPOINT_DIR", "LOPT_OFFLINE",
               "LOPT_NO_VERIFY", "LOPT_FASHION_MNIST_DIR"):
    monkeypatch.delenv(name, raising=False)
  home = pathlib.Path("~").expanduser()
  assert settings.cache_dir() == home / ".cache" / "lopt"
  assert settings.compile_cache_dir() == home / ".cache" / "lopt" / "jax"
  assert settings.data_dir() == (home / ".cache" / "lopt" / "tfds").resolve()
  assert settings.checkpoint_dir() is None
  assert not settings.offline() and settings.verify_weights()
  assert str(settings.fashion_mnist_dir()) == "/usr/share/datasets/fashion-mnist"
  monkeypatch.setenv("LOPT_CACHE_DIR", str(tmp_path / "c"))
  monkeypatch.setenv("LOPT_DATA_DIR", str(tmp_path / "d"))
  monkeypatch.setenv("LOPT_CHECKPOINT_DIR", str(tmp_path / "w"))
  monkeypatch.setenv("LOPT_FASHION_MNIST_DIR", str(tmp_path / "f"))
  assert settings.cache_dir() == tmp_path / "c"
  assert settings.data_dir() == (tmp_path / "d").resolve()
  assert settings.data_dir(tmp_path / "x") == (tmp_path / "x").resolve()  # argument first
  assert settings.checkpoint_dir() == tmp_path / "w"
  assert settings.fashion_mnist_dir() == tmp_path / "f"
  for value, on in (("1", True), ("yes", True), ("0", False), ("False", False), ("no", False),
                    ("", False)):
    monkeypatch.setenv("LOPT_OFFLINE", value)
    monkeypatch.setenv("LOPT_NO_VERIFY", value)
    assert settings.offline() is on and settings.verify_weights() is not on
  assert settings.verify_weights(True)  # an explicit argument wins


def test_callers_resolve_through_the_settings(monkeypatch, tmp_path):
  from lopt.eval import _tuning
  from lopt.meta import _experiment
  from lopt.tasks.datasets import _load, stock
  monkeypatch.setenv("LOPT_CACHE_DIR", str(tmp_path))
  monkeypatch.setenv("LOPT_DATA_DIR", str(tmp_path / "data"))
  monkeypatch.setenv("LOPT_OFFLINE", "1")
  assert _tuning.default_tuning_dir() == tmp_path / "tuning"
  assert _experiment.default_cache_dir() == tmp_path / "jax"
  assert _load.resolve_data_dir() == (tmp_path / "data").resolve()
  assert stock._offline_env()
