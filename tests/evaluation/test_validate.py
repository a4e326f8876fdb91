"""ccad validate: criteria written before the run, each judged on its 95% interval (ccad.evaluation.validate)."""

import json
import re

import pytest

from ccad.cli import main
from ccad.errors import ConfigError
from ccad.evaluation.validate import FAIL, PASS, UNDECIDED, read_criteria, validate, verdict


@pytest.mark.parametrize(
    "entry, criterion, n, expected, needed",
    [
        ({"value": 0.90, "ci95": [0.85, 0.95]}, {"metric": "sensitivity", "at_least": 0.80}, 100, PASS, None),
        ({"value": 0.60, "ci95": [0.50, 0.70]}, {"metric": "sensitivity", "at_least": 0.80}, 100, FAIL, None),
        # straddles 0.80; the lower half-width 0.10 must shrink to 0.05: 4 times the images (n x (0.10/0.05)^2)
        ({"value": 0.85, "ci95": [0.75, 0.93]}, {"metric": "sensitivity", "at_least": 0.80}, 50, UNDECIDED, 200),
        ({"value": 0.78, "ci95": [0.70, 0.86]}, {"metric": "specificity", "at_least": 0.80}, 50, UNDECIDED, None),
        ({"value": 0.04, "ci95": [0.02, 0.08]}, {"metric": "out_of_distribution", "at_most": 0.10}, 300, PASS, None),
        (
            {"value": 0.08, "ci95": [0.05, 0.12]},
            {"metric": "out_of_distribution", "at_most": 0.10},
            100,
            UNDECIDED,
            400,
        ),
        ({"value": None, "ci95": None}, {"metric": "auc", "at_least": 0.80}, 100, UNDECIDED, None),
    ],
)
def test_verdicts_against_hand_computed_intervals(entry, criterion, n, expected, needed):
    result = verdict(entry, criterion, n)
    assert result["verdict"] == expected
    assert result.get("images_needed") == needed


def test_a_proportion_without_an_error_still_has_an_interval():
    # 24 of 24 negatives kept: the bootstrap says [1, 1]; Wilson's lower end is 24 / (24 + 1.96^2) = 0.862
    metrics = {
        "confusion_matrix": [[8, 16], [0, 24]],
        "decision": {"positive_index": 0},
        "n": 48,
        "specificity": {"value": 1.0, "ci95": [1.0, 1.0]},
        "sensitivity": {"value": 1 / 3, "ci95": [0.2, 0.5]},
    }
    criteria = {
        "criteria": [
            {"metric": "specificity", "at_least": 1.0},
            {"metric": "specificity", "at_least": 0.86},
            {"metric": "specificity", "at_least": 0.87},
            {"metric": "sensitivity", "at_most": 0.5},
        ]
    }
    verdicts = validate(metrics, criteria)
    assert [v["verdict"] for v in verdicts] == [UNDECIDED, PASS, UNDECIDED, UNDECIDED]
    assert verdicts[0]["ci95"][0] == pytest.approx(24 / (24 + 1.959964**2), abs=1e-4)
    # 8 of 24 found: Wilson's upper end (0.533) is wider than the bootstrap's 0.5
    assert verdicts[3]["ci95"][1] == pytest.approx(0.5329, abs=1e-3)


def _criteria(tmp_path, text):
    path = tmp_path / "acceptance.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "no [[criterion]]"),
        ("[[criterion]]\nmetric = 'magic'\nat_least = 0.8\n", "metric must be one of"),
        ("[[criterion]]\nmetric = 'auc'\nat_least = 80\n", "a number in [0, 1]"),
        ("[[criterion]]\nmetric = 'auc'\nat_least = 0.8\nat_most = 0.9\n", "one of at_least or at_most"),
        ("[[criterion]\nmetric = 'auc'", "not valid TOML"),
    ],
)
def test_bad_criteria_are_refused(tmp_path, text, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        read_criteria(_criteria(tmp_path, text))


def test_validate_writes_its_verdicts_and_exits_by_them(bundle, synth_folders, tmp_path, capsys):
    passing = _criteria(
        tmp_path,
        "[[criterion]]\nmetric = 'auc'\nat_least = 0.0\n"
        "[[criterion]]\nmetric = 'out_of_distribution'\nat_most = 1.0\n"
        "[subgroups]\nby = ['label']\n",
    )
    assert (
        main(
            [
                "validate",
                "--model",
                str(bundle),
                "--data",
                str(synth_folders),
                "--criteria",
                str(passing),
                "--out",
                str(tmp_path / "ok"),
            ]
        )
        == 0
    )
    record = json.loads((tmp_path / "ok" / "validation.json").read_text())
    assert record["verdict"] == PASS and record["criteria_sha256"] == read_criteria(passing)["sha256"]
    assert record["n"] == 48 and record["model"]["card_sha256"] and "label" in record["by"]
    assert (tmp_path / "ok" / "evaluation" / "report.html").is_file()
    assert "not a diagnosis" in (tmp_path / "ok" / "validation.html").read_text()
    failing = _criteria(tmp_path, "[[criterion]]\nmetric = 'specificity'\nat_least = 1.0\n")
    code = main(
        [
            "validate",
            "--model",
            str(bundle),
            "--data",
            str(synth_folders),
            "--criteria",
            str(failing),
            "--out",
            str(tmp_path / "no"),
        ]
    )
    assert code == 1
    assert json.loads((tmp_path / "no" / "validation.json").read_text())["verdict"] in (FAIL, UNDECIDED)
    assert "specificity >= 1.000" in capsys.readouterr().out


def test_bad_criteria_are_exit_2_before_anything_is_scored(bundle, synth_folders, tmp_path, capsys):
    bad = _criteria(tmp_path, "[[criterion]]\nmetric = 'magic'\nat_least = 0.8\n")
    assert (
        main(
            [
                "validate",
                "--model",
                str(bundle),
                "--data",
                str(synth_folders),
                "--criteria",
                str(bad),
                "--out",
                str(tmp_path / "x"),
            ]
        )
        == 2
    )
    assert len(capsys.readouterr().err.strip().splitlines()) == 1 and not (tmp_path / "x").exists()
