"""ccad validate --results --truth: a shadow period's result log (pseudonyms only) joined with the readers'
findings by accession number or study UID, one answer a study (its highest score; positive when any image
was), judged against the criteria written before the period, the counts equal to the hand count."""

import json

import pytest
from helpers import result_record

from ccad.cli import main
from ccad.errors import DataError
from ccad.evaluation.shadow import shadow_metrics
from ccad.io.files import pseudonym

#: (accession number, the readers' finding, the called positive flag and score of each scored image)
STUDIES = (
    [(f"ACC-{i}", "covid", [(True, 0.9), (False, 0.4)]) for i in range(12)]  # a PA called, a repeat not: positive
    + [(f"ACC-{i}", "covid", [(False, 0.3)]) for i in range(12, 16)]  # 4 of 16 positives missed
    + [(f"ACC-{i}", "normal", [(False, 0.1)]) for i in range(16, 34)]
    + [(f"ACC-{i}", "normal", [(True, 0.8)]) for i in range(34, 36)]  # 2 of 20 negatives called positive
)


def _write(tmp_path):
    lines, truth = [], ["accession_number,finding"]
    for accession, finding, images in STUDIES:
        for called, score in images:
            keys = {"study": pseudonym(f"1.2.{accession}"), "accession": pseudonym(accession)}
            lines.append(result_record(called, score, **keys))
        truth.append(f"{accession},{finding}")
    lines.append({**lines[0], "accession": pseudonym("ACC-not-read")})  # a study the readers did not report
    truth.append("ACC-not-scored,normal")  # a finding for a study ccad never scored
    (tmp_path / "shadow.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    (tmp_path / "truth.csv").write_text("\n".join(truth) + "\n")
    return tmp_path / "shadow.jsonl", tmp_path / "truth.csv"


def test_the_shadow_metrics_are_the_hand_count_of_studies(tmp_path):
    log, truth = _write(tmp_path)
    metrics = shadow_metrics(log, truth)
    assert metrics["join"] == {
        "on": "accession",
        "studies_in_log": 37,
        "findings": 37,
        "studies_joined": 36,
        "studies_without_a_finding": 1,
        "findings_without_a_study": 1,
        "unreadable_log_lines": 0,
    }
    assert metrics["confusion_matrix"] == [[18, 2], [4, 12]]  # rows: not covid, covid
    assert metrics["sensitivity"]["value"] == pytest.approx(12 / 16) and metrics["specificity"][
        "value"
    ] == pytest.approx(18 / 20)
    assert metrics["out_of_distribution"]["k"] == 0


def test_the_command_says_go_or_no_go_by_the_criteria_written_before(tmp_path, capsys):
    log, truth = _write(tmp_path)
    go = tmp_path / "go.toml"
    go.write_text('[[criterion]]\nmetric = "specificity"\nat_least = 0.6\n')
    no_go = tmp_path / "no-go.toml"
    no_go.write_text('[[criterion]]\nmetric = "sensitivity"\nat_least = 0.95\n')  # 12/16: [0.505, 0.938]
    args = ["validate", "--results", str(log), "--truth", str(truth), "--out"]
    assert main([*args, str(tmp_path / "a"), "--criteria", str(go)]) == 0
    assert "36 studies with a result and a finding (joined on accession)" in capsys.readouterr().out
    assert main([*args, str(tmp_path / "b"), "--criteria", str(no_go)]) == 1
    record = json.loads((tmp_path / "b" / "validation.json").read_text())
    assert record["verdict"] == "fail" and record["n"] == 36
    assert "ACC-" not in (tmp_path / "b" / "validation.json").read_text()  # the findings' keys are not copied


def test_findings_that_join_nothing_or_lack_their_columns_are_refused(tmp_path):
    log, _ = _write(tmp_path)
    (tmp_path / "other.csv").write_text("accession_number,finding\nXYZ,covid\n")
    with pytest.raises(DataError, match="none of its studies"):
        shadow_metrics(log, tmp_path / "other.csv")
    (tmp_path / "bad.csv").write_text("patient,finding\nDoe,covid\n")
    with pytest.raises(DataError, match="'accession_number' or 'study_instance_uid'"):
        shadow_metrics(log, tmp_path / "bad.csv")
    assert (
        main(["validate", "--results", str(log), "--out", str(tmp_path / "c"), "--criteria", str(tmp_path / "x")]) == 2
    )
