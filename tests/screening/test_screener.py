"""The application layer: one Screener from files or bytes to typed predictions, the same input, resume and
error contract for every adapter, and the CLI's table of commands that names flags where the library names
parameters. No TensorFlow, no bundle: a predictor whose network outputs the tests set."""

import csv
import io
import pickle
import threading

import numpy as np
import pytest
from helpers import fake_screener, mean_png
from PIL import Image

from ccad.cli import COMMANDS, build_parser, flag_words, flags_of, main
from ccad.errors import ConfigError, ImageReadError, ImageTooLargeError, ModelError
from ccad.io import images as images_module
from ccad.io.images import read_grayscale
from ccad.io.inputs import input_key, iter_inputs
from ccad.models.ood import OUT_OF_DISTRIBUTION_TEXT, MahalanobisGuard
from ccad.models.severity import SeverityHead
from ccad.models.signing import make_keys
from ccad.preprocessing.pipeline import prepare_full
from ccad.screening import Intake, Reader, Screener, Upload
from ccad.screening import reader as reader_module
from ccad.screening.results import check_outputs, predict_to_csv


def screener(intake=Intake()) -> Screener:
    return fake_screener(intake, classes=["covid", "normal"])


def test_files_and_uploads_are_screened_alike_in_input_order(tmp_path):
    bright, dark = tmp_path / "bright.png", tmp_path / "dark.png"
    bright.write_bytes(mean_png(230))
    dark.write_bytes(mean_png(20))
    results = list(
        screener().screen([bright, Upload("u.png", mean_png(230), "files[0]"), dark, Upload("x", b"junk", "files[1]")])
    )
    assert [r.name for r in results] == [str(bright), "u.png", str(dark), "x"]
    assert [r.predicted_class for r in results[:3]] == ["covid", "covid", "normal"]
    assert results[0].probabilities == results[1].probabilities  # the same pixels by path or by bytes
    assert results[3].error.startswith("files[1]: ") and results[3].predicted_class is None  # named by its label


def test_intake_limits_are_checked_before_decoding(tmp_path):
    data = mean_png(100, side=64)  # 4,096 pixels
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
    path.write_bytes(mean_png(128, side=32))
    reader = pickle.loads(pickle.dumps(Reader(16, "none", Intake(max_pixels=10_000))))
    prepared = reader.read(path)
    assert prepared.image.shape == (16, 16) and abs(float(prepared.image.mean()) - 128 / 255) < 1e-3


def test_both_engines_read_the_same_inputs_and_know_a_file_however_it_is_spelled(tmp_path, monkeypatch):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name in ("b.png", "a.png"):
        (folder / name).write_bytes(mean_png(50))
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
        images[-1].write_bytes(mean_png(40 * i + 20))
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
    with pytest.raises(ConfigError) as raised:
        predict_to_csv(screener(), images, other, resume=True, progress=False)
    assert str(raised.value) == (
        f"{other}: its columns are not the ones this model and ccad write (another model, or an older ccad): "
        "resume into the CSV it was started with, or give another `out`"
    )


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
    image.write_bytes(mean_png(10))
    assert main(["predict", "--model", str(tmp_path), str(image), "--resume"]) == 2
    assert capsys.readouterr().err.strip() == "ccad: error: --resume needs --out"


def test_every_command_is_a_row_of_the_table():
    names = [c.name for c in COMMANDS]
    assert len(names) == len(set(names)) == 22
    parser = build_parser()
    choices = parser._subparsers._group_actions[0].choices
    assert list(choices) == names
    for command in COMMANDS:
        assert callable(command.add_arguments) and callable(command.run) and command.help


# -- the scoring step, field by field ---------------------------------------------------------------------------
TEMPERATURE_2 = {"positive_index": 0, "threshold": 0.5, "temperature": 2.0, "rule": "0.5", "fitted_on": "a test"}


class LungFields:
    """Lung fields found on the image, with the QC flags given."""

    def __init__(self, *flags):
        self.qc_flags = flags

    def at(self, height, width):
        return np.ones((height, width), bool)


def guarded(fields=None) -> Screener:
    """The three-class fake with temperature 2, a guard whose distance is the pooled features' length (cut-off
    0.8), a severity head (extent = 10 x p(covid), 0 to 8, +-1.5) and class activation weights."""
    s = fake_screener(fields=fields, decision=TEMPERATURE_2)
    p = s.predictor
    p.ood = MahalanobisGuard(np.zeros(3), np.eye(3), np.ones(3), 1.0, cutoff=0.8)  # distance: |pooled|
    head = {"weights": [10.0, 0.0, 0.0], "bias": 0.0, "range": [0.0, 8.0], "interval_halfwidth": 1.5}
    p.severity = SeverityHead({"targets": {"geographic_extent": head}})
    p.cam_weights = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]], np.float32)  # covid: the hot corner
    return s


def prepared(s: Screener, *means: int) -> list:
    return [s.prepare(np.full((16, 16), m / 255, np.float32)) for m in means]


def test_each_prediction_carries_its_calibrated_and_raw_probabilities_guard_and_severity():
    s = guarded()
    # p(covid) 0.8, 0.6, 0.2: softmax(log p / 2) by hand gives 0.5942, 0.4727, 0.2679 (0.6 falls below 0.5)
    r = s.score(["a", "b", "c"], prepared(s, 204, 153, 51))
    assert [x.name for x in r] == ["a", "b", "c"]
    assert [x.predicted_class for x in r] == ["covid", "normal", "normal"]
    assert r[0].probabilities == pytest.approx({"covid": 0.5942, "normal": 0.2573, "pneumonia": 0.1485}, abs=1e-4)
    assert r[1].probabilities["covid"] == pytest.approx(0.4727, abs=1e-4)
    assert r[2].probabilities == pytest.approx({"covid": 0.2679, "normal": 0.4641, "pneumonia": 0.2679}, abs=1e-4)
    np.testing.assert_allclose(r[0].raw_probabilities, [0.8, 0.15, 0.05], atol=1e-6)
    np.testing.assert_allclose(r[1].pooled, [0.6, 0.25, 0.4], atol=1e-6)  # the feature map's spatial mean
    # the guard: |pooled| = 0.86168, 0.76322, 0.86168 against the cut-off 0.8, reported to 4 significant digits
    assert [x.in_distribution for x in r] == [False, True, False]
    assert [x.ood_distance for x in r] == [0.8617, 0.7632, 0.8617] and r[0].ood_cutoff == 0.8
    assert r[0].warning == f"{OUT_OF_DISTRIBUTION_TEXT} (image features unlike the training images)"
    assert r[1].warning is None and r[1].lung_qc == []
    # severity only for the image called positive: 10 x 0.8 = 8 (the range's top), 6.5 to 8
    assert r[0].severity["geographic_extent"] == {"value": 8.0, "interval95": [6.5, 8.0]}
    assert r[0].severity["band"] == "severe" and r[1].severity is None and r[2].severity is None
    assert [x.pictures for x in r] == [None, None, None] and [x.error for x in r] == [None] * 3


def test_lung_qc_flags_reach_the_prediction_and_no_lungs_is_out_of_distribution():
    s = guarded(fields=LungFields("no_lungs", "small_fields"))
    (r,) = s.score(["a"], prepared(s, 153))  # in distribution by features (0.763)
    assert r.lung_qc == ["no_lungs", "small_fields"] and r.in_distribution is False
    assert r.warning == f"{OUT_OF_DISTRIBUTION_TEXT} (lung check: no lungs)"


def test_scores_go_through_the_network_in_batches_of_its_size_in_order():
    s = guarded()
    means = [10 * i + 20 for i in range(10)]
    r = s.score([str(m) for m in means], prepared(s, *means))
    assert s.predictor.batches == [4, 4, 2]
    assert [x.name for x in r] == [str(m) for m in means]
    np.testing.assert_allclose([x.raw_probabilities[0] for x in r], np.array(means) / 255, atol=1e-6)
    assert s.score([], []) == []


def test_heatmaps_are_of_the_predicted_class_unless_one_is_named_and_lie_on_the_x_ray():
    s = guarded(fields=LungFields())
    covid, normal = s.score(["a", "b"], prepared(s, 204, 51), with_heatmaps=True)
    heat = covid.pictures.heatmap
    assert heat.shape == (8, 8) and heat[0, 0] == heat.max() == 1.0 and heat[7, 7] == 0.0  # the hot corner
    assert (normal.pictures.heatmap == 1.0).all()  # normal's evidence (channel 2) is the same everywhere
    (asked,) = s.score(["b"], prepared(s, 51), with_heatmaps=True, heatmap_class="covid")
    np.testing.assert_array_equal(asked.pictures.heatmap, heat)
    pictures = covid.pictures
    assert pictures.image.shape == (8, 8) and pictures.image[0, 0] == pytest.approx(0.8, abs=1e-6)
    assert pictures.original.shape == pictures.original_heatmap.shape == pictures.lung_outline.shape == (16, 16)
    assert pictures.original_heatmap[0, 0] == 1.0 and not pictures.original_heatmap[8:, :].any()  # the crop's box
    assert pictures.lung_outline.all()
    (no_fields,) = fake_screener().score(["a"], prepared(fake_screener(), 204), with_heatmaps=True)
    assert no_fields.pictures.lung_outline is None


def test_the_stream_keeps_four_batches_in_flight_and_scores_in_batches(tmp_path):
    s = guarded()
    path = tmp_path / "a.png"
    path.write_bytes(mean_png(204))
    taken = []

    def inputs():
        for i in range(19):
            taken.append(i)
            yield path if i % 5 else Upload(f"bad{i}", b"junk", f"files[{i}]")

    stream = s.screen(inputs(), workers=2)
    first = next(stream)
    assert len(taken) == 16  # four batches of four read ahead, no more
    rest = list(stream)
    assert [r.name for r in [first, *rest]] == [str(path) if i % 5 else f"bad{i}" for i in range(19)]
    assert [r.error is not None for r in [first, *rest]] == [i % 5 == 0 for i in range(19)]
    # batches of at most the predictor's 4, what was decoded together; the unreadable (0, 5, 10, 15) never
    # reach the network
    assert sum(s.predictor.batches) == 15 and max(s.predictor.batches) <= 4
    only_bad = list(s.screen([Upload("x", b"junk", "files[0]")]))
    assert only_bad[0].error.startswith("files[0]: ")


def test_a_screener_describes_its_model():
    s = guarded()
    assert s.classes == ["covid", "normal", "pneumonia"] and s.positive_class == "covid"
    assert (s.input_size, s.preprocess, s.views, s.variant, s.warning) == (8, "none", 1, "float", None)
    assert s.severity_scores == ["geographic_extent"] and fake_screener().severity_scores == []
    assert s.card is s.predictor.info and s.ood is s.predictor.ood
    assert s.decision.temperature == 2.0
    assert s.rule_text() == s.decision.describe("covid")
    assert s.rule_text().startswith("covid if p_covid >= 0.500, else the most likely other class")


# -- decoding within the intake, and loading -------------------------------------------------------------------
def test_the_limits_are_exact_and_say_what_they_are(tmp_path):
    data = mean_png(100, side=64)
    path = tmp_path / "a.png"
    path.write_bytes(data)
    assert screener(Intake(max_bytes=len(data))).decode(path).shape == (64, 64)  # at the limit: read
    limit = len(data) - 1
    with pytest.raises(ImageTooLargeError) as raised:
        screener(Intake(max_bytes=limit)).decode(path)
    assert str(raised.value) == f"{path}: over the file limit of {limit / 2**20:g} MB"
    with pytest.raises(ImageTooLargeError) as raised:
        screener(Intake(max_bytes=limit)).decode(Upload("a", data, "files[3]"))
    assert str(raised.value) == f"files[3]: over the upload limit of {limit / 2**20:g} MB"
    for limit in (0, 10):  # a missing file is not "too large", even under a limit of 0: read_grayscale says why
        with pytest.raises(ImageReadError) as raised:
            screener(Intake(max_bytes=limit)).decode(tmp_path / "missing.png")
        assert not isinstance(raised.value, ImageTooLargeError) and "missing.png" in str(raised.value)


@pytest.mark.parametrize("upload", [False, True])
@pytest.mark.parametrize("intake", [Intake(), Intake(max_pixels=99, score_anyway=True, decode_min_side=512)])
def test_the_intake_reaches_the_decoder(tmp_path, monkeypatch, upload, intake):
    seen = []

    def decoder(source, *args):
        seen.append(args[-3:])
        return np.zeros((2, 2), np.float32)

    monkeypatch.setattr(reader_module, "read_grayscale", decoder)
    monkeypatch.setattr(reader_module, "read_grayscale_bytes", lambda data, label, *args: decoder(label, *args))
    Reader(8, "none", intake).decode(Upload("a", b"x", "files[0]") if upload else tmp_path / "a.png")
    # max_pixels, admit (= not score_anyway: refuse a CT, a lateral view), the side a JPEG 2000 may stop at
    assert seen == [(intake.max_pixels, not intake.score_anyway, intake.decode_min_side)]


def test_a_reader_prepares_as_its_model_does_with_the_lung_fields_for_qc_and_the_outline():
    gray = np.asarray(Image.open(io.BytesIO(mean_png(128, side=64))), np.float32) / 255
    gray[:32] *= 0.5  # not flat: equalizing changes it
    assert Reader(16, "none").prepare(gray).fields is not None
    equalized = Reader(16, "equalize").prepare(gray).image
    np.testing.assert_array_equal(equalized, prepare_full(gray, 16, "equalize").image)
    assert not np.allclose(equalized, prepare_full(gray, 16, "none").image)
    s = fake_screener(preprocess="equalize", input_size=16)
    assert (s.reader.size, s.reader.preprocess) == (16, "equalize")
    np.testing.assert_array_equal(Screener.prepare(s, gray).image, equalized)  # the class's own step, not the fake's


def test_loading_a_bundle_keeps_the_intake_variant_and_threads_and_checks_the_signature(bundle, tmp_path):
    intake = Intake(max_bytes=5)
    s = Screener.load(bundle, variant="int8", threads=1, intake=intake)
    assert s.intake is intake and s.reader.intake is intake and s.variant == "int8"
    assert s.predictor.session.get_session_options().intra_op_num_threads == 1
    assert Screener.load(bundle).predictor.session.get_session_options().intra_op_num_threads == 2
    assert Screener.load(bundle).variant == "float"
    _, public = make_keys(tmp_path / "keys")
    with pytest.raises(ModelError, match="not signed"):
        Screener.load(bundle, verify_key=public)


class MeetingPng:
    """Decoding that waits until ``threads`` decodes meet (so the pool must run that many at once; with fewer
    threads it never completes and the barrier breaks after 10 s), and notes which thread did each."""

    def __init__(self, path, threads: int):
        self.path, self.threads, self.barrier = path, set(), threading.Barrier(threads, timeout=10)

    def __call__(self, source, *args):
        self.threads.add(threading.current_thread().name)
        self.barrier.wait()
        return read_grayscale(self.path)


@pytest.mark.parametrize("cores", [1, 3, None])  # None: a platform without sched_getaffinity
def test_decoding_runs_on_a_thread_per_core_at_least_two_named_for_ccad(tmp_path, monkeypatch, cores):
    path = tmp_path / "a.png"
    path.write_bytes(mean_png(204))
    meeting = MeetingPng(path, max(2, cores or 2))
    monkeypatch.setattr(reader_module, "read_grayscale", meeting)
    if cores is None:
        monkeypatch.delattr(images_module.os, "sched_getaffinity")
    else:
        monkeypatch.setattr(images_module.os, "sched_getaffinity", lambda pid: set(range(cores)))
    results = list(guarded().screen([path] * 6))
    assert [r.error for r in results] == [None] * 6 and all(
        r.pictures is None for r in results
    )  # no heatmaps unless asked
    assert len(meeting.threads) == max(2, cores or 2)
    assert all(name.startswith("ccad-decode_") for name in meeting.threads)


def test_heatmaps_come_with_every_batch_of_a_long_stream(tmp_path):
    path = tmp_path / "a.png"
    path.write_bytes(mean_png(204))
    s = guarded()
    results = list(s.screen([path] * 21, with_heatmaps=True))
    assert all(r.pictures is not None for r in results)


def test_loading_leaves_the_process_alone_and_the_scoring_adapters_ask_for_one_blas_thread(bundle, tmp_path):
    import sklearn.ensemble  # noqa: F401  (loads an OpenMP runtime: limiting BLAS must leave it alone)
    from threadpoolctl import threadpool_info, threadpool_limits

    from ccad.cli import main
    from ccad.deploy.web import ServeSettings, create_app

    def threads():
        return {(pool["user_api"], pool["num_threads"]) for pool in threadpool_info()}

    threadpool_limits(2)
    Screener.load(bundle)
    assert threads() == {("blas", 2), ("openmp", 2)}  # a library call changes nothing process-wide
    image = tmp_path / "a.png"
    image.write_bytes(mean_png(100))
    assert main(["predict", "--model", str(bundle), str(image)]) == 0
    assert threads() == {("blas", 1), ("openmp", 2)}
    threadpool_limits(2)
    create_app(ServeSettings(bundle))
    assert threads() == {("blas", 1), ("openmp", 2)}
