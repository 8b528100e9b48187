"""Truncated unrolls of one inner problem trained by a learned optimizer.

`Unroller` holds a task family (pytree data: pass it to jit as an argument), a learned
optimizer and a truncation schedule (static). It is written for ONE inner problem; the
estimators vmap it over an antithetic pair and the outer step vmaps over the population.

An inner problem is reset (new task config, fresh params and optimizer state, new length)
once `step >= length`: at the next truncation start by default, or at that very step
(`reset_every_step=True`). Every scan iteration trains exactly one step, so no step is
wasted and no mask is needed.

Example:
  >>> import jax
  >>> from lopt.meta import testing, ConstantSchedule, Unroller
  >>> u = Unroller(testing.QuadraticFamily(dim=4), testing.LogLRAdam(), ConstantSchedule(10))
  >>> theta = u.lopt.init_meta(jax.random.PRNGKey(0))
  >>> s = u.init(theta, jax.random.PRNGKey(1))
  >>> s, out = u.unroll(theta, s, jax.random.PRNGKey(2), 5)
  >>> out.meta_loss.shape
  (5,)
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax

__all__ = ["InnerState", "StepGrads", "StepOut", "Unroller", "tree_where", "strong"]

META_LOSS_SPLITS = ("train", "outer_valid", "valid", "test")


def meta_loss_mix(spec: Any) -> tuple[tuple[str, float], ...]:
  """A meta-loss spec as `((split, weight), ...)` with weights summing to 1.

  `spec` is a split name (`"outer_valid"`), or a mapping / pairs of split -> weight
  (`{"train": 0.5, "outer_valid": 0.5}`): the meta-loss is the weighted mix.

  Example:
    >>> meta_loss_mix({"train": 1, "outer_valid": 3})
    (('train', 0.25), ('outer_valid', 0.75))
  """
  if isinstance(spec, str):
    pairs = ((spec, 1.0),)
  else:
    pairs = tuple((str(k), float(v)) for k, v in (spec.items() if hasattr(spec, "items")
                                                   else spec))
  bad = [k for k, _ in pairs if k not in META_LOSS_SPLITS]
  if bad or not pairs:
    raise ValueError(f"meta_loss_split must be one of {META_LOSS_SPLITS} or a mapping of "
                     f"them to weights, got {spec!r}")
  total = sum(w for _, w in pairs)
  if any(w < 0 for _, w in pairs) or total <= 0:
    raise ValueError(f"meta_loss_split weights must be >= 0 with a positive sum, got {spec!r}")
  return tuple((k, w / total) for k, w in pairs)


class InnerState(NamedTuple):
  """One inner problem: params, inner optimizer state, steps done, total length, task cfg."""
  params: Any
  opt_state: Any
  step: jax.Array     # int32 [], inner updates done since the last reset
  length: jax.Array   # int32 [], reset when step reaches it
  cfg: Any            # the task config sampled from the family


class StepGrads(NamedTuple):
  """`Unroller.step_grads`: the (possibly reset) state, gradients and loss of a step."""
  state: "InnerState"
  grads: Any
  loss: jax.Array
  reset: jax.Array
  key: jax.Array      # for the meta-loss batch


class StepOut(NamedTuple):
  """Per-step outputs of an unroll (a leading [T] axis after a scan)."""
  meta_loss: jax.Array  # normalised loss entering the meta-objective
  loss: jax.Array       # raw training loss of this step (before the update)
  reset: jax.Array      # bool: this step started a fresh inner problem


def tree_where(cond: jax.Array, a: Any, b: Any) -> Any:
  """`a` where `cond` (a scalar bool) else `b`, leaf by leaf."""
  return jax.tree.map(lambda x, y: jnp.where(cond, x, y), a, b)


def strong(tree: Any, like: Any = None) -> Any:
  """Casts leaves to concrete (non-weak) dtypes, those of `like` when given.

  Scan carries must keep one type; weak-typed Python scalars from `init` would not.
  """
  if like is None:
    return jax.tree.map(lambda x: jnp.asarray(x, dtype=jnp.asarray(x).dtype), tree)
  return jax.tree.map(lambda x, l: jnp.asarray(x, dtype=l.dtype), tree, like)


@dataclasses.dataclass(frozen=True)
class Unroller:
  """Trains one inner problem from `family` with the learned optimizer `lopt`.

  Attributes:
    family: a `TaskFamily` (a pytree; its arrays are data).
    lopt: a `LearnedOptimizer` (hashable, static).
    schedule: truncation schedule sampling each problem's length.
    random_offset: at the very first init, the step counter starts uniformly in
      `[0, min(random_offset, length))` so the population's resets are staggered.
    meta_loss_split: what each step's meta-loss reads. "train": the step's training loss
      (before its update). "outer_valid": the updated params on a fresh batch of the train
      data held out from inner training (the inner problem then trains on "outer_train",
      see `lopt.tasks.base.META_SPLITS`), as learned_optimization's
      `meta_loss_split="outer_valid"`. "valid"/"test": a fresh batch of that split. A
      mapping `{split: weight}` (or pairs) mixes them (`meta_loss_mix`).
    pass_num_steps: pass the sampled length as `num_steps` to `lopt.make` (for optimizers
      whose features depend on the horizon, e.g. VeLO/Celo); else `num_steps=None`.
    reset_every_step: False (default): a problem whose length is reached is reset at the
      start of the next truncation (`begin`), so it may run past its length to the end of
      the truncation (at most trunc_length - 1 steps); about 2.4x faster here. True: reset
      at the exact step (inside the scan, which then computes a fresh init every step to
      select from); estimators credit the steps after such a reset correctly.
  """
  family: Any
  lopt: Any
  schedule: Any
  random_offset: int = 0
  meta_loss_split: str = "train"
  pass_num_steps: bool = False
  reset_every_step: bool = False

  def __post_init__(self):
    mix = meta_loss_mix(self.meta_loss_split)   # validates
    if not isinstance(self.meta_loss_split, str):   # hashable, jit-static
      object.__setattr__(self, "meta_loss_split", tuple((k, w) for k, w in mix))

  @property
  def inner_split(self) -> str:
    """The split the inner problem trains on: "outer_train" when the meta-loss reads
    "outer_valid" (so the two never share examples), else "train"."""
    mix = meta_loss_mix(self.meta_loss_split)
    return "outer_train" if any(k == "outer_valid" for k, _ in mix) else "train"

  def make_opt(self, theta: Any, length: jax.Array) -> optax.GradientTransformationExtraArgs:
    return self.lopt.make(theta, num_steps=length if self.pass_num_steps else None)

  def init(self, theta: Any, key: jax.Array, *, offset: bool = True,
           length: int | None = None) -> InnerState:
    """A fresh inner problem; `length` overrides the schedule (full unrolls)."""
    k_cfg, k_params, k_len, k_off = jax.random.split(key, 4)
    cfg = self.family.sample(k_cfg)
    params = self.family.task(cfg).init(k_params)
    n = self.schedule.sample(k_len) if length is None else jnp.asarray(length, jnp.int32)
    opt_state = self.make_opt(theta, n).init(params)
    step = jnp.zeros((), jnp.int32)
    if offset and self.random_offset > 0:
      hi = jnp.minimum(self.random_offset, n)
      step = jax.random.randint(k_off, (), 0, hi, jnp.int32)
    return strong(InnerState(params, opt_state, step, n, cfg))

  def blank(self, theta: Any) -> InnerState:
    """A placeholder problem (zeros, `length=-1`) that the first `begin`/`step` replaces
    by a fresh one with the random initial offset. Cheap: population init compiles no
    task or optimizer init."""
    shapes = jax.eval_shape(self.init, theta, jax.random.PRNGKey(0))
    s = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), shapes)
    return s._replace(length=jnp.full((), -1, jnp.int32))

  def begin(self, theta: Any, s: InnerState, key: jax.Array) -> tuple[InnerState, jax.Array]:
    """Resets the problem if its length is reached; returns `(state, was_reset)`."""
    reset = s.step >= s.length
    return tree_where(reset, self.fresh(theta, s, key), s), reset

  def fresh(self, theta: Any, s: InnerState, key: jax.Array) -> InnerState:
    """The problem that replaces `s` at a reset (`begin` selects it where due): the random
    initial offset applies only to a `blank` placeholder (the population's first draw)."""
    new = strong(self.init(theta, key, offset=True), s)
    return new._replace(step=jnp.where(s.length < 0, new.step, 0))

  def step(self, theta: Any, s: InnerState, key: jax.Array) -> tuple[InnerState, StepOut]:
    """Trains the problem one step (resetting it first if `reset_every_step`)."""
    g = self.step_grads(theta, s, key)
    updates, opt_state = self.step_update(theta, g.state.params, g.state.opt_state, g.grads,
                                          g.loss, g.state.length)
    return self.step_finish(g, optax.apply_updates(g.state.params, updates), opt_state)

  # `step` in three parts, so a population of several families can run the learned
  # optimizer's update (`step_update`) of same-shaped problems as one batch.
  def step_grads(self, theta: Any, s: InnerState, key: jax.Array) -> "StepGrads":
    """Reset (if `reset_every_step`), batch, loss and gradients of one step."""
    k_reset, k_batch, k_loss, k_meta = jax.random.split(key, 4)
    if self.reset_every_step:
      s, reset = self.begin(theta, s, k_reset)
    else:
      reset = jnp.zeros((), bool)
    task = self.family.task(s.cfg)
    batch = task.sample_batch(k_batch, self.inner_split)
    (loss, _), grads = jax.value_and_grad(task.loss, has_aux=True)(s.params, k_loss, batch)
    return StepGrads(s, grads, loss, reset, k_meta)

  def step_update(self, theta: Any, params: Any, opt_state: Any, grads: Any, loss: jax.Array,
                  length: jax.Array) -> tuple[Any, Any]:
    """The learned optimizer's update: `(updates, new opt_state)`."""
    return self.make_opt(theta, length).update(grads, opt_state, params, loss=loss)

  def step_finish(self, g: "StepGrads", params: Any, opt_state: Any
                  ) -> tuple[InnerState, StepOut]:
    """The new state from the updated params and optimizer state; the step's meta-loss."""
    s = g.state
    task = self.family.task(s.cfg)
    meta, key = 0.0, g.key
    for split, weight in meta_loss_mix(self.meta_loss_split):
      if split == "train":
        loss = g.loss
      else:   # each held-out split its own fresh batch (the first uses the step's key)
        k_b, k_l = jax.random.split(key)
        key = jax.random.fold_in(key, 1)
        loss, _ = task.loss(params, k_l, task.sample_batch(k_b, split))
      meta = meta + weight * task.normalizer(loss)
    new = InnerState(params, opt_state, s.step + 1, s.length, s.cfg)
    return strong(new, s), StepOut(jnp.asarray(meta, jnp.float32), g.loss, g.reset)

  def update_signature(self, s: InnerState) -> tuple:
    """Problems of unrollers with equal signatures can share one batched `step_update`
    (same learned optimizer and options, same param/state structure and per-problem
    shapes; `s` may carry leading batch axes, which are ignored)."""
    tree = (s.params, s.opt_state)
    nb = jnp.ndim(s.step)
    leaves = tuple((jnp.shape(x)[nb:], jnp.result_type(x)) for x in jax.tree.leaves(tree))
    return (self.lopt, self.pass_num_steps, jax.tree.structure(tree), leaves)

  def unroll(self, theta: Any, s: InnerState, key: jax.Array, num_steps: int, *,
             remat: bool = False) -> tuple[InnerState, StepOut]:
    """`num_steps` steps of `step` under `lax.scan`; outputs have a leading [T] axis."""
    body = lambda st, k: self.step(theta, st, k)
    if remat:
      body = jax.checkpoint(body)
    return lax.scan(body, s, jax.random.split(key, num_steps))


jax.tree_util.register_dataclass(
    Unroller, data_fields=["family"],
    meta_fields=["lopt", "schedule", "random_offset", "meta_loss_split", "pass_num_steps",
                 "reset_every_step"])
