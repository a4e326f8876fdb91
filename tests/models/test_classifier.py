import keras
import pytest

from ccad.errors import ConfigError, ModelError
from ccad.models.classifier import build_classifier, count_parameters, unfreeze_for_fine_tuning


def test_paper_parameter_counts_at_224_two_classes():
    model = build_classifier(2, 224, 0.3, weights="none")
    assert count_parameters(model) == (2_260_546, 2_562)
    assert model.output_shape == (None, 2)


def test_128_input_and_three_classes():
    model = build_classifier(3, 128, 0.5, weights="none")
    assert model.input_shape == (None, 128, 128, 3)
    assert count_parameters(model)[1] == 1280 * 3 + 3


def test_fine_tuning_unfreezes_from_layer_but_keeps_batchnorm_frozen():
    model = build_classifier(2, 96, weights="none")
    trainable = unfreeze_for_fine_tuning(model, "block_16_expand")
    assert trainable > 2_562
    backbone = model.get_layer("mobilenetv2_1.00_96")
    bns = [layer for layer in backbone.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert bns and not any(layer.trainable for layer in bns)
    assert not backbone.get_layer("block_15_expand").trainable
    assert backbone.get_layer("block_16_expand").trainable
    with pytest.raises(ConfigError, match="is not a layer of"):
        unfreeze_for_fine_tuning(model, "no_such_layer")


def test_missing_imagenet_weights_offline_is_a_clear_error(tmp_path, monkeypatch):
    import ccad.models.classifier as m

    monkeypatch.setenv("KERAS_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure: no network")

    monkeypatch.setattr(keras.applications, "MobileNetV2", offline)
    with pytest.raises(ModelError, match="KERAS_HOME"):
        m.build_classifier(2, 224, weights="imagenet")


def test_weights_file_must_exist(tmp_path):
    with pytest.raises(ModelError, match="no such file"):
        build_classifier(2, 96, weights=str(tmp_path / "w.h5"))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(num_classes=1), "at least 2"),
        (dict(dropout=1.0), "dropout"),
        (dict(input_size=8), "at least 32"),
    ],
)
def test_bad_settings(kwargs, match):
    args = dict(num_classes=2, input_size=96, dropout=0.3, weights="none") | kwargs
    with pytest.raises(ConfigError, match=match):
        build_classifier(**args)


def test_paper_centering_layers_subtract_image_and_dataset_means():
    import numpy as np

    model = build_classifier(2, 64, weights="none", featurewise_mean=0.25, samplewise_center=True)
    assert count_parameters(model)[1] == 2562
    centred = keras.Model(model.input, model.get_layer("featurewise_center").output)
    x = np.random.default_rng(0).random((3, 64, 64, 3)).astype("float32")
    np.testing.assert_allclose(centred.predict(x, verbose=0).mean(axis=(1, 2, 3)), -0.25, atol=1e-5)
