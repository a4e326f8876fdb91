"""Near-duplicate films share a group when the data names no patient (ccad.data.duplicates)."""

import io

import numpy as np
from conftest import write_csv
from PIL import Image, ImageDraw

from ccad.data.datasets import discover
from ccad.data.duplicates import near_duplicate_groups
from ccad.data.splits import assign_splits
from ccad.data.synthetic import patient_anatomy, render_patient


def _film(seed: int, label: str = "normal", size: int = 256) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return render_patient(rng, label, size, patient_anatomy(rng))


def _save(path, gray: np.ndarray, fmt: str = "PNG", **kwargs):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((gray * 255).round().astype(np.uint8)).save(path, format=fmt, **kwargs)
    return path


def _copies(tmp_path, film: np.ndarray, stem: str):
    """The ways one film comes back in a public collection: smaller, re-encoded, brighter, annotated."""
    image = Image.fromarray((film * 255).round().astype(np.uint8))
    small = image.resize((180, 180), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=40)
    noted = image.copy()
    ImageDraw.Draw(noted).text((20, 210), "day 1", fill=255)  # a burned-in note
    paths = []
    for name, picture in (
        ("small", small),
        ("jpeg", Image.open(buffer)),
        ("noted", noted),
        ("bright", Image.fromarray(np.clip(np.asarray(image) * 1.15, 0, 255).astype(np.uint8))),
    ):
        path = tmp_path / f"{stem}-{name}.png"
        picture.save(path)
        paths.append(path)
    return paths


def test_copies_of_one_film_are_one_group_and_other_patients_are_not(tmp_path):
    original = _save(tmp_path / "a.png", _film(1))
    copies = _copies(tmp_path, _film(1), "a")
    others = [_save(tmp_path / f"other-{i}.png", _film(10 + i)) for i in range(6)]
    groups = near_duplicate_groups([original, *copies, *others])
    assert groups[:5] == [0, 0, 0, 0, 0]
    assert groups[5:] == list(range(5, 11))  # six other patients: each its own


def test_an_unreadable_file_is_its_own_group(tmp_path):
    good = _save(tmp_path / "a.png", _film(1))
    bad = tmp_path / "b.png"
    bad.write_bytes(b"not an image")
    assert near_duplicate_groups([good, bad, good]) == [0, 1, 0]


def test_a_folder_without_patients_keeps_copies_in_one_split(tmp_path):
    data = tmp_path / "data"
    for label in ("covid", "normal"):
        for i in range(10):
            _save(data / label / f"{i}.png", _film(100 * (label == "covid") + i, label))
    copies = _copies(data / "covid", _film(100, "covid"), "again")  # four more copies of covid/0.png
    dataset = discover(data)
    group = {s.path: s.group for s in dataset.samples}
    film = data / "covid" / "0.png"
    assert {group[p] for p in copies} == {group[film]}
    assert len(set(group.values())) == 20  # the 20 films, not 24 files
    for seed in range(5):
        split = {s.path: s.split for s in assign_splits(dataset, seed=seed).samples}
        assert len({split[p] for p in copies} | {split[film]}) == 1


def test_patient_groups_a_manifest_gives_are_kept(tmp_path):
    a = _save(tmp_path / "a.png", _film(1))
    b = _save(tmp_path / "b.png", _film(1))  # the same film under two patient ids: the manifest is believed
    rows = [
        {"path": a.name, "label": "covid", "group": "p1"},
        {"path": b.name, "label": "covid", "group": "p2"},
        {"path": _save(tmp_path / "c.png", _film(2)).name, "label": "normal", "group": "p3"},
    ]
    dataset = discover(write_csv(tmp_path / "m.csv", rows))
    assert [s.group for s in dataset.samples] == ["p1", "p2", "p3"]


def test_a_manifest_without_groups_is_grouped_and_a_given_split_is_never_changed(tmp_path):
    a = _save(tmp_path / "a.png", _film(1))
    b = _save(tmp_path / "b.png", _film(1), "JPEG", quality=50)
    c = _save(tmp_path / "c.png", _film(1))
    rows = [
        {"path": a.name, "label": "covid", "split": "train"},
        {"path": b.name, "label": "covid", "split": "train"},
        {"path": c.name, "label": "covid", "split": "test"},
        {"path": _save(tmp_path / "d.png", _film(2)).name, "label": "normal", "split": "train"},
    ]
    samples = discover(write_csv(tmp_path / "m.csv", rows)).samples
    assert samples[0].group == samples[1].group == "a.png"
    assert samples[2].group == "c.png" and samples[2].split == "test"  # the user's split stands
    assert discover(write_csv(tmp_path / "m.csv", rows), near_duplicates=False).samples[1].group == "b.png"
