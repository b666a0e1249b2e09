"""The glyph builder's process pool never forks (issue #19): JAX may have started its threads already."""

import os
import warnings

import jax

from jaxtransfer.data.builders import glyphs


def test_pool_after_jax_started_renders_identically_without_fork(tmp_path, monkeypatch):
  jax.devices()  # JAX's backend is up, as in a training run that prepares its data after building the mesh

  def no_fork():
    raise AssertionError('os.fork() called after JAX started')

  monkeypatch.setattr(os, 'fork', no_fork)
  monkeypatch.setattr(glyphs, '_POOL_MIN_EXAMPLES', 20)  # train (24) renders in the pool, test (8) serially
  monkeypatch.setattr(glyphs, '_CHUNK', 8)
  cfg = glyphs.GlyphsConfig(name='pool', num_train=24, num_test=8, seed=5)
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    builder = glyphs.Glyphs(config=cfg, data_dir=str(tmp_path))
    builder.download_and_prepare(file_format='array_record')
  assert not [w for w in caught if 'fork' in str(w.message).lower()], [str(w.message) for w in caught]
  for split, n in (('train', 24), ('test', 8)):  # pool vs serial, and serial vs serial
    pooled = builder.as_data_source(split)
    labels = glyphs.split_labels(5, split, n)
    assert len(pooled) == n
    for i in range(n):  # byte-identical to rendering the same (seed, split, index) in this process
      assert pooled[i]['label'] == labels[i]
      assert pooled[i]['image'].tobytes() == glyphs.render_example(5, split, i, labels[i]).tobytes(), (split, i)

