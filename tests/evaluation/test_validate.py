"""ccad validate: criteria written before the run, each judged on its 95% interval (ccad.evaluation.validate)."""

import json
import math
import re

import numpy as np
import pytest

from ccad.cli import main
from ccad.errors import ConfigError
from ccad.evaluation.validate import FAIL, PASS, UNDECIDED, read_criteria, validate, verdict, write_validation


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
