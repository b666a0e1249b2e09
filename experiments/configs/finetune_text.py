"""Fine-tune a pretrained text encoder on labelled sentences (issue #16): the pretraining head is dropped and
a fresh head goes on the pooled output; the run tokenizes with the checkpoint's own tokenizer.

Run (the imported all-MiniLM-L6-v2, or your own MLM pretraining, experiments/configs/pretrain_mlm_wikitext.py):
  jaxtransfer import-weights --workdir=runs/minilm --variant=minilm-l6
  jaxtransfer finetune --config=experiments/configs/finetune_text.py --workdir=runs/sentiment_head \
      --config.transfer.init_from=runs/minilm
  jaxtransfer finetune --config=experiments/configs/finetune_text.py --workdir=runs/sentiment_full \
      --config.transfer.init_from=runs/minilm --config.trainable=all --config.optim.lr=5e-5
Data: `sentiment_sentences/both` (1600 train / 400 test review sentences, ../shared/data read in place);
your own: `--config.data=textfile:reviews.tsv` (`text<TAB>label` lines). Fewer labels:
`--config.input.train_split='train[:300]'`. A head-only run (the default) trains on features extracted once
(the feature cache, train.feature_cache); `trainable=all | last:K | lora:8` fine-tunes the encoder.
"""

from jaxtransfer import config


def get_config():
  c = config.base()
  c.data = 'sentiment_sentences/both'
  c.input.manual_dir = '../shared/data'
  c.model.backbone = None          # the checkpoint's own encoder
  c.transfer.init_from = 'runs/minilm'
  c.trainable = 'head'
  c.model.backbone_dropout = 0.1   # BERT's fine-tuning dropout, whatever the checkpoint pretrained with
  c.text.max_len = 64
  c.text.buckets = (16, 32, 48)   # + max_len: ≤ 4 programs; 1.49× fewer positions than padding to 64 (BUILD_NOTES)
  c.optim.lr = 1e-2
  c.optim.warmup_steps = 20
  c.train.steps = 300
  c.train.batch_size = 32
  c.train.log_every = 50
  c.train.checkpoint_every = 300
  return c
