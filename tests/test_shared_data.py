"""Real chest X-rays and the real ImageNet weights from ../shared (skipped without it)."""

import json

import numpy as np
import pytest
from conftest import SHARED, needs_shared
from conftest import run_ccad as ccad

from ccad.screening import Screener

pytestmark = [needs_shared, pytest.mark.shared]
MANIFEST = SHARED / "data" / "covid-cxr" / "manifest.csv"
DATASET_A = ["--data", str(MANIFEST), "--where", "paper_dataset_a=1", "--classes", "covid,normal"]


def test_imagenet_weights_really_loaded():
    import keras
    from PIL import Image

    model = keras.applications.MobileNetV2(weights="imagenet")
    # ImageNet class indices (decode_predictions would download its label file): 285 Egyptian cat, 652 military uniform
    for name, index in (("cat.png", 285), ("grace_hopper.png", 652)):
        image = Image.open(SHARED / "data" / "imagenet-sanity" / name).convert("RGB").resize((224, 224))
        x = keras.applications.mobilenet_v2.preprocess_input(np.asarray(image, np.float32)[None])
        probabilities = model.predict(x, verbose=0)[0]
        assert probabilities.argmax() == index and probabilities[index] > 0.4, (name, probabilities.argmax())


def test_manifest_split_is_used_and_groups_stay_apart():
    from ccad.data.datasets import discover
    from ccad.data.splits import assign_splits

    ds = assign_splits(discover(MANIFEST, ["covid", "normal"], ["paper_dataset_a=1"]))
    assert len(ds.samples) == 309
    assert {s.label for s in ds.samples} == {"covid", "normal"}
    assert sum(s.label == "covid" for s in ds.samples) == 102


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    """The one-view lungs recipe (``--preset one-view-lungs``, the default until issue 37; one view is what the
    TFLite export and the Grad-CAM comparison below take) trained on Dataset A, in a child process: its training
    graphs and their memory end with it, not in the test worker (which then peaks at what the tests load)."""
    out = tmp_path_factory.mktemp("default") / "run"
    ccad(["train", *DATASET_A, "--preset", "one-view-lungs", "--out", str(out)])
    return out


@pytest.mark.slow
def test_the_one_view_recipe_on_dataset_a_reaches_the_bar(default_run):
    metrics = json.loads((default_run / "metrics.json").read_text())
    assert metrics["split"] == "test" and metrics["n"] >= 50
    # The lung-only recipe gives up internal score for not reading the source (0.914 here; the whole-image
    # recipe scores ~0.99 on this split by reading it): docs/generalization.md
    # Accuracy is at a threshold fitted on 48 validation images: two full-suite runs of the same code gave
    # 0.914 and 0.767 (training is not bit-reproducible on CPU). AUC, which needs no threshold, is the bar.
    assert metrics["accuracy"]["value"] >= 0.75, metrics["accuracy"]
    assert metrics["auc"]["value"] >= 0.88, metrics["auc"]
    assert metrics["bootstrap"]["unit"] == "patient group"


@pytest.mark.slow
def test_cross_source_set_is_scored_by_sensitivity(default_run, tmp_path):
    """The second, independent COVID source: one class, so sensitivity with its interval, and no AUC."""
    from ccad.cli import main

    rdb = SHARED / "data" / "covid-cxr-rdb" / "manifest.csv"
    out = tmp_path / "rdb"
    assert main(["evaluate", "--model", str(default_run), "--data", str(rdb), "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == 1000 and metrics["counts"]["covid"] == 1000
    lo, hi = metrics["sensitivity"]["ci95"]
    assert lo <= metrics["sensitivity"]["value"] <= hi
    assert metrics["auc"]["value"] is None


@pytest.fixture(scope="module")
def real_bundle(default_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("bundle") / "bundle"
    ccad(["export", "--model", str(default_run), "--out", str(out), "--int8", "--tflite"])  # INT8 calibration
    return out


@pytest.fixture(scope="module")
def shared_test_split(default_run):
    """The fixed test split of covid-cxr, covid vs normal (held out from Dataset A's training rows too),
    preprocessed as the default run's model expects."""
    import json

    from ccad.data.datasets import discover, label_indices
    from ccad.preprocessing.pipeline import load_images

    ds = discover(MANIFEST, ["covid", "normal"])
    test = [s for s in ds.samples if s.split == "test"]
    preprocess = json.loads((default_run / "config.json").read_text())["preprocess"]
    images, kept, _ = load_images(test, 224, preprocess=preprocess)
    return images, label_indices(kept, ds.classes)


def _tflite_probabilities(path, images):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=2)
    inp = interpreter.get_input_details()[0]
    out = []
    for i in range(0, len(images), 16):
        batch = np.repeat(images[i : i + 16, ..., None], 3, axis=-1).astype(np.float32)
        interpreter.resize_tensor_input(inp["index"], batch.shape)
        interpreter.allocate_tensors()
        interpreter.set_tensor(inp["index"], batch)
        interpreter.invoke()
        outputs = [interpreter.get_tensor(o["index"]) for o in interpreter.get_output_details()]
        out.append(next(o for o in outputs if o.ndim == 2))
    return np.concatenate(out)


@pytest.mark.slow
def test_exported_models_agree_with_keras(default_run, real_bundle, shared_test_split):
    from sklearn.metrics import roc_auc_score

    from ccad.scoring.predictor import KerasPredictor, OnnxPredictor

    images, y = shared_test_split
    keras_p = KerasPredictor.load(default_run).predict_images(images)
    float_p = OnnxPredictor.load(real_bundle).predict_images(images)
    int8_p = OnnxPredictor.load(real_bundle, "int8").predict_images(images)
    np.testing.assert_allclose(float_p, keras_p, atol=1e-4)
    auc = lambda p: roc_auc_score(y == 0, p[:, 0])  # noqa: E731
    # Issue 16 aims at INT8 within 0.005 AUC of float; not met reliably yet (one session's freshly trained model
    # gave a 0.0066 gap, another passed 0.005): INT8 is for throughput until that work is done.
    assert auc(int8_p) >= auc(float_p) - 0.01
    # INT8 keeps the ranking (AUC) but moves probabilities: on the lung-only default input it agrees with the
    # float model on 87-97% of decisions (measured over runs; BENCHMARKS.md "INT8 for decisions"). The export
    # checks it on the validation split: a model that passed must hold on this test split too; one that failed
    # warns whoever loads it. Either way it is the same model, not a broken conversion (>= 80% agreement).
    decision = OnnxPredictor.load(real_bundle).decision
    agreement = np.mean(decision.predict(int8_p) == decision.predict(float_p))
    if OnnxPredictor.load(real_bundle, "int8").card.int8_check["use"] == "decisions":
        assert agreement >= 0.95
    else:
        assert "throughput only" in OnnxPredictor.load(real_bundle, "int8").warning
    assert agreement >= 0.80
    np.testing.assert_allclose(_tflite_probabilities(real_bundle / "model.tflite", images), keras_p, atol=1e-3)
    tflite_int8 = _tflite_probabilities(real_bundle / "model.int8.tflite", images)
    assert np.mean(decision.predict(tflite_int8) == decision.predict(keras_p)) >= 0.80
    assert (real_bundle / "model.int8.onnx").stat().st_size < 3 * 1024 * 1024


@pytest.mark.slow
def test_onnx_heatmaps_match_keras_grad_cam(default_run, real_bundle, shared_test_split):
    import keras
    import tensorflow as tf

    from ccad.models.classifier import CLASSIFIER_LAYER, FEATURES_LAYER
    from ccad.scoring.heatmaps import upsample_map
    from ccad.scoring.predictor import OnnxPredictor

    images, _ = shared_test_split
    model = keras.models.load_model(default_run / "model.keras")
    to_features = keras.Model(model.input, model.get_layer(FEATURES_LAYER).input)
    kernel, bias = model.get_layer(CLASSIFIER_LAYER).get_weights()
    predictor = OnnxPredictor.load(real_bundle)
    correlations = []
    for image in images[:8]:
        x = tf.constant(np.repeat(image[None, ..., None], 3, axis=-1))
        with tf.GradientTape() as tape:
            fmap = to_features(x)
            tape.watch(fmap)
            logits = tf.reduce_mean(fmap, axis=(1, 2)) @ kernel + bias
            c = int(tf.argmax(logits[0]))
            score = logits[0, c]
        grads = tape.gradient(score, fmap)[0].numpy()
        weights = grads.mean(axis=(0, 1))  # Grad-CAM: channel weights = mean gradient
        grad_cam = upsample_map(np.maximum(fmap[0].numpy() @ weights, 0), 224)
        _, onnx_fmap = predictor.predict(np.repeat(image[None, ..., None], 3, axis=-1))
        cam = predictor.heatmap(onnx_fmap[0], c)
        correlations.append(np.corrcoef(cam.ravel(), grad_cam.ravel())[0, 1])
    assert min(correlations) >= 0.9, correlations


@pytest.mark.slow
def test_severity_on_rated_covid_images_beats_predicting_the_mean(real_bundle, tmp_path):
    import shutil

    from ccad.cli import main

    bundle = tmp_path / "bundle"
    shutil.copytree(real_bundle, bundle)
    out = tmp_path / "severity"
    assert (
        main(["severity", "train", "--model", str(bundle), "--data", str(MANIFEST), "--out", str(out), "--attach"]) == 0
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == 91
    for name in ("geographic_extent", "opacity"):
        score = metrics["scores"][name]
        assert score["mae"]["value"] < score["mae_predicting_mean"]["value"], (name, score)
        assert score["pearson_r"]["value"] > 0.3, (name, score)
    covid = sorted((SHARED / "data" / "covid-cxr" / "covid").glob("*.png"))[:8]
    results = list(Screener.load(bundle).screen(covid))
    flagged = [r for r in results if r.predicted_class == "covid"]
    assert flagged and all(r.severity["band"] in {"mild", "moderate", "severe"} for r in flagged)


@pytest.mark.slow
def test_audit_of_the_default_recipe_on_real_images(default_run, tmp_path):
    from ccad.cli import main

    out = tmp_path / "audit"
    assert main(["audit", "--model", str(default_run), *DATASET_A, "--out", str(out)]) == 0
    result = json.loads((out / "audit.json").read_text())
    lung_test = result["lung_test"]
    assert result["split"] == "test" and result["n"] >= 50
    # The default recipe reads the lung fields: showing only them keeps most of the AUC, hiding them loses it
    assert lung_test["lungs_only"]["auc"] >= 0.8, lung_test
    assert lung_test["no_lungs"]["auc"] < lung_test["original"]["auc"], lung_test
    assert result["source_probe"]["confounded_with_label"] is True
    assert "Verdict" in (out / "report.html").read_text()


@pytest.mark.slow
def test_photos_are_out_of_distribution_and_few_test_images_are(default_run):

    photos = sorted((SHARED / "data" / "imagenet-sanity").glob("*.png"))
    results = list(Screener.load(default_run).screen(photos))
    assert [r.in_distribution for r in results] == [False, False]
    flagged = json.loads((default_run / "metrics.json").read_text())["out_of_distribution"]
    assert flagged["n"] >= 50 and flagged["rate"] <= 0.10, flagged
