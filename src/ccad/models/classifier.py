"""The paper's classifier: a frozen ImageNet backbone + global average pooling + Dropout + Dense softmax.

Input: (size, size, 3) float32 in [0, 1] (see :mod:`ccad.preprocessing.pipeline`). A
parameter-free ``Rescaling`` layer maps it to the backbone's own input range,
so the saved model is self-contained. With MobileNetV2 (the default and the
paper's) at 224x224x3 and 2 classes the model has 2,260,546 parameters of which
2,562 (the Dense layer) are trainable.

The other backbones are the Keras applications the paper compares (its Tables 3
and 9), each with its own default input size and preprocessing: ``tf`` mode
scales [0, 1] to [-1, 1]; ``caffe`` mode (VGG, ResNet50) to 0-255 minus the
ImageNet channel means (channel order does not matter: the X-ray's three
channels are equal).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

from ccad.errors import ConfigError, ModelError


@dataclass(frozen=True)
class Backbone:
    name: str
    application: str  # the keras.applications constructor
    default_size: int
    mode: str  # "tf": [-1, 1]; "caffe": 0-255 minus the ImageNet means
    min_size: int = 32


BACKBONES = {
    b.name: b
    for b in (
        Backbone("mobilenet_v2", "MobileNetV2", 224, "tf"),
        Backbone("mobilenet", "MobileNet", 224, "tf"),
        Backbone("vgg16", "VGG16", 224, "caffe"),
        Backbone("vgg19", "VGG19", 224, "caffe"),
        Backbone("resnet50", "ResNet50", 224, "caffe"),
        Backbone("inception_v3", "InceptionV3", 299, "tf", 75),
        Backbone("xception", "Xception", 299, "tf", 71),
        Backbone("inception_resnet_v2", "InceptionResNetV2", 299, "tf", 75),
    )
}
DEFAULT_BACKBONE = "mobilenet_v2"
CAFFE_MEANS = (103.939, 116.779, 123.68)


def get_backbone(name: str) -> Backbone:
    try:
        return BACKBONES[name]
    except KeyError:
        raise ConfigError(f"unknown backbone {name!r} (choose from {', '.join(BACKBONES)})") from None


BACKBONE_LAYER = "mobilenetv2_1.00_{size}"
FEATURES_LAYER = "pooled_features"
DROPOUT_LAYER = "dropout"
CLASSIFIER_LAYER = "classifier"
IMAGENET_SIZES = (96, 128, 160, 192, 224)
DEFAULT_FINE_TUNE_FROM = "block_13_expand"


def keras_cache_dir() -> Path:
    """Where Keras looks for downloaded weights: ``$KERAS_HOME/models`` or ``~/.keras/models``."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return Path(home) / "models"


def imagenet_weights_file(size: int) -> Path:
    """The cached no-top ImageNet weights file Keras loads for this input size."""
    weight_size = size if size in IMAGENET_SIZES else 224
    return keras_cache_dir() / f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_{weight_size}_no_top.h5"


def imagenet_weights_available(size: int = 224) -> bool:
    return imagenet_weights_file(size).is_file()


def build_classifier(
    num_classes: int,
    input_size: int = 224,
    dropout: float = 0.3,
    weights: str = "imagenet",
    featurewise_mean: float | None = None,
    samplewise_center: bool = False,
    backbone: str = DEFAULT_BACKBONE,
):
    """Build the paper's model (or the same head on another ``backbone``).

    Args:
        num_classes: number of output classes (softmax).
        input_size: square input side in pixels (the paper: 224; also 128).
        dropout: dropout rate before the Dense layer (the paper: 0.3, 0.4, 0.5).
        weights: ``"imagenet"``, ``"none"`` (random init) or a path to a
            no-top MobileNetV2 ``.h5`` weights file.
        featurewise_mean: subtract this training-set mean pixel (the paper's
            ``featurewise_center``), as a parameter-free layer.
        samplewise_center: subtract each image's own mean (the paper's
            ``samplewise_center``), as parameter-free layers.

    Centering lives in the model, so training, evaluation and prediction all
    see it, as with a Keras ``ImageDataGenerator`` that standardizes every
    batch it yields.

    Returns:
        An uncompiled ``keras.Model`` whose backbone is frozen.

    Raises:
        ModelError: ImageNet weights cannot be had offline, or a weights file is missing.
    """
    import keras

    if num_classes < 2:
        raise ConfigError(f"num_classes must be at least 2, got {num_classes}")
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"dropout must be in [0, 1), got {dropout}")
    spec = get_backbone(backbone)
    if input_size < spec.min_size:
        raise ConfigError(f"input size must be at least {spec.min_size} pixels for {backbone}, got {input_size}")
    backbone_weights = (
        _resolve_weights(weights, input_size) if backbone == DEFAULT_BACKBONE else _resolve_other_weights(weights, spec)
    )

    inputs = keras.Input((input_size, input_size, 3), name="image")
    x = _input_scaling(inputs, spec, featurewise_mean, samplewise_center)
    base = _application(spec, input_size, backbone_weights)
    base.trainable = False
    x = base(x, training=False)  # BatchNorm stays in inference mode, also when fine-tuning
    x = keras.layers.GlobalAveragePooling2D(name=FEATURES_LAYER)(x)
    x = keras.layers.Dropout(dropout, name=DROPOUT_LAYER)(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name=CLASSIFIER_LAYER)(x)
    return keras.Model(inputs, outputs, name=f"ccad_{backbone}")


def _input_scaling(x, spec, featurewise_mean: float | None, samplewise_center: bool):
    """The paper's centering (per image, or by the training set's mean pixel), then the backbone's own input
    scaling, as parameter-free layers."""
    import keras

    if samplewise_center:
        image_mean = keras.layers.GlobalAveragePooling2D(keepdims=True, name="image_mean")(x)
        x = keras.layers.Subtract(name="samplewise_center")([x, image_mean])
    if featurewise_mean is not None:
        x = keras.layers.Rescaling(1.0, offset=-float(featurewise_mean), name="featurewise_center")(x)
    if spec.mode == "caffe":
        return keras.layers.Rescaling(255.0, offset=[-m for m in CAFFE_MEANS], name="to_caffe_range")(x)
    return keras.layers.Rescaling(2.0, offset=-1.0, name="to_minus1_1")(x)


def _resolve_weights(weights: str, input_size: int) -> str | None:
    if weights == "none":
        return None
    if weights == "imagenet":
        if not imagenet_weights_available(input_size):
            download_imagenet_weights(input_size)
        return "imagenet"
    if not Path(weights).is_file():
        raise ModelError(f"`weights` {weights}: no such file (use imagenet, none or a .h5 weights file)")
    return str(weights)


def download_imagenet_weights(input_size: int) -> None:
    import keras

    try:
        keras.applications.MobileNetV2(include_top=False, weights="imagenet", input_shape=(input_size, input_size, 3))
    except Exception as e:
        raise ModelError(
            f"ImageNet weights for MobileNetV2 are not in the Keras cache ({imagenet_weights_file(input_size)}) "
            "and could not be downloaded: go online once, or set KERAS_HOME to a folder holding them "
            "(e.g. KERAS_HOME=../shared/keras-home), or use `weights` none"
        ) from e


def _resolve_other_weights(weights: str, spec: Backbone) -> str | None:
    """Weights for a backbone other than MobileNetV2: Keras's cache (or a download) for imagenet."""
    if weights == "none":
        return None
    if weights == "imagenet":
        return "imagenet"
    if not Path(weights).is_file():
        raise ModelError(f"`weights` {weights}: no such file (use imagenet, none or a .h5 weights file)")
    return str(weights)


def _application(spec: Backbone, input_size: int, weights: str | None):
    import keras

    constructor = getattr(keras.applications, spec.application)
    extra = {"alpha": 1.0} if spec.name in ("mobilenet_v2", "mobilenet") else {}
    try:
        return constructor(input_shape=(input_size, input_size, 3), include_top=False, weights=weights, **extra)
    except Exception as e:
        if weights == "imagenet" and spec.name != DEFAULT_BACKBONE:
            raise ModelError(
                f"ImageNet weights for {spec.application} are not in the Keras cache "
                f"({keras_cache_dir()}) and could not be downloaded: use `weights` none "
                "(a random backbone) or go online once"
            ) from e
        raise ModelError(f"cannot build {spec.application} with weights {weights!r}: {e}") from e


def imagenet_available_for(backbone: str, input_size: int | None = None) -> bool:
    """Whether ImageNet weights for ``backbone`` can be had now (cache or download)."""
    if backbone == DEFAULT_BACKBONE:
        return imagenet_weights_available(input_size or 224)
    spec = get_backbone(backbone)
    try:
        _application(spec, input_size or spec.default_size, "imagenet")
        return True
    except ModelError:
        return False


def backbone_of(model):
    """The pretrained sub-model inside a classifier built by :func:`build_classifier`."""
    import keras

    for layer in model.layers:
        if isinstance(layer, keras.Model):
            return layer
    raise ModelError(f"model {model.name!r} has no backbone sub-model")


def feature_extractor(model):
    """A model from the image input to the pooled 1280-d features."""
    import keras

    return keras.Model(model.input, model.get_layer(FEATURES_LAYER).output, name="features")


#: A multi-view model's concatenated feature maps (what its bundle exports as the feature map).
FEATURE_MAP_LAYER = "feature_maps"
PROBABILITIES_LAYER = "mean_of_views"


@functools.lru_cache(maxsize=None)
def _select_view_layer():
    """The Keras layer that takes one view's 3 channels from a multi-view input (registered for loading)."""
    import keras

    @keras.saving.register_keras_serializable(package="ccad", name="SelectView")
    class SelectView(keras.layers.Layer):
        """Channels ``3 * index`` .. ``3 * index + 2`` of a (N, H, W, 3 x views) input."""

        def __init__(self, index: int, **kwargs):
            super().__init__(**kwargs)
            self.index = int(index)

        def call(self, x):
            return x[..., 3 * self.index : 3 * self.index + 3]

        def compute_output_shape(self, input_shape):
            return (*input_shape[:-1], 3)

        def get_config(self):
            return {**super().get_config(), "index": self.index}

    return SelectView


def combine_views(models: list):
    """One model from single-view classifiers trained on the views of one X-ray (:func:`build_classifier`,
    the same frozen backbone): input (N, H, W, 3 x views), view v is channels 3v..3v+2 and goes through the
    shared backbone and a copy of its own model's head (pooling, dropout, dense); the outputs are the mean of
    the views' probabilities and the views' feature maps side by side (N, h, w, d x views).

    The backbone is taken from ``models[0]``: the others must hold the same weights (they are frozen)."""
    import keras
    import numpy as np

    first = backbone_of(models[0])
    for other in models[1:]:
        for a, b in zip(first.weights, backbone_of(other).weights):
            if a.shape != b.shape or not np.array_equal(a.numpy(), b.numpy()):
                raise ModelError("combine_views: the models' backbones differ (train each view on the same backbone)")
    size = int(models[0].input_shape[1])
    select = _select_view_layer()
    inputs = keras.Input((size, size, 3 * len(models)), name="image")
    scaling = [layer for layer in models[0].layers[1:] if isinstance(layer, keras.layers.Rescaling)]
    probabilities, maps = [], []
    for v, model in enumerate(models):
        x = select(v, name=f"view_{v}")(inputs)
        for layer in scaling:
            x = layer(x)
        fmap = first(x, training=False)
        maps.append(fmap)
        pooled = keras.layers.GlobalAveragePooling2D(name=f"{FEATURES_LAYER}_{v}")(fmap)
        dense = model.get_layer(CLASSIFIER_LAYER)
        dropped = keras.layers.Dropout(model.get_layer(DROPOUT_LAYER).rate, name=f"{DROPOUT_LAYER}_{v}")(pooled)
        head = keras.layers.Dense(dense.units, activation="softmax", name=f"{CLASSIFIER_LAYER}_{v}")
        probabilities.append(head(dropped))
        head.set_weights(dense.get_weights())
    mean = keras.layers.Average(name=PROBABILITIES_LAYER)(probabilities)
    feature_map = keras.layers.Concatenate(axis=-1, name=FEATURE_MAP_LAYER)(maps)
    return keras.Model(inputs, [mean, feature_map], name=f"ccad_{len(models)}_views")


def is_multi_view(model) -> bool:
    """Whether ``model`` was made by :func:`combine_views` (it has both outputs already)."""
    return any(layer.name == FEATURE_MAP_LAYER for layer in model.layers)


def with_feature_map(model):
    """A model with two outputs: the class probabilities and the backbone's last feature map (what the
    bundle exports, and what class activation maps are made from)."""
    import keras

    if is_multi_view(model):
        return model  # built with both outputs (combine_views)
    return keras.Model(model.input, [model.output, model.get_layer(FEATURES_LAYER).input], name="ccad_export")


def classifier_kernel(model):
    """The Dense layer's kernel (features, classes): the weights of the class activation maps. A multi-view
    model's: the views' kernels stacked and divided by the number of views, so that a class activation map
    on its concatenated feature map is the mean of the views' maps."""
    import numpy as np

    if is_multi_view(model):
        heads = sorted(
            (layer for layer in model.layers if layer.name.startswith(CLASSIFIER_LAYER + "_")),
            key=lambda layer: int(layer.name.rsplit("_", 1)[1]),
        )
        kernels = [layer.get_weights()[0] for layer in heads]
        return (np.concatenate(kernels, axis=0) / len(kernels)).astype(np.float32)
    return np.asarray(model.get_layer(CLASSIFIER_LAYER).get_weights()[0], np.float32)


def head_of(model, feature_dim: int):
    """The trainable head (Dropout + Dense) as a model on pooled features; shares weights with ``model``."""
    import keras

    features = keras.Input((feature_dim,), name="features")
    x = model.get_layer(DROPOUT_LAYER)(features)
    return keras.Model(features, model.get_layer(CLASSIFIER_LAYER)(x), name="head")


def unfreeze_for_fine_tuning(model, from_layer: str | None = None) -> int:
    """Make backbone layers from ``from_layer`` on trainable (BatchNorm stays frozen); ``"all"``: every
    layer of the backbone.

    Returns the number of trainable parameters afterwards.
    """
    import keras

    backbone = backbone_of(model)
    names = [layer.name for layer in backbone.layers]
    if from_layer is None and DEFAULT_FINE_TUNE_FROM not in names:
        from_layer = names[int(len(names) * 0.8)]  # other backbones: the last fifth of the layers
    from_layer = from_layer or DEFAULT_FINE_TUNE_FROM
    if from_layer == "all":
        from_layer = names[0]
    if from_layer not in names:
        raise ConfigError(
            f"`fine_tune_from` {from_layer!r} is not a layer of {backbone.name} "
            "(MobileNetV2: e.g. block_13_expand, Conv_1; or all)"
        )
    start = names.index(from_layer)
    backbone.trainable = True
    for i, layer in enumerate(backbone.layers):
        layer.trainable = i >= start and not isinstance(layer, keras.layers.BatchNormalization)
    return sum(int(w.numpy().size) for w in model.trainable_weights)


def imagenet_original_parameters(name: str) -> int:
    """Parameters of ``name`` as ImageNet published it: 224/299 px with the 1000-class top (the paper's Table 3
    counts), built with random weights (no download)."""
    import keras

    spec = get_backbone(name)
    model = getattr(keras.applications, spec.application)(include_top=True, weights=None)
    count = int(model.count_params())
    del model
    keras.backend.clear_session()
    return count


def count_parameters(model) -> tuple[int, int]:
    """(total, trainable) parameter counts."""
    trainable = sum(int(w.numpy().size) for w in model.trainable_weights)
    return int(model.count_params()), trainable


def load_keras_model(path: str | os.PathLike):
    """Load a ``.keras`` (or ``.h5``) model written by ccad, with a clear error if it cannot be."""
    import keras

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: no such model file")
    _select_view_layer()  # multi-view models use it
    try:
        return keras.models.load_model(path, compile=False)
    except Exception as e:
        raise ModelError(f"{path}: not a loadable Keras model ({type(e).__name__}: {e})") from e
