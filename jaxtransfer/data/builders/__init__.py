"""TFDS builders of the embedded datasets (array_record, readable without TensorFlow)."""

import numpy as np
import tensorflow_datasets as tfds


def image_label_info(builder: tfds.core.DatasetBuilder, description: str, image_shape: tuple[int, ...],
                     label: tfds.features.ClassLabel) -> tfds.core.DatasetInfo:
  """DatasetInfo of an {'image': uint8 Tensor, 'label': ClassLabel} dataset stored in generation order.

  `disable_shuffling`: TFDS would otherwise store examples by key hash; with it, example i of a split is
  the i-th generated one (the builders' keys are positions).
  """
  return tfds.core.DatasetInfo(
      builder=builder,
      description=description,
      features=tfds.features.FeaturesDict({
          'image': tfds.features.Tensor(shape=image_shape, dtype=np.uint8),
          'label': label,
      }),
      supervised_keys=('image', 'label'),
      disable_shuffling=True,
  )
