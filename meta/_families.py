"""Name resolution for the task families a meta-training config asks for.

* `"testing:quadratic"`: `lopt.meta.testing.QuadraticFamily` (no data, for tests);
* `"task:<suite task>"`: one fixed suite task seen as a family (`SingleTaskFamily`);
* `"suite:<suite task>"`: a suite task with sampled init scale and label permutation
  (`lopt.tasks.families.ParametricFamily`);
* any other name: `lopt.tasks.families.get_family(name, **kwargs)`.

Augmentations (`{"name": "reparam", ...}`) wrap a family with `lopt.tasks.augment`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

from lopt import tasks
from lopt.tasks import augment as aug_lib
from lopt.tasks import distribution, families, get_task
from lopt.tasks.base import Task, TaskFamily, register_task

__all__ = ["SingleTaskFamily", "resolve_family", "distribution_family", "augment",
           "suite_task_names", "AUGMENTATIONS"]

# config name -> class name in lopt.tasks.augment
AUGMENTATIONS = {"reparam": "ReparamFamily", "reduced_batch": "ReducedBatchFamily",
                 "grad_noise": "GradNoiseFamily"}


@register_task(data_fields=("inner",))
@dataclasses.dataclass(frozen=True)
class SingleTaskFamily(TaskFamily):
  """A family that always returns the task `inner` (its cfg is a placeholder scalar)."""
  inner: Any = None
  name: str = "single"

  def sample(self, key):
    del key
    return jnp.zeros((), jnp.int32)

  def task(self, cfg):
    del cfg
    return self.inner


def resolve_family(name: str, **kwargs: Any) -> TaskFamily:
  kwargs = _hashable(kwargs)
  if name.startswith("testing:"):
    from lopt.meta import testing
    table = {"quadratic": testing.QuadraticFamily}
    if name[8:] not in table:
      raise ValueError(f"unknown testing family {name!r}; known: testing:quadratic")
    return table[name[8:]](**kwargs)
  if name.startswith("task:"):
    task = get_task(name[5:], **kwargs)
    return SingleTaskFamily(inner=task, name=getattr(task, "name", name[5:]))
  if name.startswith("suite:"):
    # A suite task turned into a family: sampled init scale and (classifiers) label order.
    task = get_task(name[6:])
    lo, hi = kwargs.pop("init_scale_range", (0.5, 2.0))
    permute = kwargs.pop("permute_labels", getattr(task, "num_classes", None) is not None)
    if kwargs:
      raise ValueError(f"unknown options {sorted(kwargs)} for {name!r}")
    return families.ParametricFamily(task, (lo, hi), bool(permute))
  if kwargs:
    raise ValueError(f"family {name!r} takes no options (got {sorted(kwargs)})")
  return families.get_family(name)


def distribution_family(spec: dict) -> TaskFamily:
  """The family of a `lopt.tasks.distribution` spec (refused if it is a held-out one)."""
  match = distribution.heldout_match(spec)
  if match is not None:
    raise ValueError(f"this family duplicates the held-out task {match!r}; the meta-training "
                     "distribution must stay disjoint from the held-out suite")
  return distribution.build_family(spec)


def _hashable(spec: dict) -> dict:
  return {k: tuple(v) if isinstance(v, list) else v for k, v in spec.items()}


def augment(family: TaskFamily, spec: dict) -> TaskFamily:
  spec = _hashable(spec)
  name = spec.pop("name")
  if name not in AUGMENTATIONS:
    raise ValueError(f"unknown augmentation {name!r}; choose one of {sorted(AUGMENTATIONS)}")
  return getattr(aug_lib, AUGMENTATIONS[name])(family, **spec)


def suite_task_names(split: str) -> list[str]:
  return list(tasks.suite_names(split))
