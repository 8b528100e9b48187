"""Laplacian positional encodings (node features of the NiNo graph).

As the reference (`torch_geometric.transforms.AddLaplacianEigenvectorPE(k=8)`): the binary,
undirected, de-duplicated graph without self-loops; the symmetric normalised Laplacian
`L = I - D^-1/2 A D^-1/2`; eigenvectors 2..k+1 in ascending eigenvalue order.

The reference flips every column's sign at random and, for graphs with >= 100 nodes, uses
`eigsh` with a random start vector, so its encodings are not reproducible where eigenvalues are
degenerate (MLPs: eigenvalue 1 has a large multiplicity). Ours are deterministic: dense float64
`eigh` up to `dense_max` (400) nodes, else `eigsh` with a fixed start vector; each column's sign is
fixed so that its largest-magnitude entry is positive. NiNo was meta-trained with random sign
flips, so any sign is in-distribution; within a degenerate eigenspace any orthonormal basis is
equally valid (predictions move by <1% of the update norm, see the golden README).

Example:
  >>> import numpy as np
  >>> ei = np.array([[0, 1, 2], [1, 2, 3]])
  >>> laplacian_pe(ei, 4, k=2).shape
  (4, 2)
"""

from __future__ import annotations

import numpy as np

__all__ = ["laplacian_pe", "normalized_laplacian", "canonical_signs"]


def normalized_laplacian(edge_index: np.ndarray, n_nodes: int):
  """Sparse `I - D^-1/2 A D^-1/2` of the undirected simple graph (float64, scipy CSR)."""
  import scipy.sparse as sp
  s, d = np.asarray(edge_index[0], np.int64), np.asarray(edge_index[1], np.int64)
  keep = s != d
  s, d = s[keep], d[keep]
  a = sp.coo_matrix((np.ones(len(s)), (s, d)), shape=(n_nodes, n_nodes)).tocsr()
  a = a + a.T
  a.data[:] = 1.0  # binary, de-duplicated
  deg = np.asarray(a.sum(axis=1)).ravel()
  inv = np.where(deg > 0, 1.0 / np.sqrt(np.maximum(deg, 1e-300)), 0.0)
  dm = sp.diags(inv)
  return (sp.identity(n_nodes, format="csr") - dm @ a @ dm).tocsr()


def canonical_signs(vecs: np.ndarray) -> np.ndarray:
  """Flips each column so that its largest-|value| entry is positive."""
  idx = np.argmax(np.abs(vecs), axis=0)
  sign = np.sign(vecs[idx, np.arange(vecs.shape[1])])
  sign[sign == 0] = 1.0
  return vecs * sign


def _eigh_one_thread(a: np.ndarray):
  try:  # a multi-threaded BLAS on a busy machine is slower than one thread for small graphs
    from threadpoolctl import threadpool_limits
  except ImportError:
    return np.linalg.eigh(a)
  with threadpool_limits(1):
    return np.linalg.eigh(a)


def laplacian_pe(edge_index: np.ndarray, n_nodes: int, k: int = 8,
                 dense_max: int = 400) -> np.ndarray:
  """`[n_nodes, k]` float32 Laplacian eigenvector encodings (zero columns if n_nodes <= k)."""
  lap = normalized_laplacian(edge_index, n_nodes)
  m = min(k + 1, n_nodes)
  if n_nodes <= dense_max:
    vals, vecs = _eigh_one_thread(lap.toarray())
    vecs = vecs[:, np.argsort(vals, kind="stable")[:m]]
  else:
    from scipy.sparse.linalg import eigsh
    v0 = np.random.default_rng(0).standard_normal(n_nodes)
    # Extra pairs keep a degenerate eigenvalue off the edge of the requested set (where
    # Lanczos may return a vector that is not an eigenvector).
    m_solve = min(n_nodes - 2, m + 8)
    vals, vecs = eigsh(lap, k=m_solve, which="SA", v0=v0, tol=1e-10)
    vecs = vecs[:, np.argsort(vals, kind="stable")[:m]]
  out = np.zeros((n_nodes, k), np.float32)
  out[:, :vecs.shape[1] - 1] = vecs[:, 1:k + 1]
  return canonical_signs(out)  # after rounding to float32, so ties resolve the same way
