"""ccad's result objects (ccad.deploy.pacs.results) from hand-made predictions: what the SR and the capture say,
what they copy from the X-ray, and their UIDs (one object per image and per kind across a study, the same object
again on a resend, another object for another model: a PACS keys instances on the SOP Instance UID alone, PS3.4,
so two results sharing one would replace each other there)."""

import numpy as np
import pydicom
import pytest
from helpers import make_xray_dicom

from ccad.deploy.pacs.results import (
    Algorithm,
    banner_lines,
    heatmap_capture,
    missing_identifiers,
    result_source,
    structured_report,
)
from ccad.screening.records import Pictures, Prediction

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


def _prediction(p, inside=True, severity=None):
    picture = np.full((32, 32), 0.5, np.float32)
    return Prediction(
        "x",
        "covid" if p >= 0.4 else "normal",
        {"covid": p, "normal": 1 - p},
        inside,
        10.0,
        20.0,
        severity=severity,
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


def _content(sr) -> dict:
    """{concept code: value} over the SR's content tree: a number, a coded value's (code, meaning) or a text."""
    out = {}

    def walk(items):
        for item in items:
            name = _code(item.ConceptNameCodeSequence[0])
            if "MeasuredValueSequence" in item:
                out[name] = float(item.MeasuredValueSequence[0].NumericValue)
            elif "ConceptCodeSequence" in item:
                out.setdefault(name, []).append(
                    (_code(item.ConceptCodeSequence[0]), item.ConceptCodeSequence[0].CodeMeaning)
                )
            elif "TextValue" in item:
                out.setdefault(name, []).append(item.TextValue)
            walk(item.get("ContentSequence", []))

    walk(_read_back(sr).ContentSequence)
    return out


def _code(concept) -> str:
    return concept.get("CodeValue") or concept.get("LongCodeValue")


def _read_back(ds):
    """``ds`` written and read again, as a PACS stores it."""
    from io import BytesIO

    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return pydicom.dcmread(BytesIO(buffer.getvalue()))


def test_the_sr_states_each_probability_the_decision_its_threshold_and_the_intended_use(tmp_path):
    ds = _study(tmp_path, 1)[0]
    sr = structured_report(ds, MODEL, _prediction(0.625, inside=False, severity={"geographic": 3, "opacity": 2.5}))
    content = _content(sr)
    assert content["p-covid"] == 0.625 and content["p-normal"] == 0.375
    assert content["decision-threshold"] == 0.4
    assert content["severity-geographic"] == 3.0 and content["severity-opacity"] == 2.5
    assert content["screening-result"] == [("class-covid", "covid (decision rule)")]
    assert content["out-of-distribution"] == [("373066001", "Yes")]
    assert content["intended-use"] == [("not-for-diagnosis", "Research screening aid, not for diagnosis")]
    assert content["121058"] == [("399208008", "Plain chest X-ray")]  # procedure reported
    assert "not-scored" not in content
    names = {i.ConceptNameCodeSequence[0].CodeMeaning for i in _items(sr)}
    assert {"Probability of covid", "Decision threshold on p(covid)", "Severity: geographic"} <= names
    parameters = [i.TextValue for i in _items(sr) if _code(i.ConceptNameCodeSequence[0]) == "111002"]
    assert (
        parameters
        == MODEL.parameters()
        == [
            "model sha256 " + "ab" * 32,
            "model variant float",
            "covid if p(covid) >= 0.400",
            "decision rule: specificity-90",
            "research screening aid, not for diagnosis",
        ]
    )
    assert (sr.SeriesNumber, sr.Manufacturer, sr.SpecificCharacterSet) == (9901, "ccad", "ISO_IR 192")
    assert sr.SeriesDescription == "ccad result (not for diagnosis)" and sr.CompletionFlag == "COMPLETE"
    inside = _content(structured_report(ds, MODEL, _prediction(0.2)))
    assert inside["out-of-distribution"] == [("373067005", "No")]
    assert inside["screening-result"] == [("class-normal", "normal (decision rule)")]
    assert not any(k.startswith("severity-") for k in inside)
    without = _content(structured_report(ds, Algorithm("ccad", "0", "ab" * 32, "float", "argmax"), _prediction(0.2)))
    assert "decision-threshold" not in without


def _items(sr):
    """The SR's content items, depth first, in document order."""

    def walk(items):
        for item in items:
            yield item
            yield from walk(item.get("ContentSequence", []))

    return list(walk(_read_back(sr).ContentSequence))


def test_an_image_not_scored_gets_an_sr_with_the_reason_and_no_claim_that_it_is_a_chest_xray(tmp_path):
    ds = _study(tmp_path, 1)[0]
    content = _content(structured_report(ds, MODEL, reason="view position LL: a lateral view"))
    assert content["not-scored"] == [("reason", "view position LL: a lateral view")]
    assert content["121058"] == [("363679005", "Imaging procedure")]
    assert not any(k.startswith("p-") or k == "screening-result" for k in content)
    assert content["intended-use"] == [("not-for-diagnosis", "Research screening aid, not for diagnosis")]


@pytest.mark.parametrize(
    "algorithm, p, inside, expected",
    [
        (MODEL, 0.625, True, "ccad: COVID-19 suspected - p(COVID-19) = 0.62, threshold 0.40"),
        (MODEL, 0.25, False, "ccad: COVID-19 not suspected - p(COVID-19) = 0.25, threshold 0.40"),
        (
            Algorithm("ccad", "2", "ab", "float", "argmax"),
            0.75,
            True,
            "ccad: COVID-19 suspected - p(COVID-19) = 0.75, the most likely class",
        ),  # fmt: skip
        (None, 0.25, True, "ccad: COVID-19 not suspected - p(COVID-19) = 0.25, the most likely class"),
    ],
)
def test_the_banner_gives_p_covid_and_the_threshold_never_the_decided_class(algorithm, p, inside, expected):
    lines = banner_lines(_prediction(p, inside), algorithm, version="9.9")
    version = algorithm.version if algorithm is not None else "9.9"
    assert lines[:2] == [f"NOT FOR DIAGNOSIS - ccad {version}", expected]
    assert lines[2:] == ([] if inside else ["NOT A FRONTAL CHEST X-RAY like those the model was built for"])


def test_the_banner_of_a_model_without_a_covid_class_gives_the_most_likely_class():
    prediction = Prediction("x", "pneumonia", {"normal": 0.3, "pneumonia": 0.7}, True)
    assert banner_lines(prediction, None, version="1") == [
        "NOT FOR DIAGNOSIS - ccad 1",
        "ccad: most likely pneumonia (p = 0.70)",
    ]
    named = Prediction("x", "COVID_19", {"COVID_19": 0.9, "normal": 0.1}, True)
    assert (
        banner_lines(named, None, version="1")[1]
        == "ccad: COVID-19 suspected - p(COVID-19) = 0.90, the most likely class"
    )
    other = Algorithm("ccad", "1", "ab", "float", "youden", "pneumonia", 0.5)
    assert banner_lines(prediction, other)[1] == "ccad: pneumonia suspected - p(pneumonia) = 0.70, threshold 0.50"


def test_the_capture_is_the_overlay_under_a_band_with_the_banner_burned_in(tmp_path):
    from ccad.io.pictures import overlay

    ds = _study(tmp_path, 1)[0]
    prediction = _prediction(0.625, inside=False)
    sc = heatmap_capture(ds, MODEL, prediction)
    pixels = sc.pixel_array
    band = (10 + 6) * 3 + 6  # three lines of a 10 px font (the smallest), 6 px apart, under 6 px
    assert pixels.shape == (32 + band, 32, 3) and (sc.Rows, sc.Columns) == (32 + band, 32)
    p = prediction.pictures
    assert np.array_equal(pixels[band:], overlay(p.original, p.original_heatmap, outline=p.lung_outline))
    assert not pixels[:6].any() and pixels[:band].any()  # a black margin, then the text
    first, rest = pixels[6:22].reshape(-1, 3).astype(int), pixels[22:band].reshape(-1, 3).astype(int)
    first, rest = first[first.any(axis=1)], rest[rest.any(axis=1)]
    # the first line in yellow (no blue), the others in white (grey where the font is smoothed)
    assert len(first) and (first[:, 2] == 0).all() and (first[:, 0] == first[:, 1]).all() and first.max() > 200
    assert len(rest) and (rest[:, 0] == rest[:, 2]).all() and (rest[:, 1] == rest[:, 2]).all() and rest.max() > 200
    assert sc.BurnedInAnnotation == "YES" and sc.ImageComments == "NOT FOR DIAGNOSIS - ccad 0"
    assert (sc.SeriesNumber, sc.Manufacturer, sc.SpecificCharacterSet) == (9902, "ccad", "ISO_IR 192")
    assert sc.SeriesDescription == "ccad heatmap (not for diagnosis)" and sc.PhotometricInterpretation == "RGB"
    assert sc.ReferencedImageSequence[0].ReferencedSOPClassUID == ds.SOPClassUID
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == ds.SOPInstanceUID


@pytest.mark.parametrize(
    "name, value, copied",
    [
        ("PatientBirthDate", "19800229", "19800229"),
        ("PatientBirthDate", "19810229", ""),  # not a day
        ("PatientBirthDate", "1980022", ""),
        ("StudyTime", "235959.123456", "235959.123456"),
        ("StudyTime", "2400", ""),
        ("StudyTime", "12", "12"),
        ("PatientSex", "F", "F"),
        ("PatientSex", "female", ""),
        ("AccessionNumber", "A" * 16, "A" * 16),
        ("AccessionNumber", "A" * 17, ""),  # SH: at most 16
        ("PatientID", "B" * 64, "B" * 64),
        ("PatientID", "B" * 65, ""),
        ("PatientName", "Иванов^Иван", "Иванов^Иван"),
        ("PatientName", "X\tY", ""),  # a control character
        ("PatientName", "\x1b$B;3ED\x1b(B", "\x1b$B;3ED\x1b(B"),  # ESC is allowed (ISO 2022)
        ("StudyID", "  7 ", "7"),
    ],
)
def test_a_type2_attribute_is_copied_when_its_vr_allows_the_value_and_empty_when_not(name, value, copied):
    from pydicom.dataset import Dataset

    ds = Dataset()
    for uid in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        setattr(ds, uid, "1.2.3")
    setattr(ds, name, value.encode().decode("unicode_escape") if "\\" in value else value)
    out = result_source(ds)
    expected = copied.encode().decode("unicode_escape") if "\\" in copied else copied
    assert str(out.get(name)) == expected
    assert out.SpecificCharacterSet == "ISO_IR 192"
    assert all(out.get(other) == "" for other in ("ReferringPhysicianName", "StudyDate") if other != name)


def test_orientation_and_laterality_are_copied_only_when_valid():
    from pydicom.dataset import Dataset

    ds = Dataset()
    for uid in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        setattr(ds, uid, " 1.2.3 ")
    ds.PatientOrientation = ["P", "F"]
    ds.ImageLaterality = "l"
    out = result_source(ds)
    assert list(out.PatientOrientation) == ["P", "F"] and out.Laterality == "L" and out.SOPInstanceUID == "1.2.3"
    ds.PatientOrientation, ds.ImageLaterality, ds.Laterality = ["P"], "", "R"
    out = result_source(ds)
    assert "PatientOrientation" not in out and out.Laterality == "R"
    ds.Laterality = "B"  # both sides: not one a series can have
    assert result_source(ds).Laterality == ""


@pytest.mark.parametrize(
    "value, missing",
    [
        ("1.2.840.10008.5.1.4.1.1.1", False),
        ("1.2." + "3" * 60, False),  # 64 characters
        ("1.2." + "3" * 61, True),  # 65
        ("1.02.3", True),  # a component may not start with 0
        ("1..2", True),
        ("", True),
        (None, True),
    ],
)
def test_a_result_needs_four_valid_uids(value, missing):
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.SOPClassUID, ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2", "1.3", "1.4"
    if value is not None:
        ds.SOPInstanceUID = value
    assert missing_identifiers(ds) == (["SOPInstanceUID"] if missing else [])


def _coded(sr) -> dict:
    """{concept code: (scheme, code, meaning)} of every coded value in the SR's content tree."""
    return {
        _code(i.ConceptNameCodeSequence[0]): (
            i.ConceptCodeSequence[0].CodingSchemeDesignator,
            _code(i.ConceptCodeSequence[0]),
            i.ConceptCodeSequence[0].CodeMeaning,
        )
        for i in _items(sr)
        if "ConceptCodeSequence" in i
    }


def test_the_srs_codes_name_their_schemes_and_the_device_and_the_tracking_identify_ccad(tmp_path):
    from ccad.deploy.pacs.results import _uid

    ds = _study(tmp_path, 1)[0]
    sr = structured_report(ds, MODEL, _prediction(0.625, inside=False))
    coded = _coded(sr)
    assert coded["121058"] == ("SCT", "399208008", "Plain chest X-ray")
    assert coded["screening-result"] == ("99CCAD", "class-covid", "covid (decision rule)")
    assert coded["out-of-distribution"] == ("SCT", "373066001", "Yes")
    assert coded["intended-use"] == ("99CCAD", "not-for-diagnosis", "Research screening aid, not for diagnosis")
    names = {_code(i.ConceptNameCodeSequence[0]): i for i in _items(sr)}
    assert names["screening-result"].ConceptNameCodeSequence[0].CodeMeaning == "Screening result"
    assert names["out-of-distribution"].ConceptNameCodeSequence[0].CodeMeaning == (
        "Not a frontal chest X-ray like those the model was built for"
    )
    units = names["p-covid"].MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0]
    assert (units.CodingSchemeDesignator, units.CodeValue, units.CodeMeaning) == ("UCUM", "1", "no units")
    texts = {_code(i.ConceptNameCodeSequence[0]): i.get("TextValue") or i.get("UID") for i in _items(sr)}
    # the observer: ccad as a device; the tracking identifier: this image's result
    assert names["121012"].UID == _uid("device", MODEL, "device")
    assert (texts["121013"], texts["121014"], texts["121015"]) == ("ccad", "ccad", "ccad 0")
    assert names["112040"].UID == _uid(ds.SOPInstanceUID, MODEL, "tracking")
    assert texts["112039"] == "ccad COVID-19 screening result"
    image = [i for i in _items(sr) if "ReferencedSOPSequence" in i][0].ReferencedSOPSequence[0]
    assert (image.ReferencedSOPClassUID, image.ReferencedSOPInstanceUID) == (ds.SOPClassUID, ds.SOPInstanceUID)
    assert sr.InstanceNumber == 1
    not_scored = _coded(structured_report(ds, MODEL, reason="no pixel data"))
    assert not_scored["121058"] == ("SCT", "363679005", "Imaging procedure")
    assert not_scored["not-scored"] == ("99CCAD", "reason", "no pixel data")


def test_a_result_uid_is_the_documented_uuid_of_its_sources():
    import uuid

    from ccad.deploy.pacs.results import UID_NAMESPACE, _uid

    expected = uuid.uuid5(UID_NAMESPACE, "1.2.3\n" + "ab" * 32 + "\nfloat\nsr").int
    assert _uid("1.2.3", MODEL, "sr") == f"2.25.{expected}"  # a result made by an older ccad keeps its UID


def test_the_capture_copies_the_orientation_and_laterality_and_outlines_the_lungs(tmp_path):
    from ccad.io.pictures import overlay

    ds = _study(tmp_path, 1)[0]
    ds.PatientOrientation, ds.ImageLaterality = ["P", "F"], "R"
    picture = np.full((24, 40), 0.5, np.float32)  # not square: rows and columns each where they belong
    outline = np.zeros((24, 40), bool)
    outline[5:15, 5:15] = True
    prediction = _prediction(0.625)
    prediction.pictures = Pictures(picture, picture, picture, picture, lung_outline=outline)
    sc = heatmap_capture(ds, MODEL, prediction)
    band = (10 + 6) * 2 + 6
    assert sc.pixel_array.shape == (24 + band, 40, 3) and sc.InstanceNumber == 1
    assert np.array_equal(sc.pixel_array[band:], overlay(picture, picture, outline=outline))
    assert list(sc.PatientOrientation) == ["P", "F"] and sc.Laterality == "R"
    del ds.PatientOrientation, ds.ImageLaterality
    sc = heatmap_capture(ds, MODEL, _prediction(0.2))
    assert list(sc.PatientOrientation) == ["L", "F"] and sc.Laterality == ""


def test_a_wide_capture_has_a_larger_font_and_a_taller_band():
    import numpy as np

    from ccad.deploy.pacs.results import _burn_in

    rgb = np.zeros((100, 720, 3), np.uint8)
    out = _burn_in(rgb, ["NOT FOR DIAGNOSIS", "second"])
    size = 720 // 36  # 20 px
    assert out.shape == (100 + (size + 6) * 2 + 6, 720, 3)
    assert out[: (size + 6) * 2 + 6].any() and not out[:, :6].any()  # the text starts 6 px in


@pytest.mark.parametrize("sex", ["M", "F", "O"])
def test_each_sex_a_dicom_value_allows_is_copied(sex):
    from pydicom.dataset import Dataset

    ds = Dataset()
    for uid in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        setattr(ds, uid, "1.2.3")
    ds.PatientSex, ds.PatientName = sex, "Doe John"
    out = result_source(ds)
    assert out.PatientSex == sex and out.PatientName == "Doe John"  # a space is not a control character


@pytest.mark.parametrize("name", ["covid-19", "Covid19", "COVID_19"])
def test_every_spelling_of_the_covid_class_is_shown_as_covid_19(name):
    prediction = Prediction("x", name, {name: 0.9, "normal": 0.1}, True)
    assert banner_lines(prediction, None, version="1")[1] == (
        "ccad: COVID-19 suspected - p(COVID-19) = 0.90, the most likely class"
    )


def test_a_positive_class_the_prediction_does_not_have_falls_back_to_the_most_likely_class():
    prediction = Prediction("x", "normal", {"normal": 0.6, "pneumonia": 0.4}, True)
    algorithm = Algorithm("ccad", "1", "ab", "float", "youden", "covid", 0.5)
    assert banner_lines(prediction, algorithm)[1] == "ccad: most likely normal (p = 0.60)"


def test_each_stated_parameter_is_cut_at_64_characters():
    algorithm = Algorithm("ccad", "1", "ab", "float", "r" * 80, "c" * 30, 0.5)
    stated = algorithm.parameters()
    assert stated[2] == f"{'c' * 30} if p({'c' * 30}) >= 0.500"[:64] and len(stated[2]) == 64
    assert stated[3] == ("decision rule: " + "r" * 80)[:64] and len(stated[3]) == 64
