"""ccad monitor --verdicts: a synthetic stream with the truth, where ccad is wrong on a known share; the live
sensitivity, specificity and PPV per period equal the hand count, with Wilson intervals, and a period whose
lower bound falls under the validated level is marked (and the command exits 1)."""

import json

import pytest
from helpers import COVID_19, NEGATIVE, readers_oru, result_record
from scipy.stats import binomtest

from ccad.cli import main
from ccad.evaluation.monitor import monitor
from ccad.evaluation.verdicts import read_verdicts

#: (day, truly positive, called positive, how many)
STREAM = [
    ("2026-12-01", True, True, 16),
    ("2026-12-01", True, False, 4),  # 4 of 20 positives missed
    ("2026-12-01", False, False, 18),
    ("2026-12-01", False, True, 2),
    ("2026-12-02", True, True, 10),
    ("2026-12-02", True, False, 10),  # half the positives missed
    ("2026-12-02", False, False, 19),
    ("2026-12-02", False, True, 1),
]


def _write(tmp_path, unjudged: int = 5):
    """The result log (every result, ``unjudged`` more a day without a verdict) and the verdict log."""
    results, verdicts, i = [], [], 0
    for day, truly, called, n in STREAM + [(d, None, True, unjudged) for d in ("2026-12-01", "2026-12-02")]:
        for _ in range(n):
            image = f"{i:016x}"
            i += 1
            results.append(
                result_record(called, 0.9 if called else 0.1, time=f"{day}T10:00:00+00:00", adapter="api", image=image)
            )
            if truly is not None:
                outcome = ("true_" if called == truly else "false_") + ("positive" if called else "negative")
                verdicts.append(
                    {"time": f"{day}T11:00:00+00:00", "image": image, "agrees": called == truly, "outcome": outcome}
                )
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in results))
    (tmp_path / "verdicts.jsonl").write_text("".join(json.dumps(v) + "\n" for v in verdicts) + "not json\n")
    return tmp_path / "results.jsonl", tmp_path / "verdicts.jsonl"


def _hand(day: str | None) -> dict[str, tuple[int, int]]:
    count = {}
    for d, truly, called, n in STREAM:
        if day is None or d == day:
            key = ("t" if truly == called else "f") + ("p" if called else "n")
            count[key] = count.get(key, 0) + n
    tp, fn, tn, fp = (count.get(k, 0) for k in ("tp", "fn", "tn", "fp"))
    return {"sensitivity": (tp, tp + fn), "specificity": (tn, tn + fp), "ppv": (tp, tp + fp)}


def test_the_live_measures_per_period_are_the_hand_count_with_wilson_intervals(tmp_path):
    log, verdicts = _write(tmp_path)
    record = monitor(log, tmp_path / "review", verdicts=verdicts, validated={"sensitivity": 0.7})
    live = record["live"]
    assert live["unreadable_verdict_lines"] == 1 and set(live["by_period"]) == {"2026-12-01", "2026-12-02", "all"}
    for key, day in (("2026-12-01", "2026-12-01"), ("2026-12-02", "2026-12-02"), ("all", None)):
        got = live["by_period"][key]
        assert got["with_a_verdict"] == sum(n for d, _, _, n in STREAM if day is None or d == day)
        assert got["results"] == got["with_a_verdict"] + (10 if day is None else 5)  # the unjudged are not counted
        for measure, (k, n) in _hand(day).items():
            ci = binomtest(k, n).proportion_ci(method="wilson")
            assert (got[measure]["k"], got[measure]["n"]) == (k, n)
            assert got[measure]["ci95"] == pytest.approx([ci.low, ci.high])
    # day 1: 16/20, lower bound 0.58 < 0.7; day 2: 10/20; all: 26/40, lower bound 0.50
    assert [k for k, s in live["by_period"].items() if "sensitivity" in s["under_validated"]] == [
        "2026-12-01",
        "2026-12-02",
        "all",
    ]
    assert "Readers' verdicts" in (tmp_path / "review" / "monitor.html").read_text()


def test_the_command_says_the_live_measures_and_exits_1_under_the_validated_level(tmp_path, capsys):
    log, verdicts = _write(tmp_path)
    args = ["monitor", str(log), "--out", str(tmp_path / "r"), "--verdicts", str(verdicts)]
    assert main(args + ["--validated-specificity", "0.6"]) == 0  # 18/20, 19/20, 37/40: lower bounds 0.70 or more
    out = capsys.readouterr().out
    assert (
        "readers' verdicts on 80 of 90 results: sensitivity 65.0%" in out and "under the validated level: none" in out
    )
    assert main(args + ["--validated-sensitivity", "0.9"]) == 1
    assert "under the validated level: 2026-12-01 (sensitivity)" in capsys.readouterr().out


def test_a_later_verdict_on_a_result_replaces_the_earlier(tmp_path):
    path = tmp_path / "v.jsonl"
    lines = [{"image": "0" * 16, "outcome": "true_positive"}, {"image": "0" * 16, "outcome": "false_positive"}]
    path.write_text(
        "".join(json.dumps(x) + "\n" for x in lines) + json.dumps({"image": "x", "outcome": "true_positive"}) + "\n"
    )
    assert read_verdicts(path) == ({"0" * 16: False}, 1)


#: The listener's studies: (day, accession number, truly COVID-19, what each of its images was called)
STUDIES = [
    ("2026-12-01", "A1", True, [True, False]),  # a PA called positive, its repeat not: the study is positive
    ("2026-12-01", "A2", True, [False]),  # missed
    ("2026-12-01", "A3", False, [False, False]),
    ("2026-12-01", "A4", False, [True]),  # a false alarm
    ("2026-12-02", "A5", True, [True]),
    ("2026-12-02", "A6", False, [False]),
    ("2026-12-02", "A7", None, [True]),  # no final report: not counted
]


def test_the_listeners_results_are_judged_by_study_against_the_readers_final_reports(tmp_path, capsys):
    from ccad.io.files import pseudonym

    records, reports = [], []
    for i, (day, accession, truly, calls) in enumerate(STUDIES):
        for j, called in enumerate(calls):
            keys = {"study": pseudonym(f"1.2.3.{i}"), "accession": pseudonym(accession)}
            records.append(
                result_record(called, 0.9 if called else 0.1, time=f"{day}T10:0{j}:00+00:00", image=f"{i:08x}{j:08x}",
                              **keys)
            )  # fmt: skip
        finding = COVID_19 if truly else NEGATIVE
        reports.append(readers_oru(accession, accession, finding, "F" if truly is not None else "P"))
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (tmp_path / "reports.hl7").write_text("\n".join(reports))
    record = monitor(tmp_path / "results.jsonl", tmp_path / "r", findings=tmp_path / "reports.hl7")
    live = record["live"]
    assert live["unit"] == "study" and live["reports_left_out"] == 1  # the preliminary report
    everything = live["by_period"]["all"]
    assert everything["outcomes"] == {"true_positive": 2, "false_negative": 1, "true_negative": 2,
                                      "false_positive": 1}  # fmt: skip
    assert (everything["sensitivity"]["k"], everything["sensitivity"]["n"]) == (2, 3)
    assert (everything["ppv"]["k"], everything["ppv"]["n"]) == (2, 3) and everything["results"] == 9
    day_two = live["by_period"]["2026-12-02"]
    assert (day_two["sensitivity"]["k"], day_two["sensitivity"]["n"], day_two["with_a_verdict"]) == (1, 1, 2)
    args = ["monitor", str(tmp_path / "results.jsonl"), "--out", str(tmp_path / "o")]
    assert main(args + ["--truth", str(tmp_path / "reports.hl7"), "--validated-sensitivity", "0.5"]) == 1
    out = capsys.readouterr().out
    assert "readers' findings on 6 studies (9 results): sensitivity 66.7%" in out and "Иванов" not in out
    assert main(args + ["--truth", str(tmp_path / "reports.hl7"), "--verdicts", str(tmp_path / "reports.hl7")]) == 2
