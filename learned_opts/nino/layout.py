"""Parameter layouts: flax (linen and nnx) trees seen as haiku's `{module: {w, b, ...}}`.

The neural graph (`graph.py`) reads haiku names: a module holds a weight `w` (`[in, out]`
or a conv kernel `[kh, kw, in, out]`) and a bias `b`, or a norm's `scale` / `offset`. flax
stores the same arrays in the same axis order under other names, nested deeper:

  linen  {"params": {"Dense_0": {"kernel", "bias"}, "LayerNorm_0": {"scale", "bias"}}}
  nnx    nnx.state(model, nnx.Param): {"linear1": {"kernel", "bias"}, "layers": {0: ...}}

`to_modules` maps any such tree to the haiku view (module = the path to the leaf's parent
joined by "/", a leading "params" collection dropped; `kernel` -> `w`; `bias` -> `b` next
to a kernel, else the norm's `offset`), and returns the function that puts arrays in that
view back into the caller's structure. Haiku trees pass through unchanged.

    >>> import numpy as np
    >>> linen = {"params": {"Dense_0": {"kernel": np.zeros((4, 3)), "bias": np.zeros(3)},
    ...                     "LayerNorm_0": {"scale": np.ones(3), "bias": np.zeros(3)}}}
    >>> modules, back = to_modules(linen)
    >>> sorted((m, sorted(v)) for m, v in modules.items())
    [('Dense_0', ['b', 'w']), ('LayerNorm_0', ['offset', 'scale'])]
    >>> back(modules)["params"]["LayerNorm_0"]["bias"].shape
    (3,)
"""

from __future__ import annotations

from typing import Any, Callable

import jax

_HAIKU_NAMES = {"w", "b", "scale", "offset", "embeddings"}
_DROP = {"value", "raw_value"}  # attribute keys of nnx Variables on the path to an array


def _key(k: Any) -> str | None:
  for attr in ("key", "name", "idx"):
    if hasattr(k, attr):
      v = getattr(k, attr)
      return None if attr == "name" and v in _DROP else str(v)
  return str(k)


def _paths(params: Any) -> tuple[list[tuple[str, ...]], list[Any], Any]:
  flat, treedef = jax.tree_util.tree_flatten_with_path(params)
  paths = [tuple(s for s in (_key(k) for k in path) if s is not None) for path, _ in flat]
  return paths, [leaf for _, leaf in flat], treedef


def _is_haiku(paths: list[tuple[str, ...]]) -> bool:
  return all(len(p) == 2 and p[1] in _HAIKU_NAMES for p in paths)


def to_modules(params: Any) -> tuple[dict[str, dict[str, Any]], Callable[[dict], Any]]:
  """`(modules, back)`: the haiku view of `params` and its inverse (see the module doc).

  Raises:
    ValueError: two leaves map to the same (module, name), or a leaf sits at the top level.
  """
  paths, leaves, treedef = _paths(params)
  if _is_haiku(paths):
    return params, lambda modules: modules
  names: list[tuple[str, str]] = []
  kernels = {p[:-1] for p in paths if p and p[-1] == "kernel"}
  for p in paths:
    if len(p) < 2:
      raise ValueError(f"parameter {'/'.join(p) or '<root>'} is not inside a module; the "
                       "neural graph needs {module: {kernel/w, bias/b, scale}} trees")
    parent, leaf = p[:-1], p[-1]
    if leaf == "kernel":
      leaf = "w"
    elif leaf == "bias":
      leaf = "b" if parent in kernels else "offset"
    elif leaf == "embedding":
      leaf = "embeddings"
    module = "/".join(parent[1:] if parent[0] == "params" and len(parent) > 1 else parent)
    names.append((module, leaf))
  if len(set(names)) != len(names):
    raise ValueError("two parameters map to the same module/name in the haiku view; pass a "
                     "{module: {name: array}} dict")
  modules: dict[str, dict[str, Any]] = {}
  for (m, n), x in zip(names, leaves):
    modules.setdefault(m, {})[n] = x

  def back(view: dict[str, dict[str, Any]]) -> Any:
    return jax.tree_util.tree_unflatten(treedef, [view[m][n] for m, n in names])

  return modules, back
