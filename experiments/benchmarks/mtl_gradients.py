"""Benchmark: the cost of each loss-weighting method's train step on the scenes multi-task model.

    python -m experiments.benchmarks.mtl_gradients [--batch_size=32] [--rounds=7] [--out=runs/bench/mtl_gradients.json]

THE multi-task train step (`steps.make_train_step` with the multi-task objective and its weighting
method, jitted with the loop's buffer donation) of experiments/configs/multitask_scenes.py's model (two
conv blocks 16-32, max pooling, six heads with a hidden layer of 64; everything trains) on one batch of
random 48×48 scenes with 30 % unknown labels. Variants: equal (one backward pass), uncertainty, and GradNorm / PCGrad / CAGrad with
their task gradients at the backbone output ('features') and at the shared parameters ('params').
Variants run interleaved in rounds (one untimed call, then the mean of 3 timed ones); the JSON holds the
median step time of each, its ratio to `equal`, and XLA's temporary-buffer bytes of the compiled step.
"""

import argparse
import json
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

VARIANTS = (('equal', 'features'), ('uncertainty', 'features'), ('gradnorm', 'features'), ('pcgrad', 'features'),
            ('cagrad', 'features'), ('gradnorm', 'params'), ('pcgrad', 'params'), ('cagrad', 'params'))


def main(argv=None) -> None:
  p = argparse.ArgumentParser()
  p.add_argument('--batch_size', type=int, default=32)
  p.add_argument('--rounds', type=int, default=7)
  p.add_argument('--out', default='runs/bench/mtl_gradients.json')
  a = p.parse_args(argv)
  from experiments.configs import multitask_scenes
  from jaxtransfer import objectives, optim, rules, runtime, steps
  from jaxtransfer.models import model as model_lib
  runtime.configure()

  config = multitask_scenes.get_config('scenes/u30', init_from=None)
  model = model_lib.build(steps.model_spec(config, 0))
  rng = np.random.default_rng(0)
  b = a.batch_size
  batch = {'image': jnp.asarray(rng.random((b, 48, 48, 1), np.float32)),
           'labels': jnp.asarray(rng.choice([-1, 0, 1], size=(b, 10), p=[0.3, 0.35, 0.35]).astype(np.int32))}
  variables = jax.jit(model.init)(jax.random.key(0), batch['image'][:1])
  labels = rules.freeze_labels(config.trainable, variables['params'])
  tx = optim.make(config.optim, labels, 1000)

  steps, state, temp_bytes = {}, {}, {}
  for method, where in VARIANTS:
    name = f'{method}/{where}' if method not in ('equal', 'uncertainty') else method
    config.mtl.weighting, config.mtl.task_gradients = method, where
    objective = objectives.from_config(config)
    fn = jax.jit(steps.make_train_step(model, tx, (), objective), donate_argnums=(0, 1, 2))
    params = jax.tree.map(jnp.array, variables['params'])
    opt = steps.opt_init(tx, objective)(params)
    args = (params, jax.tree.map(jnp.array, variables.get('batch_stats', {})), opt, batch, jax.random.key(1))
    compiled = fn.lower(*args).compile()
    mem = compiled.memory_analysis()
    temp_bytes[name] = int(getattr(mem, 'temp_size_in_bytes', 0)) if mem is not None else None
    steps[name], state[name] = compiled, args

  def call(name):
    params, stats, opt, batch_, key = state[name]
    params, stats, opt, metrics = steps[name](params, stats, opt, batch_, key)
    jax.block_until_ready(metrics)
    state[name] = (params, stats, opt, batch_, key)

  times = {name: [] for name in steps}
  for r in range(a.rounds):
    for name in steps:
      call(name)
      t0 = time.perf_counter()
      for _ in range(3):
        call(name)
      times[name].append((time.perf_counter() - t0) / 3)
    print(f'round {r + 1}/{a.rounds}: ' + ', '.join(f'{n} {1e3 * t[-1]:.1f} ms' for n, t in times.items()), flush=True)
  median = {n: statistics.median(t) for n, t in times.items()}
  res = {'batch_size': b, 'rounds': a.rounds, 'devices': jax.device_count(),
         'step_ms': {n: round(1e3 * m, 2) for n, m in median.items()},
         'over_equal': {n: round(m / median['equal'], 3) for n, m in median.items()},
         'temp_bytes': temp_bytes}
  os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
  with open(a.out, 'w') as f:
    json.dump(res, f, indent=1)
  print(json.dumps(res, indent=1))


if __name__ == '__main__':
  main()
