"""The named task suite: a hand-written dict of `TaskSpec`s.

Splits:

* `train`: the meta-training distribution's fixed tasks (small MLPs, a small ConvNet, a
  small transformer and an LSTM on digits / 8x8 Fashion-MNIST / MNIST-1D / pycode).
* `heldout`: never used for meta-training. AlgoPerf-style variants of the train tasks
  (activation, LayerNorm, width, depth, init scale), unseen architectures (autoencoder,
  larger convnets at 28x28, transformers with other depths/widths/heads) and unseen
  dataset/model pairs. Each spec's `description` says what differs from the train split.

Flags: `demo` tasks train in seconds on a CPU (`make demo`); `paper` tasks are the NiNo
paper's evaluation shapes (Fashion-MNIST conv 16-32-32 / 32-64-64 at batch 128, GPT-2 style
char-LM transformers 2x32, 3x24, 3x64).

Example:
  >>> task = get_task("digits-mlp-32")
  >>> SUITE["digits-mlp-32"].num_steps
  500
  >>> "fmnist-conv-16-32-32" in suite_names("heldout", paper=True)
  True
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

from lopt.tasks import base
from lopt.tasks._image import ImageAutoencoderTask, ImageConvTask, ImageMLPTask
from lopt.tasks._lm import LSTMLMTask, TransformerLMTask

SUITE_SPLITS = ("train", "heldout")


class UnknownTaskError(ValueError):
  """The task name is not in `SUITE`; the message lists the valid names."""


@dataclasses.dataclass(frozen=True)
class TaskSpec:
  """A suite entry.

  Attributes:
    make: builds the task; keyword overrides are allowed (`make(batch_size=8)`).
    split: "train" (meta-training) or "heldout" (evaluation only).
    num_steps: the step budget (inner training steps) for benchmarks.
    num_params: the parameter count (written out so listing needs no data; a test checks
      it against the built task).
    dataset: the dataset name (`lopt.tasks.datasets.DATASETS`).
    description: what the task is and, for held-out tasks, what differs from train.
    demo: trains in seconds on a CPU (the `demo` subset).
    paper: one of the NiNo paper's evaluation shapes.
  """

  make: Callable[..., base.Task]
  split: str
  num_steps: int
  num_params: int
  dataset: str
  description: str
  demo: bool = False
  paper: bool = False


def _spec(cls, name, split, num_steps, num_params, description, *, demo=False, paper=False,
          **kw):
  return TaskSpec(functools.partial(cls, name=name, **kw), split, num_steps, num_params,
                  kw["dataset"], description, demo, paper)


_MLP, _CONV, _AE = ImageMLPTask, ImageConvTask, ImageAutoencoderTask
_TF, _LSTM = TransformerLMTask, LSTMLMTask

_SPECS = (
    # ---------------- train ----------------
    _spec(_MLP, "digits-mlp-32", "train", 500, 2410,
          "MLP 64-32-10, ReLU, on 8x8 digits, batch 64",
          dataset="digits", hidden=(32,), demo=True),
    _spec(_MLP, "digits-mlp-64x64", "train", 1000, 8970,
          "MLP 64-64-64-10, ReLU, on 8x8 digits, batch 64",
          dataset="digits", hidden=(64, 64)),
    _spec(_CONV, "digits-conv-8-16", "train", 1000, 1418,
          "ConvNet 8-16 (3x3, first stride 2), ReLU, global avg pool, on 8x8 digits, batch 64",
          dataset="digits", channels=(8, 16)),
    _spec(_MLP, "fmnist8-mlp-32", "train", 2000, 2410,
          "MLP 64-32-10, ReLU, on Fashion-MNIST resized to 8x8, batch 64",
          dataset="fashion_mnist", image_size=8, hidden=(32,)),
    _spec(_MLP, "mnist1d-mlp-128", "train", 1000, 6538,
          "MLP 40-128-10, ReLU, on MNIST-1D, batch 64",
          dataset="mnist1d", hidden=(128,), demo=True),
    _spec(_TF, "pycode-transformer-2x64", "train", 1000, 120576,
          "GPT-2 style byte LM, 2 layers, width 64, 4 heads, context 64, batch 32",
          dataset="pycode", num_layers=2, width=64, num_heads=4, seq_len=64, batch_size=32),
    _spec(_LSTM, "pycode-lstm-128", "train", 1000, 123648,
          "byte LSTM LM, hidden 128, embedding 32, context 64, batch 32",
          dataset="pycode", hidden_size=128, embed_size=32, seq_len=64, batch_size=32),
    # ---------------- heldout ----------------
    _spec(_MLP, "digits-mlp-128-gelu", "heldout", 500, 9610,
          "digits-mlp-32 with width 128 and GELU (width + activation)",
          dataset="digits", hidden=(128,), activation="gelu", demo=True),
    _spec(_MLP, "digits-mlp-32x32x32-tanh", "heldout", 1000, 4522,
          "digits MLP with 3 hidden layers of 32 and tanh (depth + activation)",
          dataset="digits", hidden=(32, 32, 32), activation="tanh"),
    _spec(_MLP, "digits-mlp-32-ln", "heldout", 500, 2474,
          "digits-mlp-32 with LayerNorm before each activation (normalisation)",
          dataset="digits", hidden=(32,), norm="layer_norm"),
    _spec(_MLP, "digits-mlp-32-init3", "heldout", 1000, 2410,
          "digits-mlp-32 with initial weights scaled x3 (init scale)",
          dataset="digits", hidden=(32,), init_scale=3.0),
    _spec(_MLP, "fmnist8-mlp-64-silu", "heldout", 2000, 4810,
          "fmnist8-mlp-32 with width 64 and SiLU (width + activation)",
          dataset="fashion_mnist", image_size=8, hidden=(64,), activation="silu"),
    _spec(_MLP, "mnist1d-mlp-64x64-silu-ln", "heldout", 1000, 7690,
          "MNIST-1D MLP 64x64 with SiLU and LayerNorm (depth + activation + normalisation)",
          dataset="mnist1d", hidden=(64, 64), activation="silu", norm="layer_norm"),
    _spec(_CONV, "digits-conv-16-32-ln", "heldout", 1000, 5226,
          "digits-conv-8-16 with channels 16-32 and LayerNorm over channels",
          dataset="digits", channels=(16, 32), norm="layer_norm"),
    _spec(_AE, "digits-ae-32", "heldout", 1000, 4192,
          "MLP autoencoder 64-32-64, ReLU, per-pixel MSE on digits (unseen task type)",
          dataset="digits", hidden=(32,)),
    _spec(_CONV, "fmnist-conv-16-32-32", "heldout", 2000, 14378,
          "NiNo FM-16: ConvNet 16-32-32 on 28x28 Fashion-MNIST, batch 128 (unseen size)",
          dataset="fashion_mnist", channels=(16, 32, 32), batch_size=128, paper=True),
    _spec(_CONV, "fmnist-conv-32-64-64", "heldout", 1000, 56394,
          "NiNo FM-32: ConvNet 32-64-64 on 28x28 Fashion-MNIST, batch 128 (unseen size)",
          dataset="fashion_mnist", channels=(32, 64, 64), batch_size=128, paper=True),
    _spec(_TF, "pycode-transformer-2x32", "heldout", 1000, 35712,
          "byte GPT-2, 2 layers, width 32, 2 heads (NiNo LM1B-2-32 shape; narrower, fewer heads)",
          dataset="pycode", num_layers=2, width=32, num_heads=2, seq_len=64, batch_size=32,
          paper=True),
    _spec(_TF, "pycode-transformer-3x24", "heldout", 1000, 29400,
          "byte GPT-2, 3 layers, width 24, 3 heads (NiNo LM1B-3-24 shape; deeper, narrower)",
          dataset="pycode", num_layers=3, width=24, num_heads=3, seq_len=64, batch_size=32,
          paper=True),
    _spec(_TF, "pycode-transformer-3x64", "heldout", 1000, 170560,
          "byte GPT-2, 3 layers, width 64, 4 heads (NiNo LM1B-3-64 shape; deeper)",
          dataset="pycode", num_layers=3, width=64, num_heads=4, seq_len=64, batch_size=32,
          paper=True),
    _spec(_LSTM, "pycode-lstm-64", "heldout", 1000, 49664,
          "pycode-lstm-128 with hidden 64 (width)",
          dataset="pycode", hidden_size=64, embed_size=32, seq_len=64, batch_size=32),
)

SUITE: dict[str, TaskSpec] = {spec.make.keywords["name"]: spec for spec in _SPECS}


def suite_names(split: str | None = None, *, demo: bool | None = None,
                paper: bool | None = None) -> list[str]:
  """Suite task names, optionally filtered by split ("train"/"heldout") and flags."""
  if split is not None and split not in SUITE_SPLITS:
    raise ValueError(f"unknown suite split {split!r}; valid: {', '.join(SUITE_SPLITS)}")
  return [name for name, s in SUITE.items()
          if (split is None or s.split == split) and (demo is None or s.demo == demo)
          and (paper is None or s.paper == paper)]


def get_spec(name: str) -> TaskSpec:
  """`SUITE[name]`, or `UnknownTaskError` listing the valid names."""
  try:
    return SUITE[name]
  except (KeyError, TypeError):
    raise UnknownTaskError(
        f"unknown task {name!r}; valid names: {', '.join(SUITE)}") from None


def get_task(name: str, **overrides) -> base.Task:
  """Builds the suite task `name` (loading its dataset once per process).

  Args:
    name: a key of `SUITE`.
    **overrides: field overrides, e.g. `batch_size=8` (the name stays the same).

  Raises:
    UnknownTaskError: `name` is not in the suite (the message lists valid names).
  """
  return get_spec(name).make(**overrides)
