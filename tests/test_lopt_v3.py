"""The shipped `lopt-v3`: loadable by name everywhere, in the demo set, with its model card."""

import pathlib

import jax
import jax.numpy as jnp

from lopt import learned_opts
from lopt.eval import _specs  # pylint: disable=protected-access
from lopt.tasks import get_task
from lopt.optimizers import make_optimizer
from lopt.training import train

CARD = (pathlib.Path(learned_opts.__file__).parent / "checkpoints" / "lopt-v3"
        / "MODEL_CARD.md")


def test_load_by_name_trains_a_task():
  opt = learned_opts.load("lopt-v3", num_steps=100)
  task = get_task("digits-mlp-32")
  result = train(task, opt, 100, progress=False)
  h = result.history
  assert result.stopped is None and h["valid_loss"][-1] < h["valid_loss"][0] - 0.5


def test_resolver_and_benchmark_demo_set_know_it():
  tx, info = make_optimizer("lopt-v3", num_steps=50)
  assert info.kind == "learned"
  params = {"w": jnp.ones((3, 2))}
  state = tx.init(params)
  updates, _ = tx.update({"w": jnp.ones((3, 2))}, state, params, loss=jnp.float32(1.0))
  assert jnp.all(jnp.isfinite(updates["w"]))
  assert "lopt-v3" in _specs.demo_specs()
  lopt, theta = learned_opts.pretrained("lopt-v3")
  assert type(lopt).__name__ == "CeloAdam"
  assert sum(x.size for x in jax.tree.leaves(theta)) == 36865


def test_model_card_has_what_users_need():
  text = CARD.read_text()
  for section in ("Architecture", "Warm start", "Meta-training distribution", "Objective",
                  "Outer steps", "Compute", "Selection", "Held-out", "Licence"):
    assert f"## {section}" in text, section
  assert (CARD.parent / "meta_curve.png").stat().st_size > 0
  assert (CARD.parent / "LICENSE-celo").exists()
