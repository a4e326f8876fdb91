"""ccad monitor: a result log summarized by period, against hand-computed counts and intervals."""

import json

import numpy as np
import pytest

from ccad.cli import main
from ccad.evaluation.monitor import drift_changes, monitor, read_log
from ccad.models.ood import OodGuard


def _log(path, rows):
    lines = [
        json.dumps(
            {
                "time": t,
                "adapter": "api",
                "image": f"{i:016x}",
                "decision": "covid" if pos else "normal",
                "positive": pos,
                "score": score,
                "in_distribution": inside,
                "ood_distance": 10.0 + i,
                "lung_qc": qc,
                "drift": drift,
            }
        )
        for i, (t, pos, score, inside, qc, drift) in enumerate(rows)
    ]
    path.write_text("\n".join(lines[:2] + ["{not json", ""] + lines[2:]) + "\n")
    return path


ROWS = [
    ("2026-11-30T08:00:00.000+00:00", True, 0.9, True, [], "warming up"),
    ("2026-11-30T09:00:00.000+00:00", False, 0.1, False, ["no_lungs"], "ok"),
    ("2026-11-30T10:00:00.000+00:00", False, 0.2, True, [], "ok"),
    ("2026-12-01T08:00:00.000+00:00", True, 0.8, True, [], "drift"),
    ("2026-12-01T09:00:00.000+00:00", False, 0.3, True, [], "ok"),
]


def test_periods_counts_and_drift_changes(tmp_path):
    record = monitor(_log(tmp_path / "r.jsonl", ROWS), tmp_path / "out", period="day")
    assert record["unreadable_lines"] == 1 and list(record["periods"]) == ["2026-11-30", "2026-12-01"]
    first = record["periods"]["2026-11-30"]
    assert first["n"] == 3 and first["positive"]["k"] == 1 and first["out_of_distribution"]["k"] == 1
    # Wilson 95% interval of 1 / 3: centre (1 + z^2/2) / (3 + z^2), half-width z sqrt(1*2/3 + z^2/4) / (3 + z^2)
    z = 1.959964
    centre, half = (1 + z * z / 2) / (3 + z * z), z * np.sqrt(2 / 3 + z * z / 4) / (3 + z * z)
    assert first["positive"]["ci95"] == pytest.approx([centre - half, centre + half], abs=1e-6)
    assert first["mean_score"] == pytest.approx(0.4) and first["lung_qc"] == {"no_lungs": 1}
    assert record["overall"]["n"] == 5 and record["overall"]["scored_in_drift"] == 1
    assert [(c["from"], c["to"]) for c in record["drift_changes"]] == [("ok", "drift"), ("drift", "ok")]
    assert "not a diagnosis" in (tmp_path / "out" / "monitor.html").read_text()
    week = monitor(tmp_path / "r.jsonl", tmp_path / "week", period="week")
    assert list(week["periods"]) == ["2026-11-30"]  # a Monday: both days in one week


def test_since_until_and_the_bundle_reference(tmp_path):
    from datetime import date

    log = _log(tmp_path / "r.jsonl", ROWS)
    records, _ = read_log(log, since=date(2026, 12, 1))
    assert len(records) == 2 and drift_changes(records) == [
        {"time": ROWS[3][0], "from": "warming up", "to": "drift"},  # its first full window: already in drift
        {"time": ROWS[4][0], "from": "drift", "to": "ok"},
    ]
    reference = OodGuard(
        np.zeros(2),
        np.eye(2),
        np.ones(2),
        1.0,
        5.0,
        reference_scores=np.linspace(0, 1, 100),
        reference_distances=np.linspace(8, 16, 100),
    )
    record = monitor(log, tmp_path / "out", reference=reference)
    assert record["overall"]["psi"]["score"] is None  # 5 images: under the live check's window, not measured
    # 250 images like the reference: a small PSI; then scores all near 1: far past 0.25
    like = [
        (f"2026-12-02T08:{i // 60:02d}:{i % 60:02d}.000+00:00", False, (i % 100) / 100, True, [], "ok")
        for i in range(250)
    ]
    quiet = monitor(_log(tmp_path / "like.jsonl", like), tmp_path / "like")["overall"]
    assert "psi" not in quiet  # no --model: no reference to compare with
    quiet = monitor(tmp_path / "like.jsonl", tmp_path / "like", reference=reference)["overall"]["psi"]["score"]
    shifted = [(t, True, 0.99, True, [], "drift") for t, *_ in like]
    loud = monitor(_log(tmp_path / "shift.jsonl", shifted), tmp_path / "shift", reference=reference)
    assert quiet < 0.1 < 0.25 < loud["overall"]["psi"]["score"]


def test_the_command_and_its_errors(tmp_path, capsys):
    log = _log(tmp_path / "r.jsonl", ROWS)
    assert main(["monitor", str(log), "--out", str(tmp_path / "out"), "--period", "month"]) == 0
    assert "5 images from 2026-11-30 to 2026-12-01" in capsys.readouterr().out
    (tmp_path / "empty.jsonl").write_text("garbage\n")
    assert main(["monitor", str(tmp_path / "empty.jsonl"), "--out", str(tmp_path / "x")]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no result records (1 rejected lines)" in err
    assert main(["monitor", str(log), "--out", str(tmp_path / "y"), "--model", str(tmp_path)]) != 0
    assert "no ood.npz" in capsys.readouterr().err


def _line(**overrides) -> str:
    record = {"time": "2026-12-01T08:00:00+00:00", "adapter": "api", "positive": False, "score": 0.2,
              "in_distribution": True, "ood_distance": 9.0, "lung_qc": [], "drift": "ok"}  # fmt: skip
    record.update(overrides)
    return json.dumps(record)


def test_records_of_the_wrong_type_or_range_are_rejected_with_their_reason_and_the_json_is_valid(tmp_path):
    log = tmp_path / "r.jsonl"
    lines = [
        _line(),
        _line(time="2026-12-01T09:00:00"),  # no UTC offset: read as UTC, said once
        _line(score="0.5"),
        '{"time": "2026-12-01T10:00:00+00:00", "positive": false, "score": NaN, "drift": "ok", "lung_qc": []}',
        _line(positive="yes"),
        _line(score=1.5),
        _line(ood_distance=-1),
        _line(drift="sideways"),
        _line(lung_qc="no_lungs"),
        "[1, 2]",
    ]
    log.write_text("\n".join(lines) + "\n")
    record = monitor(log, tmp_path / "out")
    assert record["overall"]["n"] == 2 and record["times_without_utc_offset_read_as_utc"] == 1
    assert record["unreadable_lines"] == 8
    assert record["rejected"] == {
        "drift missing or out of range": 1,
        "lung_qc missing or out of range": 1,
        "not JSON": 1,  # NaN is not JSON
        "not a JSON object": 1,
        "ood_distance missing or out of range": 1,
        "positive missing or out of range": 1,
        "score missing or out of range": 2,
    }
    json.loads((tmp_path / "out" / "monitor.json").read_text(), parse_constant=lambda c: pytest.fail(c))


def test_a_line_longer_than_the_limit_is_skipped_without_being_held(tmp_path):
    import tracemalloc

    from ccad.evaluation import monitor as module

    log = tmp_path / "r.jsonl"
    with open(log, "w") as f:
        f.write(_line() + "\n")
        f.write("x" * (20 * module.MAX_LINE))  # 1.3 MB without a newline, then a record
        f.write("\n" + _line(score=0.4) + "\n")
        f.write("y" * (3 * module.MAX_LINE))  # and a file that ends without one
    tracemalloc.start()
    record = monitor(log, tmp_path / "out")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert record["overall"]["n"] == 2 and record["rejected"] == {"a line over 64 KB": 2}
    assert peak < 4 * module.MAX_LINE + 2**20  # never the whole 1.3 MB line


def test_the_periods_psi_is_the_drift_modules_psi(tmp_path):
    from ccad.evaluation.drift import psi

    rng = np.random.default_rng(0)
    scores, distances = rng.beta(2, 5, 300), rng.normal(12, 1, 300).clip(0)
    log = tmp_path / "r.jsonl"
    log.write_text("".join(_line(score=float(s), ood_distance=float(d)) + "\n" for s, d in zip(scores, distances)))
    reference = OodGuard(
        np.zeros(2), np.eye(2), np.ones(2), 1.0, 5.0,
        reference_scores=rng.beta(2, 4, 500), reference_distances=rng.normal(11, 1, 500),
    )  # fmt: skip
    overall = monitor(log, tmp_path / "out", reference=reference)["overall"]["psi"]
    assert overall["score"] == pytest.approx(psi(reference.reference_scores, scores), rel=1e-9)
    assert overall["distance"] == pytest.approx(psi(reference.reference_distances, distances), rel=1e-9)
