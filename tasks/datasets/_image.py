"""Area (box-filter) image downsampling, numpy or JAX."""

from __future__ import annotations

import functools

import numpy as np


@functools.lru_cache(maxsize=64)
def area_matrix(n_in: int, n_out: int) -> np.ndarray:
  """[n_out, n_in] weights: output pixel i averages input [i*s, (i+1)*s), s = n_in / n_out.

  Input pixels cut by a boundary contribute in proportion to their overlap, so rows sum to
  1 and an integer ratio is plain average pooling.
  """
  if n_out <= 0 or n_out > n_in:
    raise ValueError(f"area resize goes down only: cannot resize {n_in} -> {n_out}")
  scale = n_in / n_out
  lo = np.arange(n_out)[:, None] * scale       # [n_out, 1]
  px = np.arange(n_in)[None, :]                # [1, n_in]
  overlap = np.clip(np.minimum(px + 1, lo + scale) - np.maximum(px, lo), 0, None)
  return (overlap / scale).astype(np.float32)  # [n_out, n_in]


def resize_images(images, size: int | tuple[int, int]):
  """Downsamples `[..., H, W, C]` images by area averaging (like PIL's BOX filter).

  Works on numpy arrays (returns numpy) and JAX arrays (returns JAX, jit-friendly).

  Args:
    images: float images `[..., H, W, C]` (e.g. `[N, 28, 28, 1]`).
    size: output side `s` (-> `s x s`) or `(height, width)`; not larger than the input.

  Returns:
    float32 images `[..., h, w, C]`.

  Example:
    >>> import numpy as np
    >>> resize_images(np.ones((2, 28, 28, 1), np.float32), 8).shape
    (2, 8, 8, 1)
  """
  h, w = (size, size) if isinstance(size, int) else tuple(size)
  if isinstance(images, np.ndarray):
    xp = np
  else:
    import jax.numpy as xp
  images = xp.asarray(images, xp.float32)
  if images.ndim < 3:
    raise ValueError(f"expected images [..., H, W, C], got shape {images.shape}")
  rows = xp.asarray(area_matrix(images.shape[-3], h))  # [h, H]
  cols = xp.asarray(area_matrix(images.shape[-2], w))  # [w, W]
  if xp is np:  # numpy's default einsum does not reorder the contraction: 30x slower here
    return np.einsum("hH,...HWc,wW->...hwc", rows, images, cols, optimize=True)
  return xp.einsum("hH,...HWc,wW->...hwc", rows, images, cols)
