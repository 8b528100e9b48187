"""Replays the reference NiNo / WNN+ nowcasts of ../shared/golden/nino (see its README).

Every `<model>.npz` + `<model>.json` pair in the golden folder is replayed (the public set is
mlp, convnet, gpt2; a held-out set made the same way replays unchanged):
* with the recorded Laplacian encodings injected: max |pred - golden| <= 1e-5 and
  ||pred - golden|| / ||golden - last|| <= 1e-4 (README §6) for NiNo, WNN+, WNN+ h32, k = 1, 5, 40;
* with our own encodings (NiNo only): within the sign/degeneracy band, i.e. no further from the
  golden than the reference's own alternatives (random sign flips, canonical LPE) are, and < 1%.
"""

import json
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lopt.learned_opts import nino
from lopt.learned_opts.pretrained import CheckpointUnavailableError

_SHARED = pathlib.Path(os.environ.get("LOPT_SHARED_DIR",
                                      pathlib.Path(__file__).resolve().parents[1].parent / "shared"))
_GOLDEN_DIR = _SHARED / "golden" / "nino"
MODELS = sorted(p.stem for p in _GOLDEN_DIR.glob("*.npz") if p.with_suffix(".json").exists()) or [
    "mlp", "convnet", "gpt2"]
METAS = ["nino", "wnnp", "wnnp_h32"]
KS = [1, 5, 40]
def _tree(z, prefix):
  out = {}
  for key in z.files:
    if key.startswith(prefix):
      mod, name = key[len(prefix):].rsplit("/", 1)
      out.setdefault(mod, {})[name] = z[key]
  return out


def _arch(meta):
  """The graph arch of a golden model: GPT-2 by head count, else the layer order of the JSON."""
  spec = meta["spec"]
  if spec.get("kind") == "gpt2":
    return {"kind": "gpt2", "n_head": spec["n_head"], "prefix": "gpt2"}
  layers = list(dict.fromkeys(p["haiku_module"] for p in meta["params"]))
  return {"kind": "sequential", "layers": layers}


@pytest.fixture(scope="module")
def nowcasters(shared_dir):
  return {m: nino.load_nowcaster(m, path=shared_dir / "pretrained" / "nino") for m in METAS}


@pytest.fixture(scope="module")
def golden(shared_dir):
  cache = {}

  def get(model):
    if model not in cache:
      z = np.load(shared_dir / "golden" / "nino" / f"{model}.npz")
      meta = json.loads((shared_dir / "golden" / "nino" / f"{model}.json").read_text())
      hist = _tree(z, "hk/states/")
      like = jax.tree_util.tree_map(lambda a: a[-1], hist)
      g = nino.build_graph(like, _arch(meta))
      cache[model] = (z, hist, like, g)
    return cache[model]
  return get


_predict = jax.jit(lambda nc, hist, k, g: nc.predict(hist, k, graph=g))


def _flat(g, params):
  return np.asarray(g.flatten(params), np.float64)


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("meta", METAS)
def test_parity_with_recorded_lpe(golden, nowcasters, model, meta):
  z, hist, like, g = golden(model)
  g = g.with_lpe(z["lpe"])
  last = _flat(g, like)
  for k in KS:
    pred = _predict(nowcasters[meta], hist, jnp.int32(k), g)
    ref = _flat(g, _tree(z, f"hk/pred/{meta}/k{k}/"))
    got = _flat(g, pred)
    err = np.abs(got - ref).max()
    rel = np.linalg.norm(got - ref) / np.linalg.norm(ref - last)
    assert err <= 1e-5 and rel <= 1e-4, (model, meta, k, err, rel)
    assert np.linalg.norm(got - last) > 0.01 * np.linalg.norm(ref - last)  # it did move


@pytest.mark.parametrize("model", MODELS)
def test_parity_with_own_lpe(golden, nowcasters, model):
  z, hist, like, g = golden(model)
  last_t = z["states"][-1].astype(np.float64)
  last = _flat(g, like)
  for k in KS:
    got = _flat(g, _predict(nowcasters["nino"], hist, jnp.int32(k), g))
    ref = _flat(g, _tree(z, f"hk/pred/nino/k{k}/"))
    rel = np.linalg.norm(got - ref) / np.linalg.norm(ref - last)
    # the reference's own spread between equally valid encodings (torch flat order)
    alts = [z[f"pred/nino/k{k}"], z[f"pred/nino_lpeflip/k{k}"], z[f"pred/nino_lpecanon/k{k}"]]
    norm = np.linalg.norm(alts[0] - last_t)
    spread = max(np.linalg.norm(a - b) / norm for i, a in enumerate(alts) for b in alts[i + 1:])
    assert rel <= max(1.5 * spread, 1e-3) and rel < 0.01, (model, k, rel, spread)


@pytest.mark.parametrize("meta", ["nino", "wnnp"])
def test_reference_shaped_model_matches(golden, nowcasters, meta):
  """`make_model` (all 40 horizons, used for training) gives the recorded edge outputs."""
  z, hist, like, g = golden("mlp")
  nc = nowcasters[meta]
  x = jnp.asarray(z["edge_attr_in"]).reshape(g.n_edges, g.max_feat, 5)
  out = jax.jit(nino.make_model(nc.config).apply)(nc.weights, x, g.edge_type, g.edge_index,
                                                  z["lpe"], g.pos_w)
  assert out.shape == (g.n_edges, g.max_feat, 40)
  for k in KS:
    np.testing.assert_allclose(out[..., k - 1], z[f"edge_out/{meta}/k{k}"], atol=1e-5)


def test_converted_shapes(nowcasters):
  nc = nowcasters["nino"]
  assert nc.kind == "nino" and nc.config.hid == 128 and nc.config.max_feat == 9
  assert nc.weights["edge_proj"]["w"].shape == (45, 128)
  assert nc.weights["edge_out_fc2"]["w"].shape == (128, 360)
  assert "conv2_lin" not in nc.weights  # the last layer cannot reach the output: dropped
  assert nowcasters["wnnp_h32"].config.hid == 32 and nowcasters["wnnp"].kind == "wnn"


def test_save_and_load_round_trip(tmp_path, nowcasters, golden):
  z, hist, like, g = golden("mlp")
  nc = nowcasters["wnnp_h32"]
  out = nino.save_nowcaster(tmp_path / "nc", nc, extra_meta={"note": "test"})
  assert (out / "lopt.json").exists() and (out / "theta").is_dir()  # the one weights format
  back = nino.load_nowcaster(out)
  assert back.config == nc.config
  jax.tree_util.tree_map(np.testing.assert_array_equal, back.weights, nc.weights)
  with pytest.raises(FileExistsError):
    nino.save_nowcaster(tmp_path / "nc", nc)


def test_init_matches_converted_layout(nowcasters):
  """Fresh weights (for training nowcasters) have exactly the converted checkpoint's layout."""
  for meta, cfg in [("nino", nowcasters["nino"].config), ("wnnp_h32", nowcasters["wnnp_h32"].config)]:
    fresh = nino.init_nowcaster(jax.random.PRNGKey(0), cfg)
    shapes = lambda t: jax.tree_util.tree_map(np.shape, t)  # noqa: E731
    assert shapes(fresh.weights) == shapes(nowcasters[meta].weights), meta
    assert abs(float(np.std(fresh.weights["edge_proj"]["w"])) - 0.02) < 0.005


def test_predict_errors(golden, nowcasters):
  z, hist, like, g = golden("mlp")
  with pytest.raises(ValueError, match="outside 1..40"):
    nowcasters["nino"].predict(hist, 41, graph=g)
  short = jax.tree_util.tree_map(lambda a: a[1:], hist)
  with pytest.raises(ValueError, match="ctx=5"):
    nowcasters["nino"].predict(short, 1, graph=g)


def test_lookup_order_and_offline_error(tmp_path, monkeypatch, shared_dir):
  with pytest.raises(KeyError, match="unknown nowcaster"):
    nino.load_nowcaster("nino_xl")
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
  monkeypatch.setenv("LOPT_OFFLINE", "1")
  monkeypatch.delenv("LOPT_CHECKPOINT_DIR", raising=False)
  with pytest.raises(CheckpointUnavailableError, match="nino_mlp_h32.pt"):
    nino.load_nowcaster("nino_mlp_h32")
  monkeypatch.setenv("LOPT_CHECKPOINT_DIR", str(shared_dir / "pretrained"))  # <dir>/nino/<file>
  assert nino.load_nowcaster("nino_mlp_h32").config.hid == 32


@pytest.mark.parametrize("cfg,model", [
    (nino.NowcasterConfig(hid=16, n_layers=4, chunk_size=500), "convnet"),
    (nino.NowcasterConfig(hid=16, wte_pos_enc=True, vocab_size=64, chunk_size=4096), "gpt2"),
    (nino.NowcasterConfig(kind="wnn", hid=8, seq_len=7, chunk_size=1000), "convnet")])
def test_fast_path_matches_training_model(golden, cfg, model):
  """`predict_edges` (inference) == `make_model` (training) on random weights, other shapes."""
  z, hist, like, g = golden(model)
  nc = nino.init_nowcaster(jax.random.PRNGKey(1), cfg)
  w = jax.tree_util.tree_map(lambda a: 10.0 * a + 0.05, nc.weights)   # O(1) activations
  x = jnp.asarray(z["edge_attr_in"]).reshape(g.n_edges, g.max_feat, 5)
  full = jax.jit(nino.make_model(cfg).apply)(w, x, g.edge_type, g.edge_index, g.lpe, g.pos_w)
  fast_fn = jax.jit(lambda w, x, g, k: nino.predict_edges(w, cfg, x, g, k))
  for k in (1, cfg.seq_len):
    fast = fast_fn(w, x, g, jnp.int32(k))
    ref = full[..., k - 1]
    mask = g.param_mask
    err = np.abs(np.asarray(fast - ref))[mask].max()
    scale = np.abs(np.asarray(ref - x[..., -1]))[mask].max()
    assert scale > 0.01 and err <= 2e-4 * scale, (k, err, scale)
