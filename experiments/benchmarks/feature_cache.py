"""Benchmark: one linear-probe epoch on cached features vs re-running the frozen backbone every step.

    python -m experiments.benchmarks.feature_cache [--checkpoint=runs/demo/pretrain] [--out=runs/bench/feature_cache.json]

Both sides use THE train step (`steps.make_train_step` + `optim.make`, head-only labels) on the same
head; 'backbone' feeds images from the grain pipeline through the full model with the backbone frozen
(XLA already drops its backward pass, so this is the fair baseline), 'cached' feeds the features
extracted once (`features.extract`) from memory through a model whose backbone is the identity.
Compilation is excluded (one warm-up epoch); the best of `--repeats` epochs is reported, plus the
one-time extraction cost and the break-even number of epochs. Target: ≥ 20× per epoch.
"""

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np


def main(argv=None):
  p = argparse.ArgumentParser()
  p.add_argument('--checkpoint', default='runs/demo/pretrain')
  p.add_argument('--data', default='real_digits')
  p.add_argument('--batch_size', type=int, default=128)
  p.add_argument('--repeats', type=int, default=3)
  p.add_argument('--out', default='runs/bench/feature_cache.json')
  a = p.parse_args(argv)
  from jaxtransfer import config as config_lib
  from jaxtransfer import features, optim, rules, runtime, steps, transfer
  from jaxtransfer.data import catalog, pipeline
  from jaxtransfer.models import model as model_lib
  runtime.configure()

  src = catalog.load(a.data, 'train')
  n = len(src)
  info = catalog.info(a.data)
  spec = {'backbone': transfer.source_backbone_spec(a.checkpoint), 'head': {'name': 'linear', 'num_outputs': info.num_classes}}
  model = model_lib.build(spec)
  variables = jax.jit(lambda k: model.init(k, jnp.zeros((1, *info.image_shape))))(jax.random.key(0))
  params, stats = transfer.init_from(a.checkpoint, variables['params'], variables.get('batch_stats', {}))
  cfg = config_lib.base().optim
  steps = n // a.batch_size

  # Re-running the frozen backbone.
  labels = rules.freeze_labels('head', params)
  tx = optim.make(cfg, labels, 10 * steps)
  step_full = jax.jit(steps.make_train_step(model, tx, rules.frozen_blocks(labels)))

  def epoch_backbone(params, opt_state):
    batches = pipeline.train_batches(src, batch_size=a.batch_size, seed=0)
    for s in range(steps):
      params, _, opt_state, m = step_full(params, stats, opt_state, next(batches), jax.random.key(s))
    jax.block_until_ready(params)
    return params, opt_state

  # Cached features.
  t = time.perf_counter()
  bb = features.Backbone(spec['backbone'], params['backbone'], (stats or {}).get('backbone', {}), 'bench')
  feats = features.extract(bb, src)
  extract_s = time.perf_counter() - t
  head_model = model_lib.Model(backbone=features.Identity(), head=model.head)
  hparams = {'head': params['head']}
  htx = optim.make(cfg, rules.freeze_labels('all', hparams), 10 * steps)
  step_head = jax.jit(steps.make_train_step(head_model, htx, ()))
  rng = np.random.default_rng(0)

  def epoch_cached(hp, hs):
    order = rng.permutation(n)
    for s in range(steps):
      idx = order[s * a.batch_size:(s + 1) * a.batch_size]
      batch = {'image': feats.x[idx], 'label': feats.y[idx].astype(np.int32)}
      hp, _, hs, m = step_head(hp, {}, hs, batch, jax.random.key(s))
    jax.block_until_ready(hp)
    return hp, hs

  results = {}
  for name, fn, state in (('backbone', epoch_backbone, (params, tx.init(params))),
                          ('cached', epoch_cached, (hparams, htx.init(hparams)))):
    state = fn(*state)                         # warm-up: compilation
    times = []
    for _ in range(a.repeats):
      t = time.perf_counter()
      state = fn(*state)
      times.append(time.perf_counter() - t)
    results[name] = {'epoch_s': min(times), 'all_s': times}
  speedup = results['backbone']['epoch_s'] / results['cached']['epoch_s']
  out = {'benchmark': 'feature_cache', 'checkpoint': a.checkpoint, 'data': a.data, 'examples': n,
         'batch_size': a.batch_size, 'steps_per_epoch': steps, 'feature_dim': int(feats.x.shape[1]),
         'epoch_s': {k: v['epoch_s'] for k, v in results.items()}, 'all_s': {k: v['all_s'] for k, v in results.items()},
         'extract_once_s': extract_s, 'speedup_per_epoch': speedup, 'target_speedup': 20.0, 'meets_target': speedup >= 20,
         'break_even_epochs': extract_s / max(results['backbone']['epoch_s'] - results['cached']['epoch_s'], 1e-9),
         'jax': jax.__version__, 'devices': str(jax.devices())}
  os.makedirs(os.path.dirname(a.out) or '.', exist_ok=True)
  with open(a.out, 'w') as f:
    json.dump(out, f, indent=1)
  print(json.dumps(out, indent=1))
  return out


if __name__ == '__main__':
  main()
