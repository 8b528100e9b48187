"""Neural graphs: structure invariants, param <-> edge maps, Laplacian encodings."""

import json
import os
import pathlib

import jax
import numpy as np
import pytest

from lopt.learned_opts import nino
from lopt.learned_opts.nino import lpe as lpe_mod


def _rand(shape, seed):
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _mlp(sizes=(4, 3, 2)):
  return {f"mlp/~/linear_{i}": {"w": _rand((a, b), i), "b": _rand((b,), 10 + i)}
          for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:]))}


def _convnet():
  return {"conv2_d": {"w": _rand((3, 3, 2, 4), 0), "b": _rand((4,), 1)},
          "conv2_d_1": {"w": _rand((3, 3, 4, 4), 2), "b": _rand((4,), 3)},
          "linear": {"w": _rand((4, 3), 4), "b": _rand((3,), 5)}}


def _gpt2(V=5, T=3, D=4, n_layer=1):
  p = {"gpt2/wte": {"embeddings": _rand((V, D), 0)}, "gpt2/wpe": {"embeddings": _rand((T, D), 1)},
       "gpt2/ln_f": {"scale": _rand((D,), 2), "offset": _rand((D,), 3)}}
  for i in range(n_layer):
    h = f"gpt2/h_{i}"
    p[f"{h}/ln_1"] = {"scale": _rand((D,), 4), "offset": _rand((D,), 5)}
    p[f"{h}/attn/c_attn"] = {"w": _rand((D, 3 * D), 6), "b": _rand((3 * D,), 7)}
    p[f"{h}/attn/c_proj"] = {"w": _rand((D, D), 8), "b": _rand((D,), 9)}
    p[f"{h}/ln_2"] = {"scale": _rand((D,), 10), "offset": _rand((D,), 11)}
    p[f"{h}/mlp/c_fc"] = {"w": _rand((D, 4 * D), 12), "b": _rand((4 * D,), 13)}
    p[f"{h}/mlp/c_proj"] = {"w": _rand((4 * D, D), 14), "b": _rand((D,), 15)}
  return p


_GOLDEN_DIR = pathlib.Path(os.environ.get(
    "LOPT_SHARED_DIR", pathlib.Path(__file__).resolve().parents[1].parent / "shared")) / "golden" / "nino"
GOLDEN = sorted(p.stem for p in _GOLDEN_DIR.glob("*.npz") if p.with_suffix(".json").exists()) or [
    "mlp", "convnet", "gpt2"]


def _golden(shared_dir, model):
  """(npz, json, initial params, graph arch) of a golden model."""
  z = np.load(shared_dir / "golden" / "nino" / f"{model}.npz")
  meta = json.loads((shared_dir / "golden" / "nino" / f"{model}.json").read_text())
  params = {}
  for key in z.files:
    if key.startswith("hk/init/"):
      mod, name = key[len("hk/init/"):].rsplit("/", 1)
      params.setdefault(mod, {})[name] = z[key]
  if meta["spec"].get("kind") == "gpt2":
    arch = {"kind": "gpt2", "n_head": meta["spec"]["n_head"]}
  else:
    arch = {"kind": "sequential",
            "layers": list(dict.fromkeys(p["haiku_module"] for p in meta["params"]))}
  return z, meta, params, arch


def _type_counts(g):
  return {int(t): int(c) for t, c in zip(*np.unique(g.edge_type, return_counts=True))}


def _stack(params, ctx=5):
  return jax.tree_util.tree_map(lambda a: np.stack([a + i for i in range(ctx)]), params)


def test_mlp_structure():
  g = nino.build_graph(_mlp())
  assert (g.n_nodes, g.n_params, g.max_feat) == (11, 23, 1)
  assert _type_counts(g) == {1: 12 + 6, 2: 3 + 2, 13: 11}
  # bias aux node precedes its layer's neurons: inputs 0..3, aux 4, hidden 5..7, aux 8, out 9..10
  first = g.edge_index[:, :12]
  assert set(first[0]) == {0, 1, 2, 3} and set(first[1]) == {5, 6, 7}
  assert set(g.edge_index[0, 12:15]) == {4}
  np.testing.assert_array_equal(g.edge_index[:, -11:], np.stack([np.arange(11)] * 2))
  assert g is nino.build_graph(_mlp())  # cached


def test_conv_structure_and_kernel_slots():
  p = _convnet()
  g = nino.build_graph(p)
  assert (g.n_nodes, g.max_feat) == (2 + 1 + 4 + 1 + 4 + 1 + 3, 9)
  assert _type_counts(g) == {3: 8 + 16, 2: 4 + 4 + 3, 1: 12, 13: g.n_nodes}
  x = np.asarray(g.params_to_edges(_stack(p)))            # [E, 9, ctx]
  w = p["conv2_d_1"]["w"]                                  # [kh, kw, in, out]
  e = 8 + 4 + 2 * 4 + 3                                    # conv2_d_1 edge (in=2, out=3)
  np.testing.assert_array_equal(x[e, :, 0], w[:, :, 2, 3].reshape(9))
  fc_e = 8 + 4 + 16 + 4                                    # linear edge (0, 0): slot 0, rest zero
  assert x[fc_e, 0, 0] == p["linear"]["w"][0, 0] and not x[fc_e, 1:].any()
  loops = x[-g.n_nodes:]
  assert (loops[:, 0] == 2).all() and not loops[:, 1:].any()


def test_transformer_structure():
  V, T, D, H = 5, 3, 4, 2
  p = _gpt2(V, T, D)
  g = nino.build_graph(p, {"kind": "gpt2", "n_head": H})
  assert g.n_nodes == V + T + 12 + H + 9 * D
  assert g.n_params == sum(a.size for m in p.values() for a in m.values())
  assert _type_counts(g) == {
      5: V * D, 6: T * D, 4: 3 * D, 2: 3 * D + 3 * D + D + 4 * D + D, 7: D * D, 8: D * D,
      9: D * D, 10: 2 * D, 11: 2 * D, 1: D * D + 4 * D * D + 4 * D * D, 13: g.n_nodes}
  # k-edges are transposed: they end on the block-input neurons the q-edges start from.
  q, k = g.edge_index[:, g.edge_type == 7], g.edge_index[:, g.edge_type == 8]
  assert set(q[0]) == set(k[1]) and set(q[1]) == set(k[0])
  # every head node feeds D/H q-neurons and D/H v-neurons
  heads = g.edge_index[:, g.edge_type == 11]
  assert all((heads[0] == h).sum() == 2 * D // H for h in np.unique(heads[0]))
  np.testing.assert_array_equal(g.pos_w[:V], np.arange(1, V + 1))
  assert not g.pos_w[V:].any()


def test_separate_qkv_matches_fused_layout():
  D = 4
  p = _gpt2(D=D)
  fused = nino.build_graph(p, {"kind": "gpt2", "n_head": 2})
  sep = {m: v for m, v in p.items() if "c_attn" not in m}
  w, b = p["gpt2/h_0/attn/c_attn"]["w"], p["gpt2/h_0/attn/c_attn"]["b"]
  for i, s in enumerate("qkv"):
    sep[f"gpt2/h_0/attn/{s}"] = {"w": w[:, i * D:(i + 1) * D], "b": b[i * D:(i + 1) * D]}
  arch = nino.gpt2_arch(p, 2)
  arch["blocks"][0]["attn"] = {s: f"gpt2/h_0/attn/{s}" for s in "qkv"}
  g = nino.build_graph(sep, arch)
  np.testing.assert_array_equal(g.edge_index, fused.edge_index)
  np.testing.assert_array_equal(g.edge_type, fused.edge_type)
  np.testing.assert_array_equal(g.params_to_edges(_stack(sep)), fused.params_to_edges(_stack(p)))


@pytest.mark.parametrize("make,arch", [(_mlp, None), (_convnet, None),
                                       (_gpt2, {"kind": "gpt2", "n_head": 2})])
def test_round_trip_exact(make, arch):
  p = make()
  g = nino.build_graph(p, arch)
  x = g.params_to_edges(_stack(p))
  back = g.edges_to_params(x[..., -1], like=p)
  last = jax.tree_util.tree_map(lambda a: a + 4, p)           # the 5th state of _stack
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_array_equal(a, b), back, last)
  # each parameter occupies exactly one slot; constant slots hold 0 / 1 / 2
  flat = np.asarray(g.gather_idx).reshape(-1)
  assert np.sort(flat[flat < g.n_params]).tolist() == list(range(g.n_params))
  # jittable with the graph as an argument
  y = jax.jit(lambda gr, h: gr.params_to_edges(h))(g, _stack(p))
  np.testing.assert_array_equal(y, x)


def test_errors_are_clear():
  with pytest.raises(ValueError, match="previous layer has"):
    nino.build_graph({"a_0": {"w": np.zeros((3, 4))}, "a_1": {"w": np.zeros((5, 2))}})
  with pytest.raises(ValueError, match="pass arch="):
    nino.build_graph(_gpt2())
  g = nino.build_graph(_mlp())
  with pytest.raises(ValueError, match="differs from the graph"):
    g.flatten(_mlp((4, 5, 2)))


@pytest.mark.parametrize("model", GOLDEN)
def test_matches_reference_graph(shared_dir, model):
  z, meta, params, arch = _golden(shared_dir, model)
  g = nino.build_graph(params, arch)
  assert g.n_nodes == int(z["num_nodes"]) and g.max_feat == int(z["max_feat_size"])
  np.testing.assert_array_equal(g.edge_index, z["edge_index"])
  np.testing.assert_array_equal(g.edge_type, z["edge_type"])
  np.testing.assert_array_equal(g.pos_w, z["pos_w"])
  # constant slots as the reference
  consts = np.where(np.asarray(g.gather_idx) >= g.n_params, np.asarray(g.gather_idx) - g.n_params, -1)
  ref_const = np.where(z["edge_param_index"] < 0, z["edge_const_value"], -1)
  np.testing.assert_array_equal(consts, ref_const)
  # same parameter in every slot: map torch flat order -> ours through the per-tensor tables
  torch_states = z["states"]                           # [5, P] torch order
  ours = np.asarray(g.params_to_edges({m: {n: z[f"hk/states/{m}/{n}"] for n in d}
                                       for m, d in params.items()}))
  ref = np.where(z["edge_param_index"][..., None] >= 0,
                 torch_states.T[np.maximum(z["edge_param_index"], 0)],
                 z["edge_const_value"][..., None])        # [E, F, 5]
  np.testing.assert_array_equal(ours, ref)
  assert meta["graph"]["num_edges"] == g.n_edges


# ---- Laplacian positional encodings ---------------------------------------------------------
@pytest.mark.parametrize("model", GOLDEN)
def test_lpe_eigenvectors_signs_and_degeneracy(shared_dir, model):
  z, meta, params, arch = _golden(shared_dir, model)
  g = nino.build_graph(params, arch)
  lap = lpe_mod.normalized_laplacian(g.edge_index, g.n_nodes).toarray()
  lam = z["laplacian_eigvals"][1:9]
  u = g.lpe.astype(np.float64)
  # eigenvectors 2..9 of the reference Laplacian, orthonormal
  np.testing.assert_allclose(lap @ u, u * lam, atol=2e-5)
  np.testing.assert_allclose(u.T @ u, np.eye(8), atol=2e-5)
  # deterministic sign: the largest-|value| entry of every column is positive
  assert (u[np.argmax(np.abs(u), 0), np.arange(8)] > 0).all()
  # non-degenerate eigenvalues: the same vector as the reference up to sign; degenerate ones:
  # the reference's vectors lie in the span of the eigenspace (checked by the residual above).
  all_lam = z["laplacian_eigvals"]
  for j in range(8):
    if np.sum(np.abs(all_lam - lam[j]) < 1e-6) == 1:
      ref = z["lpe"][:, j]
      assert min(np.abs(u[:, j] - ref).max(), np.abs(u[:, j] + ref).max()) < 1e-4
      np.testing.assert_allclose(u[:, j], z["lpe_canonical"][:, j], atol=1e-4)
  ref_u = z["lpe"].astype(np.float64)
  np.testing.assert_allclose(lap @ ref_u, ref_u * lam, atol=1e-4)


def test_lpe_sparse_solver_matches_dense():
  rng = np.random.default_rng(0)
  n = 150
  path = np.stack([np.arange(n - 1), np.arange(1, n)])
  extra = rng.integers(0, n, (2, 60))
  ei = np.concatenate([path, extra], axis=1)
  dense = lpe_mod.laplacian_pe(ei, n, k=8)
  sparse = lpe_mod.laplacian_pe(ei, n, k=8, dense_max=0)
  np.testing.assert_allclose(sparse, dense, atol=1e-4)
  tiny = lpe_mod.laplacian_pe(np.array([[0], [1]]), 3, k=8)   # fewer nodes than encodings
  assert tiny.shape == (3, 8) and not tiny[:, 2:].any()


def test_sequential_arch_with_norm():
  p = _mlp()
  p["mlp/~/layer_norm"] = {"scale": _rand((3,), 20), "offset": _rand((3,), 21)}
  arch = {"kind": "sequential", "layers": ["mlp/~/linear_0", "mlp/~/layer_norm", "mlp/~/linear_1"]}
  g = nino.build_graph(p, arch)
  assert g.n_nodes == 13 and _type_counts(g) == {1: 18, 2: 3 + 3 + 2, 4: 3, 13: 13}
  # aux nodes of linear_0/b, layer_norm/scale, layer_norm/offset precede the hidden neurons 7..9
  aux = g.edge_index[:, 12:21]
  np.testing.assert_array_equal(aux[0], np.repeat([4, 5, 6], 3))
  np.testing.assert_array_equal(aux[1], np.tile([7, 8, 9], 3))
  back = g.edges_to_params(g.params_to_edges(_stack(p, 1))[..., 0], like=p)
  np.testing.assert_array_equal(back["mlp/~/layer_norm"]["scale"], p["mlp/~/layer_norm"]["scale"])
  with pytest.raises(ValueError, match="leaves parameters out"):
    nino.build_graph(p, {"kind": "sequential", "layers": ["mlp/~/linear_0", "mlp/~/linear_1"]})


def test_task_arch_dicts_are_accepted():
  """`task.arch` descriptions of lopt's tasks translate to the graph formats."""
  p = _gpt2(D=8)
  task_arch = {"kind": "transformer", "style": "gpt2_pre_ln", "num_heads": 2,
               "modules": ["gpt2/wte", "gpt2/wpe", "gpt2/h_0/ln_1"]}
  assert nino.build_graph(p, task_arch) is nino.build_graph(p, {"kind": "gpt2", "n_head": 2})
  m = _mlp()
  m["mlp/~/layer_norm_0"] = {"scale": _rand((3,), 1), "offset": _rand((3,), 2)}
  task_arch = {"kind": "mlp", "norm": "layer_norm",
               "modules": ["mlp/~/linear_0", "mlp/~/layer_norm_0", "mlp/~/linear_1"]}
  assert nino.build_graph(m, task_arch).n_params == 23 + 6
  with pytest.raises(ValueError, match="has no neural graph"):
    nino.build_graph(m, {"kind": "lstm"})
