"""Two views of the lungs in one model (ccad.models.classifier.combine_views, ccad.preprocessing.pipeline)."""

import numpy as np
import pytest

from ccad.errors import ConfigError, ModelError
from ccad.models.classifier import (
    backbone_of,
    build_classifier,
    classifier_kernel,
    combine_views,
    load_keras_model,
    with_feature_map,
)
from ccad.preprocessing.pipeline import prepare_full, to_model_input
from ccad.preprocessing.steps import preprocessing_views

THORAX, LUNGS = "thorax+equalize+lowpass", "lungs+equalize+lowpass"


def _two_heads(size=48, seed=0):
    """Two single-view classifiers on one random backbone, each with its own random head."""
    rng = np.random.default_rng(seed)
    first = build_classifier(2, size, weights="none")
    second = build_classifier(2, size, weights="none")
    backbone_of(second).set_weights(backbone_of(first).get_weights())
    for model in (first, second):
        kernel, bias = model.get_layer("classifier").get_weights()
        model.get_layer("classifier").set_weights(
            [rng.normal(0, 0.05, kernel.shape).astype("float32"), rng.normal(0, 0.5, bias.shape).astype("float32")]
        )
    return first, second


def test_the_two_view_probability_is_the_mean_of_its_parts_and_its_heatmap_too(tmp_path):
    first, second = _two_heads()
    combined = combine_views([first, second])
    x = np.random.default_rng(1).random((5, 48, 48, 6)).astype("float32")
    p, fmap = combined.predict(x, verbose=0)
    p0, f0 = with_feature_map(first).predict(x[..., :3], verbose=0)
    p1, f1 = with_feature_map(second).predict(x[..., 3:], verbose=0)
    assert not np.allclose(p0, p1, atol=1e-3)  # two different heads, or the test could not fail
    np.testing.assert_allclose(p, (p0 + p1) / 2, atol=1e-6)
    np.testing.assert_allclose(fmap, np.concatenate([f0, f1], axis=-1), atol=1e-6)
    cam = fmap @ classifier_kernel(combined)
    np.testing.assert_allclose(cam, (f0 @ classifier_kernel(first) + f1 @ classifier_kernel(second)) / 2, atol=1e-5)
    # one backbone in the model, not two
    assert sum(1 for layer in combined.layers if layer.name.startswith("mobilenetv2")) == 1
    combined.save(tmp_path / "m.keras")
    again = load_keras_model(tmp_path / "m.keras")
    np.testing.assert_allclose(with_feature_map(again).predict(x, verbose=0)[0], p, atol=1e-6)


def test_views_must_share_their_backbone():
    first = build_classifier(2, 48, weights="none")
    other = build_classifier(2, 48, weights="none")  # another random backbone
    with pytest.raises(ModelError, match="backbones differ"):
        combine_views([first, other])


def test_a_two_view_input_is_each_view_prepared_alone_with_the_lungs_found_once():
    from ccad.data.synthetic import patient_anatomy, render_patient

    rng = np.random.default_rng(3)
    gray = render_patient(rng, "covid", 256, patient_anatomy(rng))
    both = prepare_full(gray, 64, f"{THORAX}|{LUNGS}", lung_fields=True)
    assert both.image.shape == (64, 64, 2)
    for v, view in enumerate((THORAX, LUNGS)):
        alone = prepare_full(gray, 64, view, lung_fields=True)
        np.testing.assert_array_equal(both.image[..., v], alone.image)
        assert alone.box == both.box
    assert both.picture.shape == (64, 64)
    model_input = to_model_input(both.image[None], views=2)
    assert model_input.shape == (1, 64, 64, 6)
    np.testing.assert_array_equal(model_input[0, ..., 3], both.image[..., 1])


@pytest.mark.parametrize(
    "value, message",
    [
        (f"none|{LUNGS}", "crops to the lungs"),
        (f"{LUNGS}|{LUNGS}", "given twice"),
        ("lungs|nope", "unknown preprocessing step"),
    ],
)
def test_bad_view_lists_are_refused(value, message):
    with pytest.raises(ConfigError, match=message):
        preprocessing_views(value)


def test_a_two_view_recipe_refuses_what_it_cannot_train():
    from ccad.training.config import make_config

    with pytest.raises(ConfigError, match="frozen phase only"):
        make_config(preprocess=f"{THORAX}|{LUNGS}", fine_tune_epochs=2)
    with pytest.raises(ConfigError, match="dense head"):
        make_config(preprocess=f"{THORAX}|{LUNGS}", head="extra-trees")
