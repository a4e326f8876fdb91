"""The application layer: one Screener from files or bytes to typed predictions, the same input, resume and
error contract for every adapter, and the CLI's table of commands that names flags where the library names
parameters. No TensorFlow, no bundle: a predictor whose network outputs the tests set."""

import csv
import io
import pickle

import numpy as np
import pytest
from PIL import Image

from ccad.cli import COMMANDS, build_parser, flag_words, flags_of, main
from ccad.errors import ConfigError, ImageReadError
from ccad.io.images import ImageTooLargeError
from ccad.io.inputs import input_key, iter_inputs
from ccad.models.card import ModelCard
from ccad.preprocessing.pipeline import Prepared
from ccad.scoring.predictor import Predictor
from ccad.screening import Intake, Reader, Screener, Upload
from ccad.screening.results import check_outputs, predict_to_csv


class MeanPredictor(Predictor):
    """p(covid) = the input's mean; a one-cell feature map."""

    def _network(self, batch):
        mean = batch.mean(axis=(1, 2, 3))
        return np.stack([mean, 1 - mean], axis=1), np.ones((len(batch), 1, 1, 4), np.float32)


def screener(intake=Intake()) -> Screener:
    card = ModelCard(
        classes=["covid", "normal"],
        positive_class="covid",
        input_size=8,
        preprocess="none",
        models={"float": "m"},
        decision={"positive_index": 0, "threshold": 0.5, "temperature": 1.0, "rule": "0.5", "fitted_on": "a test"},
    )
    s = Screener(MeanPredictor(card), intake)
    s.prepare = lambda gray: Prepared(np.full((8, 8), float(gray.mean()), np.float32), gray, (0, 8, 0, 8))
    return s


def png(value: int, side: int = 16) -> bytes:
    """A PNG whose mean is ``value`` (not blank: a blank image is refused as not an X-ray)."""
    buffer = io.BytesIO()
    ramp = value + np.tile(np.array([-1, 1] * (side // 2)), (side, 1))
    Image.fromarray(ramp.astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_files_and_uploads_are_screened_alike_in_input_order(tmp_path):
    bright, dark = tmp_path / "bright.png", tmp_path / "dark.png"
    bright.write_bytes(png(230))
    dark.write_bytes(png(20))
    results = list(
        screener().screen([bright, Upload("u.png", png(230), "files[0]"), dark, Upload("x", b"junk", "files[1]")])
    )
    assert [r.name for r in results] == [str(bright), "u.png", str(dark), "x"]
    assert [r.predicted_class for r in results[:3]] == ["covid", "covid", "normal"]
    assert results[0].probabilities == results[1].probabilities  # the same pixels by path or by bytes
    assert results[3].error.startswith("files[1]: ") and results[3].predicted_class is None  # named by its label


def test_intake_limits_are_checked_before_decoding(tmp_path):
    data = png(100, side=64)  # 4,096 pixels
    with pytest.raises(ImageTooLargeError, match="files\\[0\\]: over the upload limit"):
        screener(Intake(max_bytes=len(data) - 1)).decode(Upload("a", data, "files[0]"))
    with pytest.raises(ImageTooLargeError):
        screener(Intake(max_pixels=4095)).decode(Upload("a", data, "files[0]"))
    assert screener(Intake(max_bytes=len(data), max_pixels=4096)).decode(Upload("a", data)).shape == (64, 64)
    path = tmp_path / "a.png"
    path.write_bytes(data)
    with pytest.raises(ImageReadError, match="over the file limit"):
        screener(Intake(max_bytes=100)).decode(path)


def test_a_reader_travels_to_a_ray_task_and_prepares_as_the_screener_does(tmp_path):
    path = tmp_path / "a.png"
    path.write_bytes(png(128, side=32))
    reader = pickle.loads(pickle.dumps(Reader(16, "none", Intake(max_pixels=10_000))))
    prepared = reader.read(path)
    assert prepared.image.shape == (16, 16) and abs(float(prepared.image.mean()) - 128 / 255) < 1e-3


def test_both_engines_read_the_same_inputs_and_know_a_file_however_it_is_spelled(tmp_path, monkeypatch):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name in ("b.png", "a.png"):
        (folder / name).write_bytes(png(50))
    (tmp_path / "m.csv").write_text("path,label\nimgs/a.png,covid\n")
    (tmp_path / "list.txt").write_text(f"{folder / 'b.png'}\n\n")
    found = list(iter_inputs([folder, tmp_path / "m.csv", tmp_path / "list.txt"]))
    assert [p.name for p in found] == ["a.png", "b.png", "a.png", "b.png"]  # a folder sorted, a manifest, a list
    monkeypatch.chdir(tmp_path)
    assert input_key("imgs/../imgs/a.png") == input_key(folder / "a.png") == str((folder / "a.png").resolve())


def test_a_resumed_csv_skips_what_it_holds_and_refuses_other_columns(tmp_path):
    images = []
    for i in range(3):
        images.append(tmp_path / f"{i}.png")
        images[-1].write_bytes(png(40 * i + 20))
    out = tmp_path / "p.csv"
    assert predict_to_csv(screener(), images[:2], out, progress=False)["scored"] == 2
    counts = predict_to_csv(screener(), images, out, resume=True, progress=False)
    assert (counts["scored"], counts["skipped_done"]) == (1, 2)
    with pytest.raises(ConfigError, match="already exists .*`resume`"):
        predict_to_csv(screener(), images, out, progress=False)
    rows = list(csv.DictReader(open(out)))
    assert [r["file"] for r in rows] == [str(p) for p in images]
    other = tmp_path / "other.csv"
    other.write_text("file,something_else\n")
    with pytest.raises(ConfigError, match="columns are not the ones"):
        predict_to_csv(screener(), images, other, resume=True, progress=False)


def test_library_errors_name_parameters_and_the_cli_names_flags(tmp_path, capsys):
    with pytest.raises(ConfigError, match="^`resume` needs `out`$"):
        check_outputs(None, True, None)
    predict = build_parser()._subparsers._group_actions[0].choices["predict"]
    flags = flags_of(predict)
    assert flags["resume"] == "--resume" and flags["output_format"] == "--output-format"
    assert (
        flag_words("`resume` needs `out`; `heatmap_dir` and `fmt`", flags)
        == "--resume needs --out; --heatmap and --format"
    )
    image = tmp_path / "a.png"
    image.write_bytes(png(10))
    assert main(["predict", "--model", str(tmp_path), str(image), "--resume"]) == 2
    assert capsys.readouterr().err.strip() == "ccad: error: --resume needs --out"


def test_every_command_is_a_row_of_the_table():
    names = [c.name for c in COMMANDS]
    assert len(names) == len(set(names)) == 21
    parser = build_parser()
    choices = parser._subparsers._group_actions[0].choices
    assert list(choices) == names
    for command in COMMANDS:
        assert callable(command.add_arguments) and callable(command.run) and command.help
