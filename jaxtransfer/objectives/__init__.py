"""Objectives: what a run optimises and how it is measured, separate from the one training loop.

`config.objective` names one entry of `REGISTRY`; `from_config(config)` builds it. An objective (the
interface: `base.Objective`) owns what kind of run it is — its head spec, its label validation and
choice of training examples, its loss and metrics, its extra state — so `train.train` has no branch per
objective. Adding one = a module in this package with a `from_config(config) -> Objective` and one line
in `REGISTRY` (or `@register('name')` on the factory, e.g. in a test).

    objective = objectives.from_config(config)              # config.objective = 'classification'
    head = objective.head(config, num_outputs)               # {'name': 'linear', 'num_outputs': 10}
"""

from collections.abc import Callable

import ml_collections

from jaxtransfer import errors
from jaxtransfer.objectives import classification as classification_lib
from jaxtransfer.objectives import mae as mae_lib
from jaxtransfer.objectives import mlm as mlm_lib
from jaxtransfer.objectives import multitask as multitask_lib
from jaxtransfer.objectives import simclr as simclr_lib
from jaxtransfer.objectives.base import Batch, Forward, Objective

Factory = Callable[[ml_collections.ConfigDict], Objective]

REGISTRY: dict[str, Factory] = {
    'classification': classification_lib.from_config,
    'multitask': multitask_lib.from_config,
    'mlm': mlm_lib.from_config,
    'mae': mae_lib.from_config,
    'simclr': simclr_lib.from_config,
}

# The constructors, for code that builds an objective without a config (tests, benchmarks).
classification = classification_lib.classification
multitask = multitask_lib.multitask
parse_tasks = multitask_lib.parse_tasks
weighting_method = multitask_lib.weighting_method


def register(name: str) -> Callable[[Factory], Factory]:
  """Decorator: `@register('mine')` on `def factory(config) -> Objective` makes `objective='mine'` work."""

  def decorate(factory: Factory) -> Factory:
    REGISTRY[name] = factory
    return factory

  return decorate


def name_of(config: ml_collections.ConfigDict) -> str:
  """`config.objective`; for configs saved before that key existed, 'multitask' when model.head says so."""
  name = config.get('objective')
  if name is None:
    return 'multitask' if config.model.head == 'multitask' else 'classification'
  return name


def from_config(config: ml_collections.ConfigDict) -> Objective:
  """The objective a run's config trains (and its checkpoints are evaluated) with."""
  name = name_of(config)
  if name not in REGISTRY:
    raise errors.ConfigError(f'objective: unknown objective {name!r}; known: {", ".join(sorted(REGISTRY))}')
  return REGISTRY[name](config)


__all__ = ['REGISTRY', 'Batch', 'Forward', 'Objective', 'classification', 'from_config', 'multitask', 'name_of',
           'parse_tasks', 'register', 'weighting_method']
