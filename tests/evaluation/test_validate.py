"""ccad validate: criteria written before the run, each judged on its 95% interval (ccad.evaluation.validate)."""

import errno
import hashlib
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import ccad.evaluation.validate as validate_module
from ccad.cli import main
from ccad.errors import ConfigError
from ccad.evaluation.validate import (
    FAIL,
    PASS,
    UNDECIDED,
    _count,
    _hits,
    _widened,
    read_criteria,
    validate,
    verdict,
    write_validation,
)


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


def _wilson_by_hand(k, n, z=1.959963984540054):
    """The Wilson score interval: (k + z^2/2) / (n + z^2) +- z sqrt(k (n - k) / n + z^2 / 4) / (n + z^2)."""
    centre = (k + z * z / 2) / (n + z * z)
    half = z * math.sqrt(k * (n - k) / n + z * z / 4) / (n + z * z)
    return [centre - half, centre + half]


# 20 covid (the positive class), 30 normal: 18 covid found, 2 missed; 24 normals kept, 6 called covid.
# sensitivity 18/20 = 0.90, specificity 24/30 = 0.80, precision 18/24 = 0.75, accuracy 42/50 = 0.84
HAND_WILSON = {
    # 18 of 20: centre (18 + 1.9207) / 23.8415 = 0.83555, half 1.96 sqrt(1.8 + 0.96037) / 23.8415 = 0.13658
    "sensitivity": [0.69897, 0.97213],
    # 24 of 30: centre (24 + 1.9207) / 33.8415 = 0.76595, half 1.96 sqrt(4.8 + 0.96037) / 33.8415 = 0.13900
    "specificity": [0.62694, 0.90495],
    # 18 of 24: centre (18 + 1.9207) / 27.8415 = 0.71551, half 1.96 sqrt(4.5 + 0.96037) / 27.8415 = 0.16450
    "precision": [0.55101, 0.88001],
    # 42 of 50: centre (42 + 1.9207) / 53.8415 = 0.81574, half 1.96 sqrt(6.72 + 0.96037) / 53.8415 = 0.10088
    "accuracy": [0.71486, 0.91663],
}
VALUES = {"sensitivity": 0.90, "specificity": 0.80, "precision": 0.75, "accuracy": 0.84}


def _hand_metrics(positive_index):
    """Metrics of the 50 images above, with bootstrap intervals narrower than Wilson's (a point each)."""
    found, missed, called, kept = 18, 2, 6, 24
    rows = [[found, missed], [called, kept]] if positive_index == 0 else [[kept, called], [missed, found]]
    return {
        "confusion_matrix": rows,
        "decision": {"positive_index": positive_index},
        "n": 50,
        **{name: {"value": value, "ci95": [value, value]} for name, value in VALUES.items()},
    }


@pytest.mark.parametrize("positive_index", [0, 1])
def test_each_proportions_interval_is_wilsons_on_its_own_counts(positive_index):
    criteria = {"criteria": [{"metric": name, "at_least": 0.5} for name in VALUES]}
    verdicts = validate(_hand_metrics(positive_index), criteria)
    assert [v["metric"] for v in verdicts] == list(VALUES)
    for v in verdicts:
        assert v["value"] == VALUES[v["metric"]]
        assert v["ci95"] == pytest.approx(HAND_WILSON[v["metric"]], abs=1e-5), v["metric"]
        assert v["verdict"] == PASS  # every lower end is above 0.5


def test_the_interval_is_the_wider_of_the_bootstraps_and_wilsons_at_each_end():
    metrics = _hand_metrics(0)
    metrics["sensitivity"]["ci95"] = [0.65, 0.95]  # lower than Wilson's 0.699 at the bottom, inside it at the top
    metrics["specificity"]["ci95"] = [0.70, 0.95]  # inside Wilson's 0.627 at the bottom, beyond its 0.905 at the top
    criteria = {"criteria": [{"metric": "sensitivity", "at_least": 0.5}, {"metric": "specificity", "at_least": 0.5}]}
    sensitivity, specificity = validate(metrics, criteria)
    assert sensitivity["ci95"] == pytest.approx([0.65, 0.97213], abs=1e-5)
    assert specificity["ci95"] == pytest.approx([0.62694, 0.95], abs=1e-5)


def test_more_images_needed_are_counted_on_the_metrics_own_images():
    criteria = {
        "criteria": [
            {"metric": "sensitivity", "at_least": 0.80},
            {"metric": "specificity", "at_least": 0.70},
            {"metric": "precision", "at_least": 0.65},
            {"metric": "accuracy", "at_least": 0.80},
        ]
    }
    verdicts = validate(_hand_metrics(0), criteria)
    assert {v["verdict"] for v in verdicts} == {UNDECIDED}
    # n x (half-width below / distance to the bar)^2, n the images behind the rate:
    # sensitivity, the 20 covid: 20 x (0.20103 / 0.10)^2 = 80.8 -> 81; specificity, the 30 normals:
    # 30 x (0.17306 / 0.10)^2 = 89.8 -> 90; precision, the 24 called covid: 24 x (0.19899 / 0.10)^2 = 95.0 -> 96;
    # accuracy, all 50: 50 x (0.12514 / 0.04)^2 = 489.4 -> 490
    assert [v["images_needed"] for v in verdicts] == [81, 90, 96, 490]
    assert "now 20" in verdicts[0]["why"] and "now 30" in verdicts[1]["why"] and "now 24" in verdicts[2]["why"]


def test_the_out_of_distribution_rate_is_judged_on_its_own_interval_and_images():
    metrics = dict(_hand_metrics(0), out_of_distribution={"flagged": 5, "n": 100, "rate": 0.05, "ci95": [0.02, 0.12]})
    at_most = [0.12, 0.10, 0.019]
    verdicts = validate(metrics, {"criteria": [{"metric": "out_of_distribution", "at_most": b} for b in at_most]})
    assert [v["verdict"] for v in verdicts] == [PASS, UNDECIDED, FAIL]
    assert all(v["value"] == 0.05 and v["ci95"] == [0.02, 0.12] for v in verdicts)
    # 100 x ((0.12 - 0.05) / (0.10 - 0.05))^2 = 196
    assert verdicts[1]["images_needed"] == 196


def test_the_verdict_on_both_sides_of_each_edge_of_the_interval():
    low, high = _wilson_by_hand(18, 20)  # sensitivity 0.90 [0.69897, 0.97213]
    s_low, s_high = _wilson_by_hand(24, 30)  # specificity 0.80 [0.62694, 0.90495]
    bars = [
        ("sensitivity", "at_least", low - 1e-6, PASS),
        ("sensitivity", "at_least", low + 1e-6, UNDECIDED),
        ("sensitivity", "at_least", high - 1e-6, UNDECIDED),
        ("sensitivity", "at_least", high + 1e-6, FAIL),
        ("specificity", "at_most", s_high + 1e-6, PASS),
        ("specificity", "at_most", s_high - 1e-6, UNDECIDED),
        ("specificity", "at_most", s_low + 1e-6, UNDECIDED),
        ("specificity", "at_most", s_low - 1e-6, FAIL),
    ]
    verdicts = validate(_hand_metrics(0), {"criteria": [{"metric": m, side: bar} for m, side, bar, _ in bars]})
    assert [v["verdict"] for v in verdicts] == [expected for *_, expected in bars]


@pytest.mark.parametrize(
    "entry, criterion, expected",
    [
        # an interval that reaches the bar exactly is on its side of it (pass), never past it (fail)
        ({"value": 0.85, "ci95": [0.80, 0.90]}, {"metric": "sensitivity", "at_least": 0.80}, PASS),
        ({"value": 0.85, "ci95": [0.80, 0.90]}, {"metric": "sensitivity", "at_least": 0.90}, UNDECIDED),
        ({"value": 0.05, "ci95": [0.02, 0.10]}, {"metric": "out_of_distribution", "at_most": 0.10}, PASS),
        ({"value": 0.05, "ci95": [0.02, 0.10]}, {"metric": "out_of_distribution", "at_most": 0.02}, UNDECIDED),
    ],
)
def test_an_interval_ending_on_the_bar(entry, criterion, expected):
    assert verdict(entry, criterion, 100)["verdict"] == expected


@pytest.mark.parametrize(
    "verdicts, overall",
    [
        ([PASS, PASS], PASS),
        ([PASS, UNDECIDED], UNDECIDED),
        ([UNDECIDED, FAIL, PASS], FAIL),
    ],
)
def test_the_run_passes_only_when_every_criterion_passes(tmp_path, verdicts, overall):
    rows = [{"metric": "accuracy", "at_least": 0.5, "value": 0.6, "ci95": [0.4, 0.8], "verdict": v} for v in verdicts]
    criteria = {"file": "acceptance.toml", "sha256": "0" * 64}
    record = write_validation(tmp_path, rows, criteria, {"n": 10, "decision": {"text": "t"}}, {"name": "m"})
    assert record["verdict"] == overall
    assert json.loads((tmp_path / "validation.json").read_text())["verdict"] == overall


def test_the_rates_compute_metrics_gives_validate_are_the_counted_ones():
    from ccad.evaluation.metrics import compute_metrics

    # the 50 images above as scores that overlap: covid 0.55 .. 0.95 found, 0.30 and 0.45 missed; 6 normals
    # at 0.52 .. 0.80 called covid, 24 at 0.05 .. 0.49 kept
    covid = np.concatenate([np.linspace(0.55, 0.95, 18), [0.30, 0.45]])
    normal = np.concatenate([np.linspace(0.52, 0.80, 6), np.linspace(0.05, 0.49, 24)])
    p = np.concatenate([covid, normal])
    y = np.array([0] * 20 + [1] * 30)
    metrics = compute_metrics(y, np.stack([p, 1 - p], axis=1), ["covid", "normal"], "covid", n_resamples=200)
    assert metrics["confusion_matrix"] == [[18, 2], [6, 24]]
    metrics["decision"] = {"positive_index": 0}
    verdicts = validate(metrics, {"criteria": [{"metric": name, "at_least": 0.5} for name in VALUES]})
    for v in verdicts:
        boot = metrics[v["metric"]]["ci95"]
        wilson = HAND_WILSON[v["metric"]]
        assert v["value"] == pytest.approx(VALUES[v["metric"]])
        assert v["ci95"] == pytest.approx([min(boot[0], wilson[0]), max(boot[1], wilson[1])], abs=1e-5)


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
        ("[[criterion]]\nmetric = 'auc'\nat_least = true\n", "a number in [0, 1]"),  # a boolean is not a bar
        ("[[criterion]]\nmetric = 'auc'\nat_least = 0.8\nat_most = 0.9\n", "one of at_least or at_most"),
        ("[[criterion]\nmetric = 'auc'", "not valid TOML"),
    ],
)
def test_bad_criteria_are_refused(tmp_path, text, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        read_criteria(_criteria(tmp_path, text))


def _run_validate(bundle, data, criteria, out):
    return main(
        ["validate", "--model", str(bundle), "--data", str(data), "--criteria", str(criteria), "--out", str(out)]
    )


def test_validate_writes_its_verdicts_and_exits_by_them(bundle, synth_folders, tmp_path, capsys):
    first = _criteria(
        tmp_path,
        "[[criterion]]\nmetric = 'accuracy'\nat_least = 0.5\n"
        "[[criterion]]\nmetric = 'specificity'\nat_least = 1.0\n"
        "[subgroups]\nby = ['label']\n",
    )
    code = _run_validate(bundle, synth_folders, first, tmp_path / "first")
    printed = capsys.readouterr().out
    record = json.loads((tmp_path / "first" / "validation.json").read_text())
    assert record["criteria_sha256"] == read_criteria(first)["sha256"]
    assert record["n"] == 48 and record["model"]["card_sha256"] and "label" in record["by"]
    assert (tmp_path / "first" / "evaluation" / "report.html").is_file()
    assert "not a diagnosis" in (tmp_path / "first" / "validation.html").read_text()
    # each verdict as counted by hand from the evaluation's own confusion matrix (rows: truth, columns: called)
    metrics = json.loads((tmp_path / "first" / "evaluation" / "metrics.json").read_text())
    matrix, negative = metrics["confusion_matrix"], 1 - metrics["decision"]["positive_index"]
    right, kept, negatives = matrix[0][0] + matrix[1][1], matrix[negative][negative], sum(matrix[negative])
    accuracy, specificity = record["verdicts"]
    wilson, boot = _wilson_by_hand(right, 48), metrics["accuracy"]["ci95"]
    assert accuracy["value"] == pytest.approx(right / 48)
    assert accuracy["ci95"] == pytest.approx([min(boot[0], wilson[0]), max(boot[1], wilson[1])], abs=1e-9)
    low, high = accuracy["ci95"]
    assert accuracy["verdict"] == (PASS if low >= 0.5 else FAIL if high < 0.5 else UNDECIDED)
    assert f"accuracy >= 0.500: {right / 48:.3f} [{low:.3f}, {high:.3f}] -> {accuracy['verdict']}" in printed
    # specificity at least 1.0 never passes: Wilson's upper end is under 1 unless every normal is kept, and
    # then the rate is on the bar, not past it
    wilson, boot = _wilson_by_hand(kept, negatives), metrics["specificity"]["ci95"]
    assert specificity["ci95"] == pytest.approx([min(boot[0], wilson[0]), max(boot[1], wilson[1])], abs=1e-9)
    assert specificity["verdict"] == (FAIL if specificity["ci95"][1] < 1.0 else UNDECIDED)
    assert "specificity >= 1.000" in printed
    assert code == 1 and record["verdict"] == (
        FAIL if FAIL in (accuracy["verdict"], specificity["verdict"]) else UNDECIDED
    )
    # bars on the ends of the accuracy interval just measured: the interval reaches each, so both pass, exit 0
    edges = _criteria(
        tmp_path,
        f"[[criterion]]\nmetric = 'accuracy'\nat_least = {low!r}\n"
        f"[[criterion]]\nmetric = 'accuracy'\nat_most = {high!r}\n",
    )
    assert _run_validate(bundle, synth_folders, edges, tmp_path / "edges") == 0
    record = json.loads((tmp_path / "edges" / "validation.json").read_text())
    assert record["verdict"] == PASS and [v["verdict"] for v in record["verdicts"]] == [PASS, PASS]


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


NOT_MEASURABLE = "not measurable on these images (a class is missing)"
NOT_PAST = "more images would not tell at the rate observed: it is not past the bar"


@pytest.mark.parametrize(
    "entry, criterion, expected",
    [
        (None, {"metric": "auc", "at_least": 0.8}, {"metric": "auc", "at_least": 0.8}),
        ({"value": None, "ci95": None}, {"metric": "f1", "at_most": 0.3}, {"metric": "f1", "at_most": 0.3}),
    ],
)
def test_a_metric_that_could_not_be_measured_is_undecided_with_its_bar_and_why(entry, criterion, expected):
    assert verdict(entry, criterion, 100) == dict(expected, verdict=UNDECIDED, why=NOT_MEASURABLE)


@pytest.mark.parametrize("ci95", [None, "absent"])
def test_an_entry_without_an_interval_is_judged_on_its_value_alone(ci95):
    entry = {"value": 0.9} if ci95 == "absent" else {"value": 0.9, "ci95": None}
    # no interval: the interval is the point [0.9, 0.9], at or above 0.8 (pass) and at or under 0.95 (pass)
    for bar in ({"at_least": 0.8}, {"at_most": 0.95}):
        criterion = {"metric": "sensitivity", **bar}
        assert verdict(entry, criterion, 50) == dict(criterion, value=0.9, ci95=[0.9, 0.9], verdict=PASS)
    # and [0.9, 0.9] is wholly under 0.92 (fail)
    assert verdict(entry, {"metric": "sensitivity", "at_least": 0.92}, 50)["verdict"] == FAIL


@pytest.mark.parametrize(
    "entry, criterion, n",
    [
        # the rate exactly on the bar: however narrow the interval gets, it still reaches the bar's other side
        ({"value": 0.8, "ci95": [0.7, 0.9]}, {"metric": "sensitivity", "at_least": 0.8}, 100),
        ({"value": 0.1, "ci95": [0.05, 0.15]}, {"metric": "out_of_distribution", "at_most": 0.1}, 100),
        # the rate on the wrong side of the bar, just
        ({"value": 0.79, "ci95": [0.7, 0.9]}, {"metric": "sensitivity", "at_least": 0.8}, 100),
        ({"value": 0.11, "ci95": [0.05, 0.15]}, {"metric": "out_of_distribution", "at_most": 0.1}, 100),
        # on the right side, but no count of images to scale
        ({"value": 0.85, "ci95": [0.75, 0.9]}, {"metric": "sensitivity", "at_least": 0.8}, 0),
        ({"value": 0.85, "ci95": [0.75, 0.9]}, {"metric": "sensitivity", "at_least": 0.8}, None),
        ({"value": 0.05, "ci95": [0.02, 0.15]}, {"metric": "out_of_distribution", "at_most": 0.1}, None),
    ],
)
def test_more_images_would_not_tell_when_the_rate_is_not_past_the_bar_or_unscaled(entry, criterion, n):
    assert verdict(entry, criterion, n) == dict(
        criterion, value=entry["value"], ci95=entry["ci95"], verdict=UNDECIDED, why=NOT_PAST
    )


def test_the_rate_just_past_the_bar_on_either_side_gets_an_image_count():
    # at least 0.8, rate 0.85 [0.75, 0.9]: 100 x (0.10 / 0.05)^2 = 400
    above = verdict({"value": 0.85, "ci95": [0.75, 0.9]}, {"metric": "sensitivity", "at_least": 0.8}, 100)
    # at most 0.1, rate 0.05 [0.02, 0.15]: 100 x (0.10 / 0.05)^2 = 400
    below = verdict({"value": 0.05, "ci95": [0.02, 0.15]}, {"metric": "out_of_distribution", "at_most": 0.1}, 100)
    assert above["images_needed"] == below["images_needed"] == 400


def test_images_needed_rounds_away_float_dust_before_rounding_up():
    # at least 0.5, rate 0.75 (0.25 past the bar), lower half-width 0.75 - 0.499999999875 = 0.250000000125:
    # 100 x (0.250000000125 / 0.25)^2 = 100 x (1 + 5e-10)^2 = 100.0000001, which is 100.000000 to 6 decimals,
    # so 100 images, not 101
    result = verdict({"value": 0.75, "ci95": [0.499999999875, 0.9]}, {"metric": "sensitivity", "at_least": 0.5}, 100)
    assert result == {
        "metric": "sensitivity",
        "at_least": 0.5,
        "value": 0.75,
        "ci95": [0.499999999875, 0.9],
        "verdict": UNDECIDED,
        "images_needed": 100,
        "why": "about 100 images (now 100) would tell, if the rate stays at 0.750",
    }
    # the same, mirrored, for at most 0.5: rate 0.25, upper half-width 0.500000000125 - 0.25
    result = verdict(
        {"value": 0.25, "ci95": [0.1, 0.500000000125]}, {"metric": "out_of_distribution", "at_most": 0.5}, 100
    )
    assert result["images_needed"] == 100


# rows are the truth (covid, normal), columns what was called: 7 of 10 covid found, 15 of 20 normals kept,
# 5 normals called covid; "n" deliberately not the matrix's 30 images
ASYMMETRIC = {"confusion_matrix": [[7, 3], [5, 15]], "n": 99, "out_of_distribution": {"n": 120}}


def test_without_a_stored_decision_the_positive_class_is_the_first():
    metrics = dict(ASYMMETRIC)
    # positive index 0: sensitivity 7 of the 10 in row 0, specificity 15 of the 20 in row 1, precision 7 of
    # the 7 + 5 = 12 in column 0; accuracy 7 + 15 = 22 of all 30 in the matrix, not "n"
    assert _hits(metrics, "sensitivity") == (7, 10)
    assert _hits(metrics, "specificity") == (15, 20)
    assert _hits(metrics, "precision") == (7, 12)
    assert _hits(metrics, "accuracy") == (22, 30)
    assert [_count(metrics, m) for m in ("sensitivity", "specificity", "precision")] == [10, 20, 12]
    # the others: accuracy and auc on "n", the out-of-distribution rate on its own n; no counts behind auc
    assert [_count(metrics, m) for m in ("accuracy", "auc", "out_of_distribution")] == [99, 99, 120]
    assert _hits(metrics, "auc") is None and _hits(metrics, "out_of_distribution") is None
    # the same with decision None
    metrics["decision"] = None
    assert _hits(metrics, "sensitivity") == (7, 10) and _count(metrics, "specificity") == 20


def test_a_stored_positive_index_of_one_swaps_the_rows():
    metrics = dict(ASYMMETRIC, decision={"positive_index": 1})
    # positive index 1: sensitivity 15 of 20 (row 1), specificity 7 of 10 (row 0), precision 15 of 3 + 15 = 18
    assert [_hits(metrics, m) for m in ("sensitivity", "specificity", "precision", "accuracy")] == [
        (15, 20),
        (7, 10),
        (15, 18),
        (22, 30),
    ]
    assert [_count(metrics, m) for m in ("sensitivity", "specificity", "precision")] == [20, 10, 18]


@pytest.mark.parametrize(
    "matrix, metric",
    [
        ([[0, 0], [4, 6]], "sensitivity"),  # no covid images: 0 + 0 = 0 to count on
        ([[5, 0], [0, 0]], "specificity"),  # no normal images
        ([[0, 3], [0, 6]], "precision"),  # nothing called covid: 0 + 0 in column 0
        ([[0, 0], [0, 0]], "accuracy"),  # no images at all
        ([], "accuracy"),
        (None, "sensitivity"),
        ([[1, 2, 3], [4, 5, 6], [7, 8, 9]], "sensitivity"),  # three classes: not a 2 x 2 confusion matrix
        ([[1, 2, 3], [4, 5, 6], [7, 8, 9]], "accuracy"),
    ],
)
def test_no_counts_behind_a_proportion_without_images_or_a_two_by_two_matrix(matrix, metric):
    assert _hits({"confusion_matrix": matrix, "n": 9}, metric) is None


def test_a_proportion_is_widened_from_its_point_when_it_has_no_interval():
    # 7 of 10: Wilson centre (7 + 1.9207) / 13.8415 = 0.64449, half 1.96 sqrt(2.1 + 0.96037) / 13.8415 = 0.24772,
    # so [0.39678, 0.89221], wider than the point 0.7 at both ends
    for entry in ({"value": 0.7}, {"value": 0.7, "ci95": None}):
        widened = _widened(entry, (7, 10))
        assert widened["value"] == 0.7
        assert widened["ci95"] == pytest.approx([0.39678, 0.89221], abs=1e-5)


def test_nothing_to_widen_is_returned_as_it_is():
    unmeasured = {"value": None, "ci95": None}
    assert _widened(None, (7, 10)) is None
    assert _widened(unmeasured, (7, 10)) is unmeasured
    measured = {"value": 0.7, "ci95": [0.6, 0.8]}
    assert _widened(measured, None) is measured


RECORDED = [
    {
        "metric": "sensitivity",
        "at_least": 0.8,
        "value": 0.83456,
        "ci95": [0.61234, 0.92345],
        "verdict": UNDECIDED,
        "images_needed": 120,
        "why": "about 120 images (now 40) would tell, if the rate stays at 0.835",
    },
    {"metric": "out_of_distribution", "at_most": 0.1, "value": 0.04321, "ci95": [0.01234, 0.08765], "verdict": PASS},
    {"metric": "auc", "at_least": 0.75, "verdict": UNDECIDED, "why": NOT_MEASURABLE},
    {"metric": "specificity", "at_least": 0.9, "value": 0.5, "ci95": [0.25, 0.75], "verdict": FAIL},
]
NOTE = (
    "a local acceptance test of a research screening aid, not a diagnosis; every number is from the images "
    "named, at the model's stored rule"
)
CRITERIA = {"file": "acceptance.toml", "sha256": "ab" * 32}
MODEL = {"name": "site-model", "card_sha256": "cd" * 32}


def test_the_validation_record_holds_every_field(tmp_path):
    by = {"ViewPosition": {"PA": {"n": 30}}}
    metrics = {
        "data": "/site/xrays",
        "split": "test",
        "n": 40,
        "decision": {"text": "covid when p >= 0.42", "positive_index": 0},
        "by": by,
    }
    record = write_validation(tmp_path, RECORDED, CRITERIA, metrics, MODEL)
    expected = {
        "verdict": FAIL,  # one criterion failed
        "criteria_file": "acceptance.toml",
        "criteria_sha256": "ab" * 32,
        "model": MODEL,
        "data": "/site/xrays",
        "split": "test",
        "n": 40,
        "decision": "covid when p >= 0.42",
        "verdicts": RECORDED,
        "by": by,
        "note": NOTE,
    }
    assert record == expected
    assert json.loads((tmp_path / "validation.json").read_text(encoding="utf-8")) == expected


def test_a_record_without_a_decision_or_subgroups_says_so(tmp_path):
    record = write_validation(tmp_path, RECORDED[1:2], CRITERIA, {"n": 12}, MODEL)
    expected = {
        "verdict": PASS,
        "criteria_file": "acceptance.toml",
        "criteria_sha256": "ab" * 32,
        "model": MODEL,
        "data": None,
        "split": None,
        "n": 12,
        "decision": None,
        "verdicts": RECORDED[1:2],
        "by": {},
        "note": NOTE,
    }
    assert record == expected
    assert json.loads((tmp_path / "validation.json").read_text(encoding="utf-8")) == expected
    assert "Local acceptance test: pass" in (tmp_path / "validation.html").read_text(encoding="utf-8")


def test_the_validation_page_has_one_row_per_criterion(tmp_path):
    write_validation(tmp_path, RECORDED, CRITERIA, {"n": 40, "decision": {"text": "t"}}, MODEL)
    page = (tmp_path / "validation.html").read_text(encoding="utf-8")
    (tbody,) = re.findall(r"<tbody>(.*?)</tbody>", page, flags=re.S)
    rows = re.findall(r"<tr class='([^']*)'>(.*?)</tr>", tbody)
    assert "".join(f"<tr class='{kind}'>{cells}</tr>" for kind, cells in rows) == tbody  # nothing between rows
    # the bar and every number to 3 decimals, as written in the raw HTML; "-" where there is no number
    assert [(kind, re.findall(r"<td>(.*?)</td>", cells)) for kind, cells in rows] == [
        (
            "not",
            [
                "sensitivity",
                "&ge; 0.800",
                "0.835",  # 0.83456
                "0.612 - 0.923",  # [0.61234, 0.92345]
                "<b>not enough images to tell</b>",
                "about 120 images (now 40) would tell, if the rate stays at 0.835",
            ],
        ),
        ("pass", ["out_of_distribution", "&le; 0.100", "0.043", "0.012 - 0.088", "<b>pass</b>", ""]),
        ("not", ["auc", "&ge; 0.750", "-", "-", "<b>not enough images to tell</b>", NOT_MEASURABLE]),
        ("fail", ["specificity", "&ge; 0.900", "0.500", "0.250 - 0.750", "<b>fail</b>", ""]),
    ]


def _criteria_utf8(tmp_path, text):
    path = tmp_path / "acceptance.toml"
    path.write_bytes(text.encode("utf-8"))
    return path


def test_criteria_are_read_with_notes_bars_on_the_ends_and_subgroups(tmp_path):
    text = (
        "[[criterion]]\nmetric = 'specificity'\nat_least = 0\nnote = 'Größe: every image counts'\n"
        "[[criterion]]\nmetric = 'sensitivity'\nat_least = 1\n"
        "[[criterion]]\nmetric = 'out_of_distribution'\nat_most = 1.0\n"
        "[subgroups]\nby = ['ViewPosition', 'Manufacturer']\n"
    )
    path = _criteria_utf8(tmp_path, text)
    assert read_criteria(str(path)) == {
        "criteria": [
            {"metric": "specificity", "at_least": 0, "note": "Größe: every image counts"},
            {"metric": "sensitivity", "at_least": 1},
            {"metric": "out_of_distribution", "at_most": 1.0},
        ],
        "by": ["ViewPosition", "Manufacturer"],
        "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
        "file": "acceptance.toml",
    }


def test_criteria_without_subgroups_have_none(tmp_path):
    path = _criteria_utf8(tmp_path, "[[criterion]]\nmetric = 'auc'\nat_least = 0.8\n[subgroups]\n")
    assert read_criteria(path)["by"] == []
    path = _criteria_utf8(tmp_path, "[[criterion]]\nmetric = 'auc'\nat_least = 0.8\n")
    assert read_criteria(path)["by"] == []


FIRST_OK = "[[criterion]]\nmetric = 'auc'\nat_least = 0.8\n"


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "no [[criterion]] tables"),
        ("criterion = []\n", "no [[criterion]] tables"),  # the list there, but empty
        ("criterion = 'auc'\n", "no [[criterion]] tables"),  # not a list of tables
        (
            FIRST_OK + "[[criterion]]\nmetric = 'magic'\nat_least = 0.8\n",
            "criterion 2: metric must be one of accuracy, sensitivity, specificity, precision, f1, auc, "
            "out_of_distribution",
        ),
        (
            FIRST_OK + "[[criterion]]\nmetric = 'auc'\nat_least = 1.0001\n",
            "criterion 2: give one of at_least or at_most, a number in [0, 1]",
        ),
        (
            FIRST_OK + "[[criterion]]\nmetric = 'auc'\nat_most = -0.0001\n",
            "criterion 2: give one of at_least or at_most, a number in [0, 1]",
        ),
        (
            FIRST_OK + "[[criterion]]\nmetric = 'auc'\nat_least = '0.8'\n",
            "criterion 2: give one of at_least or at_most, a number in [0, 1]",
        ),
        # two unknown keys: the first of them in sorted order is named ("comment" < "weight")
        (
            FIRST_OK + "[[criterion]]\nmetric = 'auc'\nat_least = 0.8\nweight = 2\ncomment = 'x'\n",
            "criterion 2: unknown key 'comment'",
        ),
        ("[[criterion]]\nmetric = 'auc'\nat_least = 0.8\nNote = 'x'\n", "criterion 1: unknown key 'Note'"),
        (FIRST_OK + "[subgroups]\nby = 'ViewPosition'\n", "[subgroups] by must be a list of field names"),
        (FIRST_OK + "[subgroups]\nby = ['ViewPosition', 3]\n", "[subgroups] by must be a list of field names"),
    ],
)
def test_bad_criteria_are_refused_with_the_file_and_criterion_named(tmp_path, text, message):
    path = _criteria_utf8(tmp_path, text)
    with pytest.raises(ConfigError) as refused:
        read_criteria(path)
    assert str(refused.value) == f"`criteria` {path}: {message}"


def test_criteria_that_cannot_be_read_are_refused_with_the_reason(tmp_path):
    missing = tmp_path / "missing.toml"
    with pytest.raises(ConfigError) as refused:
        read_criteria(missing)
    assert str(refused.value) == f"`criteria` {missing}: cannot be read ({os.strerror(errno.ENOENT)})"
    with pytest.raises(ConfigError) as refused:
        read_criteria(tmp_path)  # a folder
    assert str(refused.value) == f"`criteria` {tmp_path}: cannot be read ({os.strerror(errno.EISDIR)})"


def test_criteria_are_read_as_utf8_whatever_the_locale(tmp_path):
    # an ASCII locale (C, with Python's UTF-8 mode off) would not decode "ö" (0xc3 0xb6) or "ß" (0xc3 0x9f)
    path = _criteria_utf8(tmp_path, "[[criterion]]\nmetric = 'auc'\nat_least = 0.8\nnote = 'Größe'\n")
    assert read_criteria(path)["criteria"][0]["note"] == "Größe"  # here, in this locale (and mutmut sees the call)
    script = "import sys; from ccad.evaluation.validate import read_criteria as r; print(ascii(r(sys.argv[1])))"
    done = subprocess.run(
        [sys.executable, "-c", script, str(path)],
        # the ccad this process imported (under a mutation run, the mutated copy), not the installed one
        env=dict(os.environ, LC_ALL="C", PYTHONUTF8="0", PYTHONPATH=str(Path(validate_module.__file__).parents[2])),
        capture_output=True,
        text=True,
        encoding="utf-8",
    )
    assert done.returncode == 0, done.stderr
    assert "'note': 'Gr\\xf6\\xdfe'" in done.stdout  # ascii() of "Größe": ö is U+00F6, ß U+00DF


def test_the_page_names_the_rule_data_criteria_and_model_it_judged():
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder)
        metrics = {"data": "site <A&B>", "split": "test", "n": 42, "decision": {"text": "covid if p >= 0.7"}}
        criteria = {"file": "accept.toml", "sha256": "ab" * 32}
        write_validation(out, [], criteria, metrics, {"name": "bundle-1", "card_sha256": "cd" * 32})
        page = (out / "validation.html").read_text()
    assert "model's stored decision rule (covid if p &gt;= 0.7), with 95% intervals." in page
    assert "Data: site &lt;A&amp;B&gt; (42 images, test split)." in page
    assert f"Criteria: accept.toml (sha256 {'ab' * 32}). Model: bundle-1\n(card sha256 {'cd' * 32})." in page
