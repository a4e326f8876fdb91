"""The command line end to end on synthetic data (no ../shared needed)."""

import csv
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from ccad.cli import main

FAST = ["--weights", "none", "--input-size", "64", "--epochs", "2", "--feature-views", "1", "--seed", "0"]
FAST += ["--preset", "one-view-lungs"]  # one view: the paper's 2,562 trainable parameters, fine-tuning


@pytest.fixture(scope="module")
def trained_run(synth_folders, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "run"
    assert main(["train", "--data", str(synth_folders / "manifest.csv"), "--out", str(out), *FAST, "--save-h5"]) == 0
    return out


def test_train_writes_every_output(trained_run):
    for name in ("model.keras", "model.h5", "config.json", "history.csv", "split.csv", "metrics.json", "report.html"):
        assert (trained_run / name).is_file(), name
    for fig in ("training_curves", "confusion_matrix", "roc_curve", "reliability", "predictions"):
        assert (trained_run / "figures" / f"{fig}.png").stat().st_size > 1000
    config = json.loads((trained_run / "config.json").read_text())
    assert config["classes"] == ["covid", "normal"] and config["config"]["weights"] == "none"
    assert config["parameters"]["trainable"] == 2562
    assert len(config["data"]["sha256"]) == 64 and "keras" in config["versions"]
    metrics = json.loads((trained_run / "metrics.json").read_text())
    for name in ("accuracy", "sensitivity", "specificity", "precision", "f1", "auc"):
        assert set(metrics[name]) == {"value", "ci95"}
    assert metrics["split"] == "test" and sum(map(sum, metrics["confusion_matrix"])) == metrics["n"]
    with open(trained_run / "history.csv") as f:
        assert len(list(csv.DictReader(f))) == 2
    report = (trained_run / "report.html").read_text()
    assert "not a diagnosis" in report.lower() and report.count("data:image/png;base64,") == 5
    assert "95% CI" in report
    assert "as stored, lung outline in cyan" in report  # the reader sees the X-ray, not the model's crop


def test_split_file_keeps_groups_in_one_split(trained_run):
    with open(trained_run / "split.csv") as f:
        rows = list(csv.DictReader(f))
    split_of = {}
    for r in rows:
        assert split_of.setdefault(r["group"], r["split"]) == r["split"]


def test_saved_model_loads_with_plain_keras(trained_run, synth_folders):
    import keras

    import ccad  # noqa: F401  (the contract: loadable once ccad is imported)
    from ccad.preprocessing.pipeline import load_model_input

    model = keras.models.load_model(trained_run / "model.keras")
    x = load_model_input(sorted((synth_folders / "covid").iterdir())[0], 64)[None]
    p = model.predict(x, verbose=0)
    assert p.shape == (1, 2) and abs(float(p.sum()) - 1) < 1e-5


def test_evaluate_matches_the_training_runs_test_metrics(trained_run, synth_folders, tmp_path):
    out = tmp_path / "eval"
    assert (
        main(
            ["evaluate", "--model", str(trained_run), "--data", str(synth_folders / "manifest.csv"), "--out", str(out)]
        )
        == 0
    )
    a = json.loads((trained_run / "metrics.json").read_text())
    b = json.loads((out / "metrics.json").read_text())
    assert a["n"] == b["n"] and a["confusion_matrix"] == b["confusion_matrix"]
    assert b["auc"]["value"] == pytest.approx(a["auc"]["value"], abs=1e-6)


def test_evaluate_on_a_single_class_set(trained_run, synth_folders, tmp_path):
    from ccad.data.synthetic import generate

    covid_only = tmp_path / "covid-only.csv"
    paths = sorted((generate(tmp_path / "c", n_per_class=8, classes=("covid",), size=64) / "covid").glob("*.png"))
    covid_only.write_text("path,label\n" + "".join(f"{p},covid\n" for p in paths))
    out = tmp_path / "e"
    assert main(["evaluate", "--model", str(trained_run), "--data", str(covid_only), "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == len(paths) and metrics["split"] == "all"
    assert metrics["sensitivity"]["value"] is not None and metrics["auc"]["value"] is None
    assert "AUC needs" in (out / "report.html").read_text()


def test_evaluate_refuses_labels_the_model_does_not_know(trained_run, tmp_path, capsys):
    from ccad.data.synthetic import generate

    data = generate(tmp_path / "three", n_per_class=2, classes=("covid", "normal", "pneumonia"), size=64)
    assert main(["evaluate", "--model", str(trained_run), "--data", str(data), "--out", str(tmp_path / "e")]) == 2
    assert "label 'pneumonia' is not a class of the model" in capsys.readouterr().err
    assert (
        main(
            [
                "evaluate",
                "--model",
                str(trained_run),
                "--data",
                str(data),
                "--classes",
                "covid,normal",
                "--out",
                str(tmp_path / "e"),
            ]
        )
        == 0
    )


def test_predict_formats(trained_run, synth_folders, capsys):
    folder = synth_folders / "normal"
    assert main(["predict", "--model", str(trained_run), str(folder), "--format", "json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert len(results) == len(list(folder.glob("*.png")))
    assert set(results[0]["probabilities"]) == {"covid", "normal"}
    assert main(["predict", "--model", str(trained_run), str(folder), "--format", "csv"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("file,predicted_class,p_covid,p_normal")


def test_predict_reports_a_bad_file_and_goes_on(trained_run, synth_folders, tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"garbage")
    good = sorted((synth_folders / "covid").iterdir())[0]
    assert main(["predict", "--model", str(trained_run), str(bad), str(good), "--format", "json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert "error" in results[0] and "predicted_class" in results[1]


def test_predict_reads_dicom(trained_run, tmp_path, capsys):
    from helpers import GRADIENT, make_dicom

    path = make_dicom(tmp_path / "x.dcm", GRADIENT.astype(np.uint16) * 16)
    assert main(["predict", "--model", str(trained_run), str(path), "--format", "json"]) == 0
    assert "predicted_class" in json.loads(capsys.readouterr().out)[0]


@pytest.mark.parametrize(
    "args,match",
    [
        (["predict", "--model", "/nonexistent", "x.png"], "no such model file or run folder"),
        (["train", "--data", "/nonexistent", "--out", "/tmp/x"], "no such file or folder"),
        (["train", "--data", "{data}", "--out", "{tmp}/r", "--classes", "covid,flu"], "class 'flu' not found"),
        (["train", "--data", "{data}", "--out", "{tmp}/r", "--dropout", "1.5"], "--dropout"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, match, synth_folders, tmp_path, capsys):
    args = [a.format(data=synth_folders, tmp=tmp_path) for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ccad: error:") and match in err and "\n" not in err and "Traceback" not in err


def test_corrupt_training_image_stops_unless_skip_bad(synth_folders, tmp_path, capsys):
    data = tmp_path / "d"
    shutil.copytree(synth_folders, data)
    (data / "manifest.csv").unlink()
    (data / "normal" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "r1"), *FAST]) == 2
    assert "corrupt.png" in capsys.readouterr().err
    assert not (tmp_path / "r1" / "model.keras").exists()
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "r2"), *FAST, "--skip-bad"]) == 0
    assert "corrupt.png" in (tmp_path / "r2" / "bad_files.csv").read_text()


def test_a_crash_while_saving_leaves_no_model(synth_folders, tmp_path, monkeypatch):
    import keras

    def crash(self, path, *a, **k):
        open(path, "wb").write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(keras.Model, "save", crash)
    out = tmp_path / "r"
    assert main(["train", "--data", str(synth_folders), "--out", str(out), *FAST]) == 130
    assert not (out / "model.keras").exists()
    assert not [p for p in out.iterdir() if p.suffix == ".keras" or ".tmp" in p.name]


def test_synth_and_augment_preview(tmp_path):
    data = tmp_path / "s"
    assert main(["synth", str(data), "--n-per-class", "3", "--classes", "covid,normal,pneumonia", "--size", "64"]) == 0
    assert len(list(data.rglob("*.png"))) == 9
    out = tmp_path / "grid.png"
    assert (
        main(
            [
                "augment-preview",
                "--data",
                str(data),
                "--augmentation",
                "paper",
                "--out",
                str(out),
                "--images",
                "2",
                "--variants",
                "3",
                "--input-size",
                "64",
            ]
        )
        == 0
    )
    assert out.stat().st_size > 1000


def test_training_and_inference_preprocessing_are_identical(synth_folders):
    from ccad.data.datasets import discover
    from ccad.preprocessing.batches import image_batches
    from ccad.preprocessing.pipeline import load_images, load_model_input

    samples = discover(synth_folders).samples[:5]
    gray, kept, _ = load_images(samples, 64)
    batch = next(iter(image_batches(gray, None, 5, 2))).numpy()
    direct = np.stack([load_model_input(s.path, 64) for s in kept])
    np.testing.assert_array_equal(batch, direct)


def test_module_entry_point_runs():
    result = subprocess.run([sys.executable, "-m", "ccad", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.startswith("ccad ")


def test_fine_tuning_continues_the_history(synth_folders, tmp_path):
    out = tmp_path / "ft"
    assert (
        main(
            [
                "train",
                "--data",
                str(synth_folders),
                "--out",
                str(out),
                *FAST,
                "--fine-tune-epochs",
                "1",
                "--fine-tune-from",
                "block_16_expand",
                "--optimizer",
                "rmsprop",
                "--class-weight",
                "balanced",
            ]
        )
        == 0
    )
    with open(out / "history.csv") as f:
        phases = [row["phase"] for row in csv.DictReader(f)]
    assert phases == ["frozen", "frozen", "fine-tune"]
    config = json.loads((out / "config.json").read_text())
    assert config["parameters"]["trainable"] > 2562 and config["config"]["optimizer"] == "rmsprop"


def test_weights_from_a_file(tmp_path, synth_folders):
    from ccad.models.classifier import backbone_of, build_classifier

    donor = build_classifier(2, 64, weights="none")
    path = tmp_path / "backbone.weights.h5"
    backbone_of(donor).save_weights(path)
    model = build_classifier(2, 64, weights=str(path))
    for a, b in zip(backbone_of(donor).get_weights(), backbone_of(model).get_weights()):
        np.testing.assert_array_equal(a, b)
