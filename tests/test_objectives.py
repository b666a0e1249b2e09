"""Objectives own the kind of run: a new one registered here runs through `train.train` unchanged."""

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from jaxtransfer import checkpoint, errors, objectives, steps, train
from jaxtransfer import config as config_lib
from jaxtransfer.data import catalog

TINY_CNN = {'name': 'cnn', 'stages': [4], 'dense': [8]}


class Parity(objectives.Objective):
  """Toy objective: is the digit even? Two logits, trains only on digits 0–4, flips each training image
  left-right with probability 1/2 drawn from the step key, and counts the examples it has seen (state)."""

  name = 'toy_parity'

  def head(self, config, num_outputs):
    del config, num_outputs
    return {'name': 'linear', 'num_outputs': 2}

  def train_examples(self, config, num_outputs):
    labels = catalog.labels(config.data, config.input.train_split, data_dir=config.input.data_dir or None)
    return np.flatnonzero(labels < 5)

  def loss(self, logits, batch):
    target = batch['label'] % 2
    return (optax.softmax_cross_entropy_with_integer_labels(logits, target).mean(),
            {'parity_accuracy': jnp.mean(jnp.argmax(logits, -1) == target),
             'max_label': jnp.max(batch['label']).astype(jnp.float32)})

  @property
  def has_state(self):
    return True

  def init_state(self, params):
    del params
    return {'seen': jnp.zeros((), jnp.int32)}

  def grads(self, fwd, trainable, state, batch, key):
    flip_key, dropout_key = jax.random.split(key)
    flip = jax.random.bernoulli(flip_key, 0.5, (batch['image'].shape[0], 1, 1, 1))
    batch = {**batch, 'image': jnp.where(flip, batch['image'][:, :, ::-1], batch['image'])}
    grads, stats, _, metrics = super().grads(fwd, trainable, state, batch, dropout_key)
    return grads, stats, {'seen': state['seen'] + batch['label'].shape[0]}, metrics

  def per_example(self, logits, batch):
    return {'parity_correct': (jnp.argmax(logits, -1) == batch['label'] % 2).astype(jnp.float32)}

  def summarize(self, values):
    return {'parity_accuracy': float(np.mean(values['parity_correct']))}


@objectives.register('toy_parity')
def _parity(config: ml_collections.ConfigDict) -> Parity:
  del config
  return Parity()


def toy_config(data_dir: str) -> ml_collections.ConfigDict:
  c = config_lib.base()
  c.objective = 'toy_parity'
  c.data, c.input.data_dir, c.input.eval_split = 'real_digits', data_dir, 'test[:64]'
  c.model.backbone = TINY_CNN
  c.train.steps, c.train.batch_size, c.train.checkpoint_every, c.train.log_every = 4, 16, 4, 2
  c.optim.lr = 1e-2
  return c


def test_a_new_objective_runs_through_the_training_loop(data_dir, tmp_path):
  out = train.train(toy_config(data_dir), str(tmp_path))
  assert out.params['head']['out']['kernel'].shape == (8, 2)              # the objective's head
  assert set(out.metrics) == {'parity_accuracy', 'count'} and out.metrics['count'] == 64
  assert set(out.opt_state) == {'tx', 'seen'} and int(out.opt_state['seen']) == 4 * 16
  lines = [json.loads(l) for l in open(os.path.join(tmp_path, 'metrics.jsonl'))]
  logged = [l for l in lines if 'train/loss' in l]
  assert [l['step'] for l in logged] == [2, 4]
  assert all(0 <= l['train/parity_accuracy'] <= 1 and l['train/max_label'] <= 4 for l in logged)  # its examples
  assert lines[-1]['eval/parity_accuracy'] == out.metrics['parity_accuracy']
  mngr, step = checkpoint.open_for_reading(str(tmp_path))               # the state is checkpointed
  try:
    assert int(checkpoint.restore_subtree(mngr, step, 'opt_state', None)['seen']) == 64
    assert checkpoint.read_meta(mngr, step)['model_spec']['head'] == {'name': 'linear', 'num_outputs': 2}
  finally:
    mngr.close()


def test_unknown_objective_is_a_one_line_config_error(tmp_path):
  c = config_lib.base()
  c.objective = 'nope'
  c.input.data_dir = str(tmp_path / 'no_data')     # nothing is prepared: the error comes first
  with pytest.raises(errors.ConfigError, match=r"^objective: unknown objective 'nope'; known: .*classification") as e:
    train.train(c, str(tmp_path))
  assert '\n' not in str(e.value) and not os.path.exists(tmp_path / 'no_data')


def test_configs_saved_before_config_objective_still_name_their_objective():
  legacy = config_lib.base().to_dict()
  del legacy['objective']
  legacy['model']['head'] = 'multitask'
  legacy['tasks'] = {'a': {'kind': 'binary', 'key': 'labels', 'index': 0}}
  assert objectives.from_config(ml_collections.ConfigDict(legacy)).name == 'multitask'
  legacy['model']['head'] = 'linear'
  assert objectives.from_config(ml_collections.ConfigDict(legacy)).name == 'classification'
  # A new config must say objective='multitask'; a multitask head under classification is an error.
  c = config_lib.base()
  c.model.head = 'multitask'
  with pytest.raises(errors.ConfigError, match="set objective='multitask'"):
    steps.model_spec(c, 10)
  c.objective, c.tasks = 'multitask', legacy['tasks']
  assert steps.model_spec(c, 10)['head'] == {'name': 'multitask', 'outputs': {'a': 1}, 'hidden': [], 'dropout': 0.0}
