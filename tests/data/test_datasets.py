import shutil

import pytest

from ccad.data.datasets import discover
from ccad.data.splits import assign_splits
from ccad.errors import DataError, ImageReadError
from ccad.preprocessing.pipeline import load_images


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
        f"{p},{label},{('train', 'val', 'test')[i % 3]},{g}-{i}"
        for i, (p, label, g) in enumerate(r.split(",") for r in rows[1:])
    ]
    (synth_folders / "given.csv").write_text("\n".join(out) + "\n")
    ds = assign_splits(discover(synth_folders / "given.csv"))
    assert [s.split for s in ds.samples] == [("train", "val", "test")[i % 3] for i in range(len(rows) - 1)]


@pytest.mark.parametrize(
    "problem,match",
    [
        ("missing", "no such file or folder"),
        ("empty_class", "class folder is empty"),
        ("single_class", "at least two classes"),
        ("no_subfolders", "no class subfolders"),
        ("unknown_class", "class 'pneumonia' not found"),
        ("missing_column", "missing column 'label'"),
        ("bad_where", "expected COLUMN=VALUE"),
        ("not_csv", "must be a folder or a manifest"),
    ],
)
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


def _two_source_manifests(tmp_path, synth_folders):
    """The synthetic manifest cut in two 'hospitals', A with both classes and B with a third label."""
    import csv

    from conftest import write_csv

    rows = list(csv.DictReader(open(synth_folders / "manifest.csv")))
    root = synth_folders
    a = [dict(path=str(root / r["path"]), label=r["label"], group=r["group"], source="hospital-a") for r in rows[0::2]]
    b = [
        dict(
            path=str(root / r["path"]),
            label=("pneumonia" if r["label"] == "normal" else r["label"]),
            group="b-" + r["group"],
            source="hospital-b",
        )
        for r in rows[1::2]
    ]
    return write_csv(tmp_path / "a.csv", a), write_csv(tmp_path / "b.csv", b)


def test_several_data_sources_pool_and_keep_their_source(tmp_path, synth_folders):
    a, b = _two_source_manifests(tmp_path, synth_folders)
    pooled = discover([a, b])
    assert pooled.layout == "manifest" and len(pooled.samples) == 48
    assert {s.source for s in pooled.samples} == {"hospital-a", "hospital-b"}
    assert pooled.classes == ["covid", "normal", "pneumonia"]
    assert " + " in pooled.source
    # a folder without a source column is named after itself
    mixed = discover([a, synth_folders])
    assert {s.source for s in mixed.samples} == {"hospital-a", synth_folders.name}
    assert mixed.layout == "pooled"


def test_relabel_in_one_source_only(tmp_path, synth_folders):
    a, b = _two_source_manifests(tmp_path, synth_folders)
    ds = discover([a, b], classes=["covid", "normal"], relabel=["hospital-b:pneumonia=normal"])
    b_labels = {s.label for s in ds.samples if s.source == "hospital-b"}
    assert b_labels == {"covid", "normal"}
    assert "relabel hospital-b:pneumonia=normal" in ds.source
    everywhere = discover([a, b], relabel=["covid=normal"], classes=["normal", "pneumonia"])
    assert "covid" not in {s.label for s in everywhere.samples}
    with pytest.raises(DataError, match="no source 'hospital-z'"):
        discover([a, b], relabel=["hospital-z:pneumonia=normal"])
    with pytest.raises(DataError, match=r"expected \[SOURCE:\]OLD=NEW"):
        discover([a, b], relabel=["pneumonia"])


def test_where_applies_to_the_manifests_that_have_the_column(tmp_path, synth_folders):
    from conftest import write_csv

    a, b = _two_source_manifests(tmp_path, synth_folders)
    import csv

    rows = list(csv.DictReader(open(a)))
    tagged = write_csv(tmp_path / "tagged.csv", [dict(r, keep=str(i % 2)) for i, r in enumerate(rows)])
    ds = discover([tagged, b], where=["keep=1"])
    assert sum(s.source == "hospital-a" for s in ds.samples) == len(rows) // 2
    assert sum(s.source == "hospital-b" for s in ds.samples) == 24
    with pytest.raises(DataError, match="no manifest among `data` has that column"):
        discover([a, b], where=["nothere=1"])


def test_leave_one_source_out_folds(tmp_path, synth_folders):
    from ccad.data.splits import cross_validation_folds

    a, b = _two_source_manifests(tmp_path, synth_folders)
    ds = discover([a, b], classes=["covid", "normal"], relabel=["hospital-b:pneumonia=normal"])
    folds = cross_validation_folds(ds, group_by="source")
    assert len(folds) == 2
    for fold in folds:
        test_sources = {s.source for s in fold.subset("test")}
        trained_on = {s.source for s in fold.samples if s.split in ("train", "val")}
        assert len(test_sources) == 1 and not test_sources & trained_on
        assert {s.label for s in fold.subset("train")} == {"covid", "normal"}
    tested = sorted(str(s.path) + s.source for f in folds for s in f.subset("test"))
    assert tested == sorted(str(s.path) + s.source for s in ds.samples)  # every image scored exactly once
    one_class = discover([a, b], classes=["covid", "pneumonia"])  # pneumonia only in hospital-b
    with pytest.raises(DataError, match="without 'hospital-b' the training data has no pneumonia"):
        cross_validation_folds(one_class, group_by="source")
    with pytest.raises(DataError, match="needs two or more sources"):
        cross_validation_folds(discover(a), group_by="source")


def test_cv_by_source_on_one_source_is_a_one_line_error(synth_folders, tmp_path, capsys):
    from ccad.cli import main

    assert (
        main(
            ["cv", "--data", str(synth_folders / "manifest.csv"), "--group-by", "source", "--out", str(tmp_path / "cv")]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert err.startswith("ccad: error:") and "needs two or more sources" in err and err.count("\n") == 1
