"""lopt-v3: Celo-Adam's learned scheduler, warm-started from the official weights (MIT),
meta-trained for *validation* performance on a broad, held-out-disjoint task distribution.

  lopt meta-train --config lopt_v3 --workdir runs/lopt_v3            # a new run
  mkdir -p runs/lopt_v3 && cp meta_runs/lopt_v3/* runs/lopt_v3/                 # or continue
  lopt meta-train --config lopt_v3 --workdir runs/lopt_v3 --resume   # the shipped run

(from the repository root, with the official weights at `../shared/pretrained/celo/`).

What changed from `configs/lopt_fc_v2.py` (and why, see the model card):

* architecture and warm start: Celo-Adam (an LSTM scheduler setting Adam's per-tensor step
  size from the training fraction and loss statistics) from its official weights; it won
  the meta-validation selection against `adafac_mlp` from lopt-fc-v2, whose per-parameter
  MLP overfits small datasets;
* objective: the meta-loss is the loss of the updated parameters on a held-out stream of
  each task's *training* data (`meta_loss_split="outer_valid"`, as learned_optimization);
  the inner problems train on the other 90 % (`lopt.tasks.base.META_SPLITS`). v2's
  training-loss objective rewarded overfitting (its validation loss rose after an early
  minimum on held-out tasks);
* distribution: 16 parametric families drawn from `lopt.tasks.distribution.SPACE` (MLP,
  small ConvNet, 1-layer transformer and LSTM byte LMs; width, depth, activation, LayerNorm,
  batch size, init-scale range, reparameterisation / reduced-batch augmentations), none of
  them a held-out architecture (`distribution.heldout_match`);
* selection: candidates and checkpoints are compared on `distribution.meta_valid_specs`
  (`lopt.meta.selection`), never on the held-out suite.

Ablations use the same config with `--set` (compared at equal outer steps, so equal
compute): `--set meta_loss_split=train` (the training-loss objective); `--set
lopt.name=adafac_mlp --set theta_init=lopt-fc-v2 --set pass_num_steps=False` (v2's
architecture and warm start). docs/results/meta.md has the table.
"""

from lopt.tasks import distribution

NUM_FAMILIES = 16
TASKS_PER_FAMILY = 2


def train_specs() -> list[dict]:
  """The meta-training families (deterministic: `distribution.META_TRAIN_SEED`)."""
  return distribution.sample_specs(distribution.META_TRAIN_SEED, NUM_FAMILIES)


def get_config():
  return {
      "name": "lopt_v3",
      "seed": 0,
      "num_steps": 1500,
      "checkpoint_every": 25,
      "keep": 2,
      "log_every": 5,
      "lopt": {"name": "celo_adam", "hparams": {}},
      "theta_init": "../shared/pretrained/celo/celo_adam_theta.state",
      "pass_num_steps": True,     # Celo-Adam's scheduler reads the training fraction
      "families": [{"spec": s, "num_tasks": TASKS_PER_FAMILY} for s in train_specs()],
      "truncation": {"name": "log_uniform", "min_length": 200, "max_length": 1000},
      "random_offset": 1000,
      "meta_loss_split": "outer_valid",
      "estimator": {"name": "pes", "trunc_length": 25, "std": 0.01, "loss_type": "avg"},
      "outer": {"learning_rate": 1e-3, "clip_norm": None, "accumulate": 1},
      "eval": {"every": 0},
  }
