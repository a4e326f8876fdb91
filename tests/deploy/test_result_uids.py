"""The UIDs of ccad's results (ccad.deploy.pacs.results): one object per image and per kind across a study, the
same object again on a resend, another object for another model. A PACS keys instances on the SOP Instance UID
alone (PS3.4), so two results sharing one would replace each other there."""

import numpy as np
import pydicom
from helpers import make_xray_dicom

from ccad.deploy.pacs.results import Algorithm, heatmap_capture, structured_report
from ccad.scoring.score import Pictures, Prediction

STUDY = "1.2.826.0.1.3680043.8.498.1"
MODEL = Algorithm("ccad", "0", "ab" * 32, "float", "specificity-90", "covid", 0.4)


def _study(tmp_path, n=3):
    """``n`` images of one study in one series, as a modality sends a PA, a lateral and a repeat."""
    rng = np.random.default_rng(0)
    images = []
    for i in range(n):
        path = make_xray_dicom(tmp_path / f"{i}.dcm", rng.random((64, 64)), study_uid=STUDY)
        ds = pydicom.dcmread(path)
        images.append(ds)
    assert len({ds.SOPInstanceUID for ds in images}) == n
    return images


def _prediction(p):
    picture = np.full((32, 32), 0.5, np.float32)
    return Prediction(
        "x",
        "covid" if p >= 0.4 else "normal",
        {"covid": p, "normal": 1 - p},
        True,
        10.0,
        20.0,
        pictures=Pictures(picture, picture, picture, picture),
    )


def _results(images, algorithm=MODEL):
    out = []
    for i, ds in enumerate(images):
        prediction = _prediction(0.2 + 0.3 * i)
        out += [
            ("sr", ds, structured_report(ds, algorithm, prediction)),
            ("sc", ds, heatmap_capture(ds, algorithm, prediction)),
        ]
    return out


def test_every_result_of_a_study_has_its_own_instance_and_series_uid(tmp_path):
    images = _study(tmp_path)
    results = _results(images)
    instances = [r.SOPInstanceUID for _, _, r in results]
    assert len(set(instances)) == len(results) == 6  # an SR and a capture per image, none shared
    series = [r.SeriesInstanceUID for _, _, r in results]
    assert len(set(series)) == 6 and not set(series) & {ds.SeriesInstanceUID for ds in images}
    assert not set(instances) & {ds.SOPInstanceUID for ds in images}
    for kind, source, result in results:
        assert result.StudyInstanceUID == STUDY  # in the X-ray's study, beside it
        assert result.SOPInstanceUID.startswith("2.25.") and len(result.SOPInstanceUID) <= 64
        referenced = (
            result.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
            if kind == "sr"
            else result.SourceImageSequence[0]
        )
        assert referenced.ReferencedSOPInstanceUID == source.SOPInstanceUID  # each result names its own image


def test_a_resend_is_the_same_object_and_another_model_another_object(tmp_path):
    images = _study(tmp_path)
    first, again = _results(images), _results(images)
    assert [r.SOPInstanceUID for *_, r in first] == [r.SOPInstanceUID for *_, r in again]
    assert [r.SeriesInstanceUID for *_, r in first] == [r.SeriesInstanceUID for *_, r in again]
    for other in (
        Algorithm("ccad", "0", "cd" * 32, "float", "specificity-90", "covid", 0.4),  # another model file
        Algorithm("ccad", "0", "ab" * 32, "int8", "specificity-90", "covid", 0.4),  # another variant of it
    ):
        moved = _results(images, other)
        assert not {r.SOPInstanceUID for *_, r in moved} & {r.SOPInstanceUID for *_, r in first}
        assert not {r.SeriesInstanceUID for *_, r in moved} & {r.SeriesInstanceUID for *_, r in first}
