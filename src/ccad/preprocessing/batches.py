"""The ``tf.data`` input pipeline that feeds Keras: batches for training (augmented) and for prediction."""

from __future__ import annotations

import numpy as np

from ccad.preprocessing.augmentation import Augmenter

#: Batch size of inference-only passes (feature caching, evaluation). MobileNetV2's early activations at
#: 224 px take ~20 MB an image, so 16 keeps a training process near 1 GB where 64 costs 1.9 GB, at equal speed.
INFERENCE_BATCH = 16


def image_batches(
    images: np.ndarray,
    labels: np.ndarray | None,
    batch_size: int,
    num_classes: int,
    augmenter: Augmenter | None = None,
    shuffle_seed: int | None = None,
    repeat: int = 1,
):
    """A ``tf.data`` pipeline of (B, H, W, 3) batches from (N, H, W) grayscale images in [0, 1].

    Augmentation runs on the single gray channel, which is then repeated to 3.
    """
    import tensorflow as tf

    x = tf.data.Dataset.from_tensor_slices(images)
    if labels is not None:
        x = tf.data.Dataset.zip((x, tf.data.Dataset.from_tensor_slices(np.eye(num_classes, dtype="float32")[labels])))
    else:
        x = x.map(lambda im: (im, 0.0))
    if shuffle_seed is not None:
        x = x.shuffle(len(images), seed=shuffle_seed, reshuffle_each_iteration=True)
    if repeat > 1:
        x = x.repeat(repeat)

    def prepare(im, label):
        im = im[..., None]
        if augmenter is not None:
            im = augmenter(im)  # on one channel: a third of the pixel work
        return tf.repeat(im, 3, axis=-1), label

    x = x.batch(batch_size).map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
    if labels is None:
        x = x.map(lambda im, _: im)
    return x.prefetch(tf.data.AUTOTUNE)


def keras_predict(model, images: np.ndarray, batch_size: int = INFERENCE_BATCH) -> np.ndarray:
    """Outputs of a Keras model with one output for (N, H, W) grayscale images in [0, 1]."""
    if len(images) == 0:
        return np.zeros((0, model.output_shape[-1]), np.float32)
    return model.predict(image_batches(images, None, batch_size, model.output_shape[-1]), verbose=0)
