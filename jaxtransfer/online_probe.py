"""The online linear probe of a self-supervised run: a softmax classifier trained, inside every train step, on
the backbone's pooled features with a stop-gradient — so it measures the features as they are and never
shapes them — from the batch's labels (`config.monitor.online_probe`; a dataset with labels).

It lives in the objective's state (`opt_state['probe']`: its weights and its own Adam state), so it is
checkpointed and resumed with the run; its train metrics are `probe_accuracy` (on the batch, before the
update) and `probe_loss`. The decoder or projection head is unaffected; transfer drops the probe with the state.
"""

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from jaxtransfer import errors
from jaxtransfer.data import catalog

LR = 1e-3
_TX = optax.adam(LR)


def init(dim: int, num_classes: int) -> dict[str, Any]:
  """A zero linear classifier of `dim` features into `num_classes` and its Adam state."""
  params = {'kernel': jnp.zeros((dim, num_classes), jnp.float32), 'bias': jnp.zeros((num_classes,), jnp.float32)}
  return {'params': params, 'opt': _TX.init(params)}


def update(state: dict[str, Any], feats: jax.Array, labels: jax.Array) -> tuple[dict[str, Any], dict[str, jax.Array]]:
  """One Adam step of the probe on stop_gradient(`feats`) (B, D) → `labels` (B,); (new state, metrics)."""
  x = jax.lax.stop_gradient(feats).astype(jnp.float32)

  def loss_fn(p):
    logits = x @ p['kernel'] + p['bias']
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), logits

  (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state['params'])
  updates, opt = _TX.update(grads, state['opt'], state['params'])
  accuracy = jnp.mean((jnp.argmax(logits, -1) == labels).astype(jnp.float32))
  return ({'params': optax.apply_updates(state['params'], updates), 'opt': opt},
          {'probe_loss': loss, 'probe_accuracy': accuracy})


def num_classes(config: ml_collections.ConfigDict) -> int:
  """The probe's classes when `monitor.online_probe` is on (the dataset's; one line if it has none), else 0."""
  if not config.get('monitor', {}).get('online_probe', False):
    return 0
  n = catalog.info(config.data, config.input.data_dir or None, manual_dir=config.input.manual_dir or None).num_classes
  if not n:
    raise errors.ConfigError(f'monitor.online_probe: {config.data} has no class labels to probe with')
  return int(n)


class Probed:
  """Mixin of an objective with an online probe (`probe_classes` > 0): its state and its step. The objective
  says how wide its features are (`probe_dim`) and calls `with_probe` in its `grads`."""
  probe_classes: int

  @property
  def has_state(self) -> bool:
    return self.probe_classes > 0

  def probe_dim(self, params: Any) -> int:
    raise NotImplementedError

  def init_state(self, params: Any) -> dict[str, Any]:
    return {'probe': init(self.probe_dim(params), self.probe_classes)} if self.probe_classes else {}

  def with_probe(self, state: dict[str, Any], metrics: dict[str, jax.Array], feats: jax.Array,
                 labels: jax.Array) -> tuple[dict[str, Any], dict[str, jax.Array]]:
    """(state, metrics) after one probe step on `feats` (no-op without a probe)."""
    if not self.probe_classes:
      return state, metrics
    probe, probe_metrics = update(state['probe'], feats, labels)
    return {**state, 'probe': probe}, {**metrics, **probe_metrics}
