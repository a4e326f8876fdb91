"""ccad monitor: a result log summarized by period, against hand-computed counts and intervals."""

import json

import numpy as np
import pytest

from ccad.cli import main
from ccad.evaluation.monitor import drift_changes, monitor, read_log
from ccad.models.ood import MahalanobisGuard


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
    reference = MahalanobisGuard(
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
    reference = MahalanobisGuard(
        np.zeros(2), np.eye(2), np.ones(2), 1.0, 5.0,
        reference_scores=rng.beta(2, 4, 500), reference_distances=rng.normal(11, 1, 500),
    )  # fmt: skip
    overall = monitor(log, tmp_path / "out", reference=reference)["overall"]["psi"]
    assert overall["score"] == pytest.approx(psi(reference.reference_scores, scores), rel=1e-9)
    assert overall["distance"] == pytest.approx(psi(reference.reference_distances, distances), rel=1e-9)


EDGES = [
    ("2026-11-29T23:59:59.999+00:00", False, 0.1, True, [], "ok"),  # Sunday, last day of November's week 48
    ("2026-11-30T00:00:00.000+00:00", True, 0.9, True, [], "ok"),  # Monday: a new week, still November
    ("2026-11-30T23:30:00.000-02:00", False, 0.2, True, [], "ok"),  # 01:30 UTC on Tuesday 1 December
    ("2026-12-31T23:59:59.000+00:00", True, 0.7, True, [], "ok"),
    ("2027-01-01T00:00:00.000+00:00", False, 0.3, True, [], "ok"),
]


@pytest.mark.parametrize(
    "period, counts",
    [
        ("day", {"2026-11-29": 1, "2026-11-30": 1, "2026-12-01": 1, "2026-12-31": 1, "2027-01-01": 1}),
        ("week", {"2026-11-23": 1, "2026-11-30": 2, "2026-12-28": 2}),  # each week keyed by its Monday
        ("month", {"2026-11": 2, "2026-12": 2, "2027-01": 1}),
    ],
)
def test_each_period_holds_the_records_of_its_utc_days(tmp_path, capsys, period, counts):
    log = _log(tmp_path / "r.jsonl", EDGES)
    assert main(["monitor", str(log), "--out", str(tmp_path / "out"), "--period", period]) == 0
    record = json.loads((tmp_path / "out" / "monitor.json").read_text())
    assert record["period"] == period and {k: v["n"] for k, v in record["periods"].items()} == counts


@pytest.mark.parametrize(
    "since, until, kept",
    [
        ("2026-11-30", "2026-11-30", [1]),  # both ends inclusive; the record at -02:00 is 1 December in UTC
        ("2026-12-01", "2026-12-31", [2, 3]),
        ("2026-11-29", None, [0, 1, 2, 3, 4]),
        (None, "2026-11-29", [0]),
        ("2027-01-01", "2027-01-01", [4]),
    ],
)
def test_since_and_until_keep_the_records_of_the_days_between_them_inclusive(tmp_path, capsys, since, until, kept):
    log = _log(tmp_path / "r.jsonl", EDGES)
    args = ["monitor", str(log), "--out", str(tmp_path / "out")]
    args += ["--since", since] if since else []
    args += ["--until", until] if until else []
    assert main(args) == 0
    record = json.loads((tmp_path / "out" / "monitor.json").read_text())
    assert record["overall"]["n"] == len(kept)
    assert record["overall"]["positive"]["k"] == sum(EDGES[i][1] for i in kept)
    assert record["overall"]["mean_score"] == pytest.approx(np.mean([EDGES[i][2] for i in kept]))


def test_a_period_with_no_records_is_one_line_naming_the_period(tmp_path, capsys):
    log = _log(tmp_path / "r.jsonl", EDGES)
    assert main(["monitor", str(log), "--out", str(tmp_path / "o"), "--since", "2027-01-02"]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no result records in that period" in err


class _Table(__import__("html.parser").parser.HTMLParser):
    """The rows of an HTML page's table (each a list of its cells' texts) and its list items."""

    def __init__(self, page: str):
        super().__init__()
        self.rows, self.items, self._cell = [], [], None
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th", "li"):
            self._cell = ""

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.rows[-1].append(self._cell)
        elif tag == "li":
            self.items.append(self._cell)
        if tag in ("td", "th", "li"):
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data


def _wilson(k, n, z=1.959964):
    centre, half = (k + z * z / 2) / (n + z * z), z * np.sqrt(k * (n - k) / n + z * z / 4) / (n + z * z)
    return [centre - half, centre + half]


def _pct(k, n):
    low, high = _wilson(k, n)
    return f"{k / n:.1%} [{low:.1%}, {high:.1%}] ({k}/{n})"


def _mixed_lines():
    """Four records (one without a UTC offset, one at -05:00) and five lines each rejected for its own reason."""
    lines = [
        _line(time="2026-12-01T23:30:00-05:00", positive=True, score=0.75, lung_qc=["no_lungs"], drift="ok"),
        _line(
            time="2026-12-02T01:00:00",
            score=0.0,
            adapter="listener",
            lung_qc=["no_lungs", "small_lungs"],
            in_distribution=False,
            ood_distance=0.0,
            drift="drift",
        ),  # fmt: skip
        _line(time="2026-12-02T10:00:00+00:00", positive=True, score=1.0, lung_qc=["no_lungs"], drift="ok"),
        _line(time="2026-12-01T08:00:00+00:00", score=0.25, in_distribution=None, ood_distance=None, drift=None),
        _line(score=1.5),
        _line(ood_distance=-0.5),
        _line(in_distribution="yes"),
        _line(lung_qc=["no_lungs", 3]),
        "[1, 2]",
    ]
    return lines


@pytest.fixture
def new_york(monkeypatch):
    """A machine whose local time is not UTC."""
    import time

    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    yield
    monkeypatch.delenv("TZ")
    time.tzset()


def test_the_record_and_the_page_hold_exactly_what_the_log_says(tmp_path, new_york):
    (tmp_path / "r.jsonl").write_text("\n".join(_mixed_lines()) + "\n")
    record = monitor(tmp_path / "r.jsonl", tmp_path / "a" / "b")  # the default period: a UTC day
    assert set(record) == {"log", "period", "unreadable_lines", "rejected", "times_without_utc_offset_read_as_utc",
                           "overall", "drift_changes", "periods", "note"}  # fmt: skip
    assert (record["log"], record["period"], record["unreadable_lines"]) == ("r.jsonl", "day", 5)
    assert record["rejected"] == {
        "in_distribution missing or out of range": 1,
        "lung_qc missing or out of range": 1,
        "not a JSON object": 1,
        "ood_distance missing or out of range": 1,
        "score missing or out of range": 1,
    }
    assert record["times_without_utc_offset_read_as_utc"] == 1 and "not a diagnosis" in record["note"]
    # 23:30 at -05:00 is 04:30 on 2 December in UTC; the time without an offset is read as UTC
    assert list(record["periods"]) == ["2026-12-01", "2026-12-02"]
    day1, day2, overall = record["periods"]["2026-12-01"], record["periods"]["2026-12-02"], record["overall"]
    assert set(overall) == {"n", "first", "last", "positive", "out_of_distribution", "mean_score", "lung_qc",
                            "scored_in_drift", "adapters"}  # fmt: skip
    assert (day1["n"], day2["n"], overall["n"]) == (1, 3, 4)
    assert day2["positive"] == {"k": 2, "n": 3, "value": pytest.approx(2 / 3), "ci95": pytest.approx(_wilson(2, 3))}
    assert day2["out_of_distribution"]["k"] == 1 and day1["out_of_distribution"]["k"] == 0
    assert day2["mean_score"] == pytest.approx((0.75 + 0.0 + 1.0) / 3) and day1["mean_score"] == 0.25
    assert day2["lung_qc"] == {"no_lungs": 3, "small_lungs": 1} and day1["lung_qc"] == {}
    assert (day2["scored_in_drift"], overall["scored_in_drift"]) == (1, 1)
    assert overall["adapters"] == ["api", "listener"] and day1["adapters"] == ["api"]
    assert (overall["first"], overall["last"]) == ("2026-12-01T23:30:00-05:00", "2026-12-01T08:00:00+00:00")
    assert record["drift_changes"] == [
        {"time": "2026-12-02T01:00:00", "from": "ok", "to": "drift"},
        {"time": "2026-12-02T10:00:00+00:00", "from": "drift", "to": "ok"},
    ]
    text = (tmp_path / "a" / "b" / "monitor.json").read_text()
    assert text == json.dumps(record, indent=2) + "\n"
    page = _Table((tmp_path / "a" / "b" / "monitor.html").read_text())
    assert page.rows == [
        [
            "period",
            "images",
            "called positive (95% CI)",
            "flagged: not a frontal chest X-ray (95% CI)",
            "mean score",
            "scored in drift",
        ],
        ["2026-12-01", "1", _pct(0, 1), _pct(0, 1), "0.250", "0"],
        ["2026-12-02", "3", _pct(2, 3), _pct(1, 3), "0.583", "1"],
        ["all", "4", _pct(2, 4), _pct(1, 4), "0.500", "1"],
    ]
    assert page.items == ["2026-12-02T01:00:00: ok \u2192 drift", "2026-12-02T10:00:00+00:00: drift \u2192 ok"]
    page_text = (tmp_path / "a" / "b" / "monitor.html").read_text()
    assert "5 lines rejected\n(in_distribution missing or out of range: 1, lung_qc missing" in page_text
    assert "1 times without a UTC offset read as UTC" in page_text


def test_a_line_of_exactly_the_limit_is_read_and_one_byte_more_is_not(tmp_path):
    from ccad.evaluation.monitor import MAX_LINE

    def padded(size, score):
        line = _line(score=score, pad="")
        return _line(score=score, pad="x" * (size - 1 - len(line))) + "\n"  # size bytes with the newline

    (tmp_path / "r.jsonl").write_text(padded(MAX_LINE, 0.25) + padded(MAX_LINE + 1, 0.5) + _line(score=0.75) + "\n")
    records, rejected = read_log(tmp_path / "r.jsonl")
    assert [r["score"] for r in records] == [0.25, 0.75] and rejected == 1


def test_read_log_keeps_the_days_up_to_until_and_names_an_unreadable_log(tmp_path):
    from datetime import date

    from ccad.errors import DataError

    records, _ = read_log(_log(tmp_path / "r.jsonl", ROWS), until=date(2026, 11, 30))
    assert [r["time"] for r in records] == [row[0] for row in ROWS[:3]]
    with pytest.raises(DataError, match="no result records in that period \\(1 rejected lines\\)"):
        read_log(tmp_path / "r.jsonl", since=date(2027, 1, 1))
    with pytest.raises(DataError, match="no result records \\(1 rejected lines\\)"):
        read_log(_log(tmp_path / "e.jsonl", []))  # only the one line that is not JSON
    with pytest.raises(DataError, match=r"missing.jsonl: cannot read the result log \(No such file"):
        read_log(tmp_path / "missing.jsonl")


def test_each_period_is_compared_with_the_reference_from_a_full_window(tmp_path):
    from ccad.evaluation.drift import WINDOW, psi

    reference = MahalanobisGuard(np.zeros(2), np.eye(2), np.ones(2), 1.0, 5.0, reference_scores=np.linspace(0, 1, 100),
                         reference_distances=np.linspace(8, 16, 100))  # fmt: skip
    scores = [((i * 37) % 100) / 100 for i in range(WINDOW)]
    rows = [
        (f"2026-12-02T08:{i // 60:02d}:{i % 60:02d}.000+00:00", False, s, True, [], "ok") for i, s in enumerate(scores)
    ]
    record = monitor(_log(tmp_path / "r.jsonl", rows), tmp_path / "out", reference=reference)
    overall = record["overall"]["psi"]  # exactly the window: measured
    assert overall["score"] == pytest.approx(psi(np.linspace(0, 1, 100), scores))
    distances = [10.0 + i for i in range(WINDOW)]  # the log's distances (see _log)
    assert overall["distance"] == pytest.approx(psi(np.linspace(8, 16, 100), distances))
    assert overall["note"] == f"measured only on {WINDOW} images or more"
    page = _Table((tmp_path / "out" / "monitor.html").read_text())
    assert page.rows[0][-2:] == ["score PSI", "distance PSI"] and page.items == ["none"]
    assert page.rows[-1][-2:] == [f"{overall['score']:.3f}", f"{overall['distance']:.3f}"]
    assert page.rows[-1][:2] == ["all", str(WINDOW)] and all(len(row) == 8 for row in page.rows)
    one_less = monitor(_log(tmp_path / "s.jsonl", rows[1:]), tmp_path / "o2", reference=reference)["overall"]["psi"]
    assert one_less["score"] is None and one_less["distance"] is None
    assert _Table((tmp_path / "o2" / "monitor.html").read_text()).rows[-1][-2:] == ["-", "-"]


def test_validate_reads_a_time_without_an_offset_as_utc_whatever_the_machines_zone(new_york):
    from datetime import datetime, timezone

    from ccad.evaluation.monitor import Rejected, validate

    rejected = Rejected()
    first = validate(json.loads(_line(time="2026-12-01T22:00:00")), rejected)
    second = validate(json.loads(_line(time="2026-12-01T23:00:00.5")), rejected)
    assert first["_time"] == datetime(2026, 12, 1, 22, tzinfo=timezone.utc) and first["_time"].tzinfo == timezone.utc
    assert second["_time"].hour == 23 and rejected.naive_times == 2 and not rejected


@pytest.mark.parametrize(
    "change, reason",
    [
        ({"time": 20261201}, "time missing or out of range"),
        ({"time": "yesterday"}, "time missing or out of range"),
        ({"time": None}, "time missing or out of range"),
        ({"positive": 1}, "positive missing or out of range"),
        ({"drift": "maybe"}, "drift missing or out of range"),
        ({"score": True}, "score missing or out of range"),
    ],
)
def test_a_record_with_a_bad_field_is_rejected_by_its_name(change, reason):
    from ccad.evaluation.monitor import Rejected, validate

    rejected = Rejected()
    assert validate(json.loads(_line(**change)), rejected) is None and rejected == {reason: 1}


def test_the_optional_fields_may_be_missing():
    from ccad.evaluation.monitor import Rejected, validate

    record = json.loads(_line())
    for name in ("lung_qc", "in_distribution", "ood_distance", "drift", "adapter"):
        del record[name]
    rejected = Rejected()
    assert validate(record, rejected)["score"] == 0.2 and not rejected


def test_a_guard_without_drift_references_gives_no_psi(tmp_path):
    guard = MahalanobisGuard(np.zeros(2), np.eye(2), np.ones(2), 1.0, 5.0)  # an older bundle: no reference scores
    record = monitor(_log(tmp_path / "r.jsonl", ROWS), tmp_path / "out", reference=guard)
    assert "psi" not in record["overall"] and all("psi" not in p for p in record["periods"].values())


def test_the_pages_table_and_lists_are_well_formed(tmp_path):
    import html as html_module

    rows = [("2026-12-02T08:00:00.000+00:00", False, 0.25, True, [], "ok")]
    path = tmp_path / "r.jsonl"
    path.write_text(_line(time=rows[0][0]) + "\n")
    monitor(path, tmp_path / "out")
    page_text = (tmp_path / "out" / "monitor.html").read_text()
    page = _Table(page_text)
    table = (
        "<table><tr>"
        + "".join(f"<th>{h}</th>" for h in page.rows[0])
        + "</tr>"
        + "".join("<tr>" + "".join(f"<td>{html_module.escape(c)}</td>" for c in row) + "</tr>" for row in page.rows[1:])
        + "</table>"
    )
    assert table in page_text and len(page.rows) == 3 and all(len(row) == 6 for row in page.rows)
    assert "<ul><li>none</li></ul>" in page_text and "0 lines rejected\n(none);" in page_text
    _log(path, ROWS)
    monitor(path, tmp_path / "out2")
    changes = _Table((tmp_path / "out2" / "monitor.html").read_text()).items
    expected = "".join(f"<li>{item.replace(chr(0x2192), '&rarr;')}</li>" for item in changes)
    assert f"<ul>{expected}</ul>" in (tmp_path / "out2" / "monitor.html").read_text() and len(changes) == 2
