"""Masked-language-model pretraining of a small Transformer encoder on WikiText-2 sentences (issue #16).

Run (reads ../shared/data/wikitext-2-raw in place):
  jaxtransfer pretrain --config=experiments/configs/pretrain_mlm_wikitext.py --workdir=runs/mlm_wikitext
  jaxtransfer pretrain --config=experiments/configs/pretrain_mlm_wikitext.py:quick --workdir=/tmp/mlm  # seconds
Then fine-tune on labelled sentences from it (the MLM head is dropped, a fresh head goes on the pooled output):
  jaxtransfer finetune --config=experiments/configs/finetune_text.py --workdir=runs/sentiment \
      --config.transfer.init_from=runs/mlm_wikitext

Data: `wikitext2/sentences` (76,699 training sentences, ~2M words; validation 7,9k sentences for the
masked-token accuracy and perplexity). Tokenizer: SentencePiece (unigram, 8000 pieces) trained on the
training sentences at the start of the run, deterministically, and saved in every checkpoint's meta.
Model: pre-LN encoder, 4 layers, width 128, 4 heads, MLP 512, mean pooling (transformer.py); sequences of
at most 64 tokens. Batches of like lengths (`text.group_by_length`: 50 batches at a time sorted by token count),
each padded to 16, 32, 48 or 64: a batch of 128 random sentences almost always holds one of 64 tokens, so
uniform batches all pad to 64; these steps run 1.40× as fast (10,000 steps: 46 min on the 2-core Intel Xeon,
64 min with uniform batches) and fine-tune as well. BERT masking (15 %; 80/10/10), Adam with warm-up and cosine
decay. Measured time and curve: BUILD_NOTES.md.
"""

from jaxtransfer import config

BACKBONE = {'name': 'transformer', 'num_layers': 4, 'width': 128, 'num_heads': 4, 'mlp_dim': 512,
            'pool': 'mean', 'vocab_size': 0, 'max_len': 64, 'dropout': 0.1}


def get_config(arg: str = ''):
  c = config.base()
  c.data = 'wikitext2/sentences'
  c.input.train_split, c.input.eval_split = 'train', 'validation[:2000]'
  c.input.manual_dir = '../shared/data'
  c.objective = 'mlm'
  c.text.tokenizer = 'sentencepiece'
  c.text.vocab_size = 8000
  c.text.max_len = 64
  c.text.buckets = (16, 32, 48)   # + max_len: ≤ 4 programs
  c.text.group_by_length = 50     # batches of like lengths: 1.40× the steps/s of uniform batches (BUILD_NOTES)
  c.model.backbone = dict(BACKBONE)
  c.optim.lr = 2e-3               # 1e-3 stayed on the frequent-token plateau for 1000+ steps in the planning
  c.optim.warmup_steps = 300      # prototype (../shared/DESIGN.md); 2e-3 left it at ~1000

  c.optim.weight_decay = 0.01
  c.optim.grad_clip = 1.0
  c.train.steps = 10000           # 46 min on the 2-core Intel Xeon (BUILD_NOTES); 3000 steps gave no fine-tuning gain
  c.train.batch_size = 128
  c.train.log_every = 100
  c.train.eval_every = 1000
  c.train.checkpoint_every = 2000
  c.train.keep_checkpoints = 10   # every 2000 steps kept: the fine-tuning gain vs pretraining steps curve
  if arg == 'quick':   # a smoke run: a few steps on a few thousand sentences, small vocabulary
    c.input.train_split, c.input.eval_split = 'train[:3000]', 'validation[:200]'
    c.text.vocab_size = 1000
    c.train.steps, c.train.batch_size, c.train.eval_every, c.train.checkpoint_every = 20, 32, 10, 10
    c.train.log_every = 10
  return c
