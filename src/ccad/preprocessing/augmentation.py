"""Training-time augmentation presets, applied to training batches only.

Images arrive as float32 batches (B, H, W, C) in [0, 1] (C = 1 in training). The transforms are
Keras preprocessing layers run inside the ``tf.data`` pipeline; brightness is
multiplicative (as Keras's ``ImageDataGenerator(brightness_range=...)``), which
Keras's additive ``RandomBrightness`` is not, so it is a two-line op here.

Presets:

``paper``
    The paper's Table 4 exactly: horizontal and vertical flips, rotation up to
    90 degrees, zoom [0.5, 1.0] (up to 2x magnification, height and width
    drawn independently, as ``ImageDataGenerator(zoom_range=[0.5, 1.0])``),
    width shift +-20 px, height shift +-50%, brightness x[0.5, 1.0], fill
    ``nearest``; featurewise centering (minus the training-set mean) and
    samplewise centering (minus each image's mean). Centering is a
    normalization, not a random transform: like ``ImageDataGenerator``, which
    standardizes every batch it yields (the paper's validation split included),
    it is applied to every image, as parameter-free layers at the model's input
    (:func:`ccad.models.classifier.build_classifier`), not here.
``cxr`` (default)
    What a radiologist would accept: no flips (the heart's side is anatomy),
    rotation +-5 degrees, zoom +-10%, shifts +-5%, brightness x[0.9, 1.1],
    contrast +-10%.
``robust``
    ``cxr`` plus transforms that destroy acquisition cues (how a hospital's scanner,
    processing and export make its images look, which a model can learn instead of
    the lungs): gamma x^g with g in [0.6, 1.6], down- and up-sampling to 35-100% of
    the side, Gaussian noise (sd up to 0.02), JPEG re-compression at quality 30-95.
``none``
    Nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ccad.errors import ConfigError


@dataclass(frozen=True)
class AugmentationSpec:
    horizontal_flip: bool = False
    vertical_flip: bool = False
    rotation_degrees: float = 0.0
    zoom: tuple[float, float] | None = None  # Keras RandomZoom factor range; negative zooms in
    width_shift_px: float | None = None
    width_shift: float = 0.0  # fraction of width
    height_shift: float = 0.0  # fraction of height
    brightness: tuple[float, float] | None = None  # multiplicative range
    contrast: float = 0.0
    gamma: tuple[float, float] | None = None  # x ** g, g log-uniform in the range
    resample_scale: tuple[float, float] | None = None  # down- then up-sampling, fraction of the side
    noise_std: float = 0.0  # Gaussian noise, sd drawn in [0, noise_std] per image
    jpeg_quality: tuple[int, int] | None = None  # JPEG re-compression quality range
    fill_mode: str = "nearest"
    featurewise_center: bool = False
    samplewise_center: bool = False


PRESETS: dict[str, AugmentationSpec] = {
    "paper": AugmentationSpec(
        horizontal_flip=True,
        vertical_flip=True,
        rotation_degrees=90.0,
        zoom=(-0.5, 0.0),
        width_shift_px=20.0,
        height_shift=0.5,
        brightness=(0.5, 1.0),
        featurewise_center=True,
        samplewise_center=True,
    ),
    "cxr": AugmentationSpec(
        rotation_degrees=5.0,
        zoom=(-0.1, 0.1),
        width_shift=0.05,
        height_shift=0.05,
        brightness=(0.9, 1.1),
        contrast=0.1,
    ),
    "none": AugmentationSpec(),
}
PRESETS["robust"] = AugmentationSpec(
    **{
        **PRESETS["cxr"].__dict__,
        "gamma": (0.6, 1.6),
        "resample_scale": (0.35, 1.0),
        "noise_std": 0.02,
        "jpeg_quality": (30, 95),
    }
)


def get_spec(name: str) -> AugmentationSpec:
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown augmentation {name!r} (choose from {', '.join(PRESETS)})") from None


class Augmenter:
    """Callable on a batch tensor (B, H, W, C) in [0, 1]; returns an augmented batch.

    Args:
        name: preset name.
        image_size: input size in pixels (for the pixel-valued width shift).
        seed: seed of the random transforms.
    """

    def __init__(self, name: str, image_size: int, seed: int = 0):
        import keras

        self.name = name
        self.image_size = image_size
        self.spec = spec = get_spec(name)
        L = keras.layers
        layers = []
        flip = {(True, True): "horizontal_and_vertical", (True, False): "horizontal", (False, True): "vertical"}
        if spec.horizontal_flip or spec.vertical_flip:
            layers.append(L.RandomFlip(flip[(spec.horizontal_flip, spec.vertical_flip)], seed=seed))
        if spec.rotation_degrees:
            layers.append(L.RandomRotation(spec.rotation_degrees / 360.0, fill_mode=spec.fill_mode, seed=seed + 1))
        if spec.zoom:
            layers.append(L.RandomZoom(spec.zoom, spec.zoom, fill_mode=spec.fill_mode, seed=seed + 2))
        width = spec.width_shift_px / image_size if spec.width_shift_px else spec.width_shift
        if width or spec.height_shift:
            layers.append(L.RandomTranslation(spec.height_shift, width, fill_mode=spec.fill_mode, seed=seed + 3))
        if spec.contrast:
            layers.append(L.RandomContrast(spec.contrast, value_range=(0.0, 1.0), seed=seed + 4))
        self.layers = layers

    @property
    def is_identity(self) -> bool:
        spec = self.spec
        return not self.layers and not (
            spec.brightness or spec.gamma or spec.resample_scale or spec.noise_std or spec.jpeg_quality
        )

    def __call__(self, images):
        import tensorflow as tf

        x = images
        for layer in self.layers:
            x = layer(x, training=True)
        spec = self.spec
        per_image = [tf.shape(x)[0], 1, 1, 1]
        if spec.brightness:
            lo, hi = spec.brightness
            x = x * tf.random.uniform(per_image, lo, hi)
        x = tf.clip_by_value(x, 0.0, 1.0)
        if spec.gamma:
            lo, hi = np.log(spec.gamma[0]), np.log(spec.gamma[1])
            x = tf.pow(x + 1e-6, tf.exp(tf.random.uniform(per_image, lo, hi)))
        if spec.resample_scale:  # one scale per batch: bilinear down, bilinear up
            side = tf.cast(tf.round(self.image_size * tf.random.uniform([], *spec.resample_scale)), tf.int32)
            x = tf.image.resize(tf.image.resize(x, [side, side], antialias=True), [self.image_size, self.image_size])
        if spec.noise_std:
            x = x + tf.random.normal(tf.shape(x)) * tf.random.uniform(per_image, 0.0, spec.noise_std)
        x = tf.clip_by_value(x, 0.0, 1.0)
        if spec.jpeg_quality:
            lo, hi = spec.jpeg_quality
            x = tf.map_fn(lambda im: tf.image.random_jpeg_quality(im, lo, hi), x)
        return tf.clip_by_value(x, 0.0, 1.0)


def augment_numpy(augmenter: Augmenter, images: np.ndarray) -> np.ndarray:
    """Augment a (B, H, W, 3) numpy batch eagerly (for previews and tests)."""
    import tensorflow as tf

    return np.asarray(augmenter(tf.convert_to_tensor(images, tf.float32)))
