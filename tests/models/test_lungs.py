"""The packaged lung segmenter, its QC flags and mask files, and the input normalizations built on it."""

import csv

import numpy as np
import pytest
from PIL import Image

from ccad.cli import main
from ccad.data.synthetic import lung_mask, patient_anatomy, render_patient
from ccad.errors import ConfigError, ModelError
from ccad.models.lungs import (
    LungSegmenter,
    blank,
    default_segmenter,
    equalize,
    estimate_lung_fields,
    postprocess,
    quality_flags,
)
from ccad.preprocessing.pipeline import prepare, prepare_full, prepare_with_region


@pytest.fixture(scope="module")
def patient():
    rng = np.random.default_rng(3)
    anatomy = patient_anatomy(rng)
    return render_patient(rng, "normal", size=256, anatomy=anatomy), lung_mask(anatomy, 256)


@pytest.fixture(scope="module")
def xray(patient):
    return patient[0]


def dice(a, b):
    return 2 * np.sum(a & b) / (a.sum() + b.sum())


def test_segmenter_finds_the_lungs_where_the_generator_put_them(patient):
    xray, truth = patient
    fields = estimate_lung_fields(xray)
    mask = fields.at(*xray.shape)
    assert mask.shape == truth.shape and mask.dtype == bool
    assert dice(mask, truth) > 0.75
    assert fields.qc_flags == ()
    # the lungs are the dark fields: darker inside the mask than in the rest of the thorax
    assert xray[mask].mean() < xray[~mask].mean()


def test_segmenter_does_not_depend_on_exposure(patient):
    xray, _ = patient
    a, b = estimate_lung_fields(xray**1.5), estimate_lung_fields(xray**0.7)
    assert dice(a.mask, b.mask) > 0.97  # the segmenter's input is histogram-equalized


@pytest.mark.parametrize(
    "image, flag", [(np.full((300, 200), 0.5, np.float32), "no_lungs"), (np.zeros((64, 64), np.float32), "no_lungs")]
)
def test_an_image_without_lungs_is_flagged(image, flag):
    fields = estimate_lung_fields(image)
    assert flag in fields.qc_flags
    assert fields.at(300, 200).shape == (300, 200)
    assert fields.box(300, 200) == (0, 300, 0, 200) or fields.mask.any()


def test_quality_flags_on_hand_made_masks():
    both = np.zeros((100, 100), bool)
    both[20:80, 15:45] = both[20:80, 55:85] = True
    assert quality_flags(both) == ()
    one = both.copy()
    one[:, 50:] = False
    assert "one_lung" in quality_flags(one)
    shifted = np.zeros((100, 100), bool)
    shifted[:25, 10:40] = shifted[:25, 60:90] = True
    assert "off_centre" in quality_flags(shifted)
    assert quality_flags(np.zeros((100, 100), bool)) == ("no_lungs",)
    assert "lung_area_large" in quality_flags(np.ones((100, 100), bool))
    unsure = np.full((100, 100), 0.5, np.float32)
    assert "uncertain" in quality_flags(both, unsure)


def test_postprocess_keeps_one_region_a_side_and_fills_holes():
    p = np.zeros((100, 100), np.float32)
    p[20:80, 10:45] = p[20:80, 55:90] = 0.9
    p[40:45, 20:25] = 0.1  # a hole
    p[2:6, 2:6] = 0.9  # a speck
    p[85:95, 15:35] = 0.9  # a smaller second region on the left
    mask = postprocess(p)
    assert mask[42, 22] and not mask[3, 3] and not mask[90, 20]
    assert mask[50, 20] and mask[50, 70]
    # a bay open to the outside is no hole, though the region's bounding box holds it (holes are filled
    # inside that box only: a pixel on its edge reaches the image's edge)
    p[30:40, 80:90] = 0.1
    bay = postprocess(p)
    assert not bay[35, 85] and bay[35, 70] and bay[42, 22]
    assert bay.sum() == mask.sum() - 100


def test_equalize_is_invariant_to_monotone_changes():
    x = np.random.default_rng(0).random((32, 32)).astype(np.float32)
    assert np.allclose(equalize(x), equalize(x**2.2), atol=1e-6)
    assert np.all(equalize(np.full((4, 4), 0.3)) == 0)


def test_a_missing_or_altered_segmenter_is_a_clear_error(tmp_path):
    with pytest.raises(ModelError, match="no lung segmenter"):
        LungSegmenter.load(tmp_path)
    packaged = default_segmenter().model_dir
    for name in ("lung-segmenter.onnx", "lung-segmenter.json"):
        (tmp_path / name).write_bytes((packaged / name).read_bytes())
    LungSegmenter.load(tmp_path)  # a faithful copy loads
    with open(tmp_path / "lung-segmenter.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ModelError, match="sha256 differs"):
        LungSegmenter.load(tmp_path)


def test_segment_command_writes_masks_the_size_of_each_input(tmp_path, patient):
    xray, truth = patient
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray((xray * 255).astype(np.uint8)).resize((300, 240)).save(folder / "a.png")
    (folder / "broken.png").write_bytes(b"not an image")
    assert main(["lungs", "segment", str(folder), "--out", str(tmp_path / "masks"), "--overlay"]) == 0
    mask = np.asarray(Image.open(tmp_path / "masks" / "a.png"))
    assert mask.shape == (240, 300) and set(np.unique(mask)) <= {0, 255}
    truth_resized = np.asarray(Image.fromarray(truth).resize((300, 240))) > 0
    assert dice(mask == 255, truth_resized) > 0.75
    assert (tmp_path / "masks" / "a.overlay.png").is_file()
    assert not (tmp_path / "masks" / "broken.png").exists()
    rows = {r["file"].rsplit("/", 1)[-1]: r for r in csv.DictReader(open(tmp_path / "masks" / "lung_qc.csv"))}
    assert rows["a.png"]["mask"] == "a.png" and rows["a.png"]["error"] == ""
    assert "not a readable image" in rows["broken.png"]["error"]


def test_blank_fills_only_the_region():
    gray = np.linspace(0, 1, 100, dtype=np.float32).reshape(10, 10)
    region = np.zeros((10, 10), bool)
    region[:5] = True
    out = blank(gray, region)
    assert np.allclose(out[:5], gray.mean()) and np.array_equal(out[5:], gray[5:])


@pytest.mark.parametrize(
    "preprocess",
    ["none", "clahe", "equalize", "thorax", "thorax+clahe", "lungs+equalize", "thorax+equalize+lowpass", "lowpass"],
)
def test_every_preprocessing_gives_a_model_input(xray, preprocess):
    x = prepare(xray, 96, preprocess)
    assert x.shape == (96, 96) and x.dtype == np.float32
    assert 0.0 <= x.min() and x.max() <= 1.0


def test_region_follows_the_thorax_crop(xray):
    fields = estimate_lung_fields(xray)
    region = fields.at(*xray.shape)
    _, carried = prepare_with_region(xray, 128, "thorax", region)
    # after cropping to the lung box the lungs fill much more of the input than before
    assert carried.mean() > region.mean() * 1.3
    _, same = prepare_with_region(xray, 128, "none", region)
    assert abs(same.mean() - region.mean()) < 0.02


def test_lungs_only_blacks_out_everything_else(xray):
    x, carried = prepare_with_region(xray, 128, "lungs+clahe", estimate_lung_fields(xray).at(*xray.shape))
    assert x[~carried].mean() < 0.05 < x[carried].mean()


def test_a_map_on_the_crop_goes_back_to_its_place_on_the_original(xray):
    prepared = prepare_full(xray, 64, "thorax")
    top, bottom, left, right = prepared.box
    assert (bottom - top, right - left) != xray.shape  # it was cropped
    back = prepared.to_original(np.ones((64, 64), np.float32))
    assert back.shape == prepared.gray.shape
    assert back[top:bottom, left:right].min() > 0.99 and back.sum() == pytest.approx((bottom - top) * (right - left))


def test_unknown_preprocessing_is_refused(xray):
    with pytest.raises(ConfigError, match="preprocessing step 'sharpen'"):
        prepare(xray, 64, "thorax+sharpen")
    with pytest.raises(ConfigError, match="not both"):
        prepare(xray, 64, "thorax+lungs")


def test_equalize_gives_every_exposure_the_same_gray_levels(xray):
    darker, brighter = xray**1.6, xray**0.6
    a, b = prepare(darker, 96, "equalize"), prepare(brighter, 96, "equalize")
    assert abs(np.median(darker) - np.median(brighter)) > 0.1
    assert abs(np.median(a) - np.median(b)) < 0.02


def test_lowpass_removes_fine_grain(xray):
    rng = np.random.default_rng(0)
    noisy = np.clip(xray + rng.normal(0, 0.05, xray.shape), 0, 1).astype(np.float32)
    plain, smoothed = prepare(noisy, 128, "none"), prepare(noisy, 128, "lowpass")
    assert np.abs(np.diff(smoothed, axis=1)).mean() < 0.7 * np.abs(np.diff(plain, axis=1)).mean()


@pytest.mark.slow
def test_lungs_train_writes_a_loadable_segmenter_with_its_card(tmp_path, capsys):
    """``ccad lungs train`` end to end on synthetic radiographs and the generator's own lung masks."""
    import json

    from conftest import write_csv

    rng = np.random.default_rng(0)
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    rows = []
    for i in range(30):
        anatomy = patient_anatomy(rng)
        image = render_patient(rng, "normal", size=96, anatomy=anatomy)
        Image.fromarray((image * 255).astype(np.uint8)).save(tmp_path / "images" / f"{i}.png")
        Image.fromarray(lung_mask(anatomy, 96).astype(np.uint8) * 255).save(tmp_path / "masks" / f"{i}.png")
        rows.append({"image": f"images/{i}.png", "mask": f"masks/{i}.png", "group": f"p{i // 2}"})
    manifest = write_csv(tmp_path / "manifest.csv", rows)
    out = tmp_path / "seg"
    assert (
        main(
            [
                "lungs",
                "train",
                "--data",
                str(manifest),
                "--out",
                str(out),
                "--size",
                "64",
                "--epochs",
                "1",
                "--weights",
                "none",
            ]
        )
        == 0
    )
    assert "held-out Dice" in capsys.readouterr().out
    card = json.loads((out / "lung-segmenter.json").read_text())
    assert card["input_size"] == 64 and card["held_out"]["images"] > 0 and "held_out_float" in card
    assert "static quantization" in card["quantization"]
    assert card["training_data"]["mask_licence"].startswith("CC BY 4.0")
    for name in ("lung-segmenter.onnx", "lung-segmenter.float.onnx", "split.csv", "test_scores.csv", "overlays.png"):
        assert (out / name).is_file(), name
    fields = LungSegmenter.load(out)(render_patient(rng, "normal", size=96))
    assert fields.mask.shape == (64, 64)
