"""ccad predict --engine ray: a local Ray gives exactly the single-process results."""

import csv
import json

import pytest

from ccad.screening import Screener

ray = pytest.importorskip("ray")


def _rows(folder):
    rows = {}
    for shard in sorted(folder.glob("*.csv")):
        with open(shard, newline="") as f:
            for row in csv.DictReader(f):
                assert row["file"] not in rows, "a file was scored twice"
                rows[row["file"]] = row
    return rows


@pytest.mark.slow
def test_ray_engine_matches_single_process_reports_bad_files_and_resumes(run_and_bundle, tmp_path):
    from ccad.cli import main
    from ccad.data.synthetic import generate

    _, bundle = run_and_bundle
    data = generate(tmp_path / "images", n_per_class=100, size=64, seed=11)
    bad = data / "covid" / "covid-p0050-9.png"  # sorts into the middle of the covid files
    bad.write_bytes(b"not an image at all")
    out = tmp_path / "results"
    assert main(["predict", "--engine", "ray", "--model", str(bundle), str(data), "--out", str(out)]) == 0
    rows = _rows(out)
    images = sorted(p for p in data.rglob("*.png"))
    assert set(rows) == {str(p) for p in images}
    assert "not a readable image" in rows[str(bad)]["error"] and rows[str(bad)]["predicted_class"] == ""

    reference = {r.name: r for r in list(Screener.load(bundle).screen([p for p in images if p != bad]))}
    for file, expected in reference.items():
        assert rows[file]["predicted_class"] == expected.predicted_class
        for c, p in expected.probabilities.items():
            assert abs(float(rows[file][f"p_{c}"]) - p) < 1e-5
        assert rows[file]["in_distribution"] == str(expected.in_distribution).lower()  # the guard travels too
        assert abs(float(rows[file]["ood_distance"]) - expected.ood_distance) < 1e-2
        assert rows[file]["lung_qc"] == ";".join(expected.lung_qc)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["files"] == len(images) and summary["errors"] == 1
    assert sum(summary["predicted"].values()) == len(images) - 1

    # resume: nothing is done twice; a lost shard is redone, and only it
    assert main(["predict", "--engine", "ray", "--model", str(bundle), str(data), "--out", str(out), "--resume"]) == 0
    assert json.loads((out / "summary.json").read_text())["this_run"]["processed"] == 0
    lost = sorted(out.glob("*.csv"))[0]
    n_lost = sum(1 for _ in csv.DictReader(open(lost)))
    lost.unlink()
    assert main(["predict", "--engine", "ray", "--model", str(bundle), str(data), "--out", str(out), "--resume"]) == 0
    assert json.loads((out / "summary.json").read_text())["this_run"]["processed"] == n_lost
    assert set(_rows(out)) == {str(p) for p in images}


def test_ray_engine_needs_a_bundle_and_an_out_folder(run_and_bundle, tmp_path):
    from ccad.cli import main

    run, bundle = run_and_bundle
    assert main(["predict", "--engine", "ray", "--model", str(run), str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert main(["predict", "--engine", "ray", "--model", str(bundle), str(tmp_path)]) == 2


def test_image_lists_from_manifests_and_text_files(tmp_path):
    from ccad.io.inputs import list_inputs

    (tmp_path / "m.csv").write_text("path,label\na.png,covid\nsub/b.png,normal\n")
    (tmp_path / "list.txt").write_text("/x/c.png\n\n/y/d.dcm\n")
    assert list_inputs([tmp_path / "m.csv", tmp_path / "list.txt"]) == [
        str(tmp_path / "a.png"),
        str(tmp_path / "sub/b.png"),
        "/x/c.png",
        "/y/d.dcm",
    ]
