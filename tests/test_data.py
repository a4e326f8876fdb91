import shutil

import pytest

from ccad.data import assign_splits, discover, load_images
from ccad.errors import DataError, ImageReadError


def test_class_folders_layout(synth_folders):
    ds = discover(synth_folders)
    assert ds.layout == "class-folders" and ds.classes == ["covid", "normal"]
    assert len(ds.samples) == 48 and ds.positive_class == "covid"


def test_classes_pick_and_order(synth_folders):
    ds = discover(synth_folders, classes=["normal", "covid"])
    assert ds.classes == ["normal", "covid"]


def test_manifest_layout_keeps_groups_and_where_filters(synth_folders):
    ds = discover(synth_folders / "manifest.csv")
    assert ds.layout == "manifest"
    assert len({s.group for s in ds.samples}) < len(ds.samples)  # some patients have two images
    with pytest.raises(DataError, match="at least two classes"):
        discover(synth_folders / "manifest.csv", where=["label=covid"])


def test_paper_layout_takes_validation_from_train(synth_paper_layout):
    ds = assign_splits(discover(synth_paper_layout), seed=0)
    assert ds.layout == "train-test-folders"
    counts = {split: len(ds.subset(split)) for split in ("train", "val", "test")}
    train_total = counts["train"] + counts["val"]
    assert 0.12 < counts["val"] / train_total < 0.3
    original_test = {p for p in (synth_paper_layout / "test").rglob("*.png")}
    assert {s.path for s in ds.subset("test")} == original_test


def test_unsplit_data_is_split_by_group_and_stratified(synth_folders):
    ds = assign_splits(discover(synth_folders / "manifest.csv"), seed=3)
    split_of_group = {}
    for s in ds.samples:
        assert split_of_group.setdefault(s.group, s.split) == s.split, "a patient group spans two splits"
    n = len(ds.samples)
    assert abs(len(ds.subset("test")) / n - 0.20) < 0.08
    assert abs(len(ds.subset("val")) / n - 0.16) < 0.08
    for split in ("train", "val", "test"):
        assert {s.label for s in ds.subset(split)} == {"covid", "normal"}


def test_split_is_seeded(synth_folders):
    a = assign_splits(discover(synth_folders), seed=5)
    b = assign_splits(discover(synth_folders), seed=5)
    c = assign_splits(discover(synth_folders), seed=6)
    assert [s.split for s in a.samples] == [s.split for s in b.samples]
    assert [s.split for s in a.samples] != [s.split for s in c.samples]


def test_manifest_with_given_split_is_used_as_is(tmp_path, synth_folders):
    rows = (synth_folders / "manifest.csv").read_text().splitlines()
    out = ["path,label,split,group"] + [
        f"{p},{l},{('train', 'val', 'test')[i % 3]},{g}-{i}" for i, (p, l, g) in
        enumerate(r.split(",") for r in rows[1:])
    ]
    (synth_folders / "given.csv").write_text("\n".join(out) + "\n")
    ds = assign_splits(discover(synth_folders / "given.csv"))
    assert [s.split for s in ds.samples] == [("train", "val", "test")[i % 3] for i in range(len(rows) - 1)]


@pytest.mark.parametrize("problem,match", [
    ("missing", "no such file or folder"),
    ("empty_class", "class folder is empty"),
    ("single_class", "at least two classes"),
    ("no_subfolders", "no class subfolders"),
    ("unknown_class", "class 'pneumonia' not found"),
    ("missing_column", "missing column 'label'"),
    ("bad_where", "expected COLUMN=VALUE"),
    ("not_csv", "must be a folder or a manifest"),
])
def test_bad_layouts_are_clear_errors(tmp_path, synth_folders, problem, match):
    root = tmp_path / "d"
    kwargs = {}
    if problem != "missing":
        shutil.copytree(synth_folders, root)
    if problem == "empty_class":
        (root / "empty").mkdir()
    elif problem == "single_class":
        shutil.rmtree(root / "normal")
    elif problem == "no_subfolders":
        shutil.rmtree(root / "normal")
        shutil.rmtree(root / "covid")
    elif problem == "unknown_class":
        kwargs["classes"] = ["covid", "pneumonia"]
    elif problem == "missing_column":
        (root / "m.csv").write_text("path,diagnosis\ncovid/a.png,covid\n")
        root = root / "m.csv"
    elif problem == "bad_where":
        root, kwargs["where"] = root / "manifest.csv", ["label"]
    elif problem == "not_csv":
        root = root / "covid" / sorted(p.name for p in (root / "covid").iterdir())[0]
    with pytest.raises(DataError, match=match):
        discover(root, **kwargs)


def test_bad_file_stops_loading_unless_skipped(tmp_path, synth_folders):
    root = tmp_path / "d"
    shutil.copytree(synth_folders, root)
    (root / "covid" / "broken.png").write_bytes(b"not a png")
    ds = discover(root)
    with pytest.raises(ImageReadError, match="broken.png"):
        load_images(ds.samples, 32)
    images, kept, bad = load_images(ds.samples, 32, skip_bad=True)
    assert len(kept) == len(ds.samples) - 1 and images.shape == (len(kept), 32, 32)
    assert len(bad) == 1 and bad[0][0].endswith("broken.png")


def test_too_few_groups_to_split_is_a_clear_error(tmp_path, synth_folders):
    root = tmp_path / "tiny"
    for label in ("covid", "normal"):
        (root / label).mkdir(parents=True)
        for p in sorted((synth_folders / label).iterdir())[:2]:
            shutil.copy(p, root / label / p.name)
    with pytest.raises(DataError, match="too few"):
        assign_splits(discover(root))
