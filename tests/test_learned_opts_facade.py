"""`lopt.learned_opts` behind its facade: one architecture table, one weights hub, no module
shadowed by a function, one task-arch -> neural-graph translator."""

from __future__ import annotations

import hashlib
import importlib
import inspect
import pkgutil

import jax
import numpy as np
import pytest

import lopt.learned_opts as lo
from lopt.learned_opts import nino, registry
from lopt.tasks import ImageConvTask, ImageMLPTask


def test_registry_and_exports_derive_from_the_one_table():
  for name, row in registry.ARCHITECTURES.items():
    assert name in lo.REGISTRY and name in lo.names()
    assert row.cls in lo.__all__
    assert getattr(lo, row.cls) is registry.architecture_class(name)
    assert registry.architecture_name(lo.REGISTRY[name]()) == name
  classes = {row.cls for row in registry.ARCHITECTURES.values()}
  assert set(lo.__all__) - classes == set(lo._NAMES)  # nothing else lists the architectures


def test_adding_a_row_adds_the_registry_entry_and_the_export():
  row = registry.Architecture("lopt.learned_opts._learnable", "LearnableAdam", "test row")
  table = {**registry.ARCHITECTURES, "my_rule": row}
  assert "my_rule" in registry.registry_from(table)
  assert lo._lazy_classes(table)["LearnableAdam"] == row.module
  assert set(registry.registry_from(registry.ARCHITECTURES)) == set(lo.REGISTRY)


def test_both_hubs_are_listed_by_one_function(monkeypatch):
  listed = {ci.name: ci.kind for ci in lo.weights()}
  assert listed == {**{n: "optimizer" for n in lo.PRETRAINED},
                    **{n: "nowcaster" for n in lo.NOWCASTERS}}
  assert set(nino.OFFICIAL) == set(lo.NOWCASTERS)  # the nowcaster view reads the hub
  assert [ci.kind for ci in lo.weights()] == sorted(ci.kind for ci in lo.weights())[::-1]
  assert lo.weights_info("celo_adam").name == "celo-adam"
  assert lo.weights_info("nino_mlp").name == "wnnp"
  with pytest.raises(KeyError, match="unknown nowcaster"):
    lo.weights_info("celo", kind="nowcaster")
  extra = lo.NOWCASTERS["wnnp"].__class__(**{**lo.NOWCASTERS["wnnp"].to_json(),
                                              "name": "wnnp_test", "aliases": ()})
  monkeypatch.setitem(lo.NOWCASTERS, "wnnp_test", extra)  # a new row is seen everywhere
  assert "wnnp_test" in {ci.name for ci in lo.weights("nowcaster")}
  assert lo.weights_info("wnnp_test") is extra


# Every package of lopt, not only this one: the trap (`import a.b as m` giving a function)
# is the same wherever it appears.
_PACKAGES = ["learned_opts", "learned_opts.nino", "tasks", "optimizers", "training", "meta",
             "eval", "analysis", "cli"]


@pytest.mark.parametrize("name", _PACKAGES)
def test_no_public_name_shadows_a_submodule(name):
  pkg = importlib.import_module(f"lopt.{name}")
  for mod in pkgutil.iter_modules(pkg.__path__):
    value = pkg.__dict__.get(mod.name)
    assert value is None or inspect.ismodule(value), (
        f"{pkg.__name__}.{mod.name} is both a module and a {type(value).__name__}")


def test_old_module_paths_still_import():
  hub = importlib.import_module("lopt.learned_opts.pretrained")     # deprecated alias
  assert hub.PRETRAINED is lo.PRETRAINED and callable(lo.pretrained)
  nowcast_mod = importlib.import_module("lopt.learned_opts.nino.nowcast")
  assert nowcast_mod.graph_arch is nino.graph_arch and callable(nino.nowcast)
  with pytest.warns(DeprecationWarning, match="NowcasterLike"):
    assert nowcast_mod.Nowcaster is nino.NowcasterLike
  assert nino.Nowcaster is not nino.NowcasterLike                     # the model class


def _fingerprint(g) -> str:
  h = hashlib.sha256()
  for field in ("edge_index", "edge_type", "gather_idx", "param_slot"):
    h.update(np.ascontiguousarray(np.asarray(getattr(g, field))).tobytes())
  h.update(repr((g.n_nodes, g.n_params, g.max_feat, g.leaves)).encode())
  return h.hexdigest()[:16]


# Computed with the two translators before they were merged (commit f54aa24,
# `build_graph(params, task.arch)`): the one translator must give the same graphs.
_BEFORE = {
    "digits-mlp-8": "7dc7f966d38c47d4",
    "digits-mlp-8-ln": "84fb1de9ca862b1f",
    "digits-conv-4-8": "989e53846ad45ad7",
    "digits-conv-4-8-ln": "dfc8da07ac48a018",
}


@pytest.mark.parametrize("task", [
    ImageMLPTask(dataset="digits", hidden=(8,)),
    ImageMLPTask(dataset="digits", hidden=(8,), norm="layer_norm"),
    ImageConvTask(dataset="digits", channels=(4, 8)),
    ImageConvTask(dataset="digits", channels=(4, 8), norm="layer_norm"),
], ids=lambda t: t.name)
def test_one_translator_gives_the_same_graphs_as_before(task):
  params = task.init(jax.random.PRNGKey(0))
  graph = nino.build_graph(params, task.arch)
  assert _fingerprint(graph) == _BEFORE[task.name]
  translated = nino.graph_arch(task.arch)          # what nowcaster fitting builds graphs from
  assert translated == {"kind": "sequential", "layers": list(task.arch["modules"])}
  assert nino.build_graph(params, translated) is graph       # same cache entry: same graph
  if not task.norm:                                # plain names: inference agrees as well
    assert _fingerprint(nino.build_graph(params)) == _BEFORE[task.name]


def test_one_weights_directory_format_for_thetas_and_nowcasters(tmp_path):
  """A nowcaster folder and a theta folder share one layout (lopt.json + theta/), and each
  loader refuses the other kind with a pointer to the right one."""
  import jax
  from lopt.learned_opts import checkpoint_io, nino
  nc = nino.init_nowcaster(jax.random.PRNGKey(0), nino.NowcasterConfig(
      kind="wnn", hid=8, ctx=5, seq_len=4, max_feat=1, lpe=0, n_layers=0))
  d = nino.save_nowcaster(tmp_path / "nc", nc)
  assert sorted(p.name for p in d.iterdir()) == ["lopt.json", "theta"]
  back = nino.load_nowcaster(d)
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), back.weights, nc.weights)
  with pytest.raises(checkpoint_io.CheckpointFormatError, match="load_nowcaster"):
    lo.load_optimizer(d)
  lopt, theta = lo.pretrained("lopt-fc-v2")
  t = lo.save_theta(tmp_path / "theta", lopt, theta)
  assert sorted(p.name for p in t.iterdir()) == ["lopt.json", "theta"]
  with pytest.raises(checkpoint_io.CheckpointFormatError, match="load_optimizer"):
    nino.load_nowcaster(t)
  for shipped in nino.SHIPPED:  # the bundled nowcasters are in the same format
    assert (nino.shipped_dir() / shipped / "lopt.json").is_file()
