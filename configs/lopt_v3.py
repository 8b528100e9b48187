"""lopt-v3: `lopt-fc-v2` meta-trained further for *validation* performance on a broad,
held-out-disjoint task distribution (CPU).

  lopt meta-train --config configs/lopt_v3.py --workdir runs/lopt_v3 --resume

What changed from `configs/lopt_fc_v2.py` (and why, see the model card):

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

Ablations use the same config with one `--set` (same outer steps, so the same compute):
`--set meta_loss_split=train` (v2's objective), `--set theta_init=None` (no warm start).
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
      "num_steps": 3000,
      "checkpoint_every": 25,
      "keep": 2,
      "log_every": 5,
      "lopt": {"name": "adafac_mlp", "hparams": {}},
      "theta_init": "lopt-fc-v2",
      "families": [{"spec": s, "num_tasks": TASKS_PER_FAMILY} for s in train_specs()],
      "truncation": {"name": "log_uniform", "min_length": 200, "max_length": 1000},
      "random_offset": 1000,
      "meta_loss_split": "outer_valid",
      "estimator": {"name": "pes", "trunc_length": 25, "std": 0.01, "loss_type": "avg"},
      "outer": {"learning_rate": 1e-3, "clip_norm": None, "accumulate": 1},
      "eval": {"every": 0},
  }
