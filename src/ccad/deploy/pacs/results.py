"""What the listener scores, and the two DICOM objects of a result, built with highdicom.

- :func:`not_scored_reason`: why a received instance is not a frontal chest radiograph ccad can score
  (None when it is);
- :func:`structured_report`: a Comprehensive SR following TID 1500 (Measurement Report), the template the
  IHE AI Results profile uses: the algorithm's identification (name, version, model sha256, decision
  rule), the probability of each class, the decision, severity scores, the out-of-distribution flag and
  "not for diagnosis"; or, for an image not scored, the reason;
- :func:`heatmap_capture`: a Secondary Capture of the X-ray with the class activation map overlaid and a
  burned-in "NOT FOR DIAGNOSIS - ccad <version>" banner.

Both copy the patient and study of the source image (as DICOM requires: the result belongs to the same
study) and go into a new series each. What they copy goes through :func:`result_source` first: modalities
send minimal data sets, without Type 2 attributes such as PatientBirthDate or AccessionNumber, or with
values their VR does not allow; those become present-but-empty, as the standard allows, so every image has
a result. Their UIDs are UUID-derived (``2.25.``, a version-5 UUID of the source instance's UID, the model's
sha256, its variant and the object), so scoring the same image again with the same model gives the same
objects, and a PACS that receives one twice keeps one.
"""

from __future__ import annotations

import datetime
import re
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np

from ccad._meta import __version__
from ccad.io.dicom import (  # noqa: F401  (the rule of what is scored lives with the decoders: re-exported)
    ACCEPTED_SOP_CLASSES,
    RESULT_MANUFACTURER,
    RESULT_SERIES_NUMBERS,
    not_scored_reason,
)
from ccad.models.ood import FLAG_MEANING

MANUFACTURER = RESULT_MANUFACTURER
BANNER = "NOT FOR DIAGNOSIS - ccad {version}"
SCHEME = "99CCAD"  # a private coding scheme for ccad's own concepts
SR_SERIES_NUMBER, SC_SERIES_NUMBER = (int(number) for number in RESULT_SERIES_NUMBERS)
#: Results are written in Unicode (UTF-8): what is copied from the source keeps its characters, whatever the
#: source's SpecificCharacterSet was (pydicom decodes it; ISO 2022 escapes, Latin-1, GB18030 alike).
CHARACTER_SET = "ISO_IR 192"


@dataclass(frozen=True)
class Algorithm:
    """What identifies the result's producer (IHE AI Results: algorithm identification)."""

    name: str
    version: str
    model_sha256: str
    variant: str
    decision_rule: str
    #: The class the threshold is on and the threshold (None: the most likely class), stated in each SR.
    positive_class: str = ""
    threshold: float | None = None

    def parameters(self) -> list[str]:
        stated = (
            [f"{self.positive_class} if p({self.positive_class}) >= {self.threshold:.3f}"[:64]]
            if self.threshold is not None
            else []
        )
        return [
            f"model sha256 {self.model_sha256}",
            f"model variant {self.variant}",
            *stated,
            f"decision rule: {self.decision_rule}"[:64],
            "research screening aid, not for diagnosis",
        ]


#: The namespace of ccad's UUID-derived UIDs (a fixed, random UUID).
UID_NAMESPACE = uuid.UUID("7d0c3c86-2f0a-4b5e-9a53-0c1cad0c2a21")
#: Type 1 attributes a result cannot be made without (the listener refuses a data set that lacks one).
REQUIRED_UIDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
#: The Patient and General Study attributes a result copies (Type 2: present, empty when unknown), by VR.
COPIED_TYPE2 = {
    "PatientName": "PN",
    "PatientID": "LO",
    "PatientBirthDate": "DA",
    "PatientSex": "CS",
    "StudyDate": "DA",
    "StudyTime": "TM",
    "ReferringPhysicianName": "PN",
    "StudyID": "SH",
    "AccessionNumber": "SH",
}
_UID_PATTERN = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
_TIME_PATTERN = re.compile(r"^([01][0-9]|2[0-3])([0-5][0-9]([0-5][0-9](\.[0-9]{1,6})?)?)?$")
_MAX_LENGTH = {"LO": 64, "SH": 16, "PN": 64 * 5}


def _uid(source_uid: str, algorithm: Algorithm, what: str) -> str:
    """A UID derived from its sources (PS3.5 B.2: ``2.25.`` and a UUID's integer): the same sources, the same UID."""
    name = "\n".join([str(source_uid), algorithm.model_sha256, algorithm.variant, what])
    return f"2.25.{uuid.uuid5(UID_NAMESPACE, name).int}"


def missing_identifiers(ds) -> list[str]:
    """The :data:`REQUIRED_UIDS` that ``ds`` lacks or holds no valid UID in."""
    return [
        name
        for name in REQUIRED_UIDS
        if not _UID_PATTERN.match(str(ds.get(name, "") or "").strip()) or len(str(ds.get(name)).strip()) > 64
    ]


def _valid(value: Any, vr: str) -> str:
    """``value`` as text when its VR allows it, else "" (a Type 2 attribute may be empty)."""
    text = "" if value is None else str(value).strip()
    if not text or any(ord(c) < 32 and c not in "\x1b" for c in text):
        return ""
    if vr == "DA":
        try:
            datetime.datetime.strptime(text, "%Y%m%d")
        except ValueError:
            return ""
        return text if len(text) == 8 else ""
    if vr == "TM":
        return text if _TIME_PATTERN.match(text) else ""
    if vr == "CS":
        return text if text in ("M", "F", "O") else ""
    return text if len(text) <= _MAX_LENGTH[vr] else ""


def result_source(ds):
    """What a result copies from ``ds``: its UIDs and Patient/General Study attributes, each Type 2 one
    present (empty when the sender left it out or sent a value its VR does not allow), the patient
    orientation and laterality of the image. Texts are decoded with the source's SpecificCharacterSet and
    kept as Unicode, the copy's character set being :data:`CHARACTER_SET`."""
    from pydicom.dataset import Dataset

    out = Dataset()
    out.SpecificCharacterSet = CHARACTER_SET
    for name in REQUIRED_UIDS:
        setattr(out, name, str(ds.get(name)).strip())
    for name, vr in COPIED_TYPE2.items():
        try:
            value = ds.get(name)
        except Exception:  # a value pydicom cannot even convert
            value = None
        setattr(out, name, _valid(value, vr))
    orientation = ds.get("PatientOrientation")
    if orientation is not None and len(orientation) == 2 and all(_valid(v, "LO") for v in orientation):
        out.PatientOrientation = list(orientation)
    laterality = str(ds.get("ImageLaterality", "") or ds.get("Laterality", "") or "").strip().upper()
    out.Laterality = laterality if laterality in ("R", "L") else ""  # General Series, Type 2C
    return out


def _unicode(dataset):
    """``dataset`` (a result) marked as Unicode, so that every copied text keeps its characters."""
    dataset.SpecificCharacterSet = CHARACTER_SET
    return dataset


def procedure_reported(scored: bool):
    """The SR's procedure reported: a chest X-ray only when an image was scored (one that was not may not be a
    chest X-ray at all: it is not said to be one)."""
    from highdicom.sr import CodedConcept

    if scored:
        return CodedConcept("399208008", "SCT", "Plain chest X-ray")
    return CodedConcept("363679005", "SCT", "Imaging procedure")


def _code(value: str, meaning: str):
    from highdicom.sr import CodedConcept

    return CodedConcept(value=value, scheme_designator=SCHEME, meaning=meaning[:64])


def structured_report(source, algorithm: Algorithm, prediction: Any = None, reason: str | None = None):
    """The SR of ``prediction`` (a :class:`ccad.screening.records.Prediction`) for ``source``, or, with
    ``reason``, of an image that was not scored."""
    import highdicom as hd

    source = result_source(source)
    measurements, evaluations = sr_content(algorithm, prediction, reason)
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=_uid(source.SOPInstanceUID, algorithm, "tracking"), identifier="ccad COVID-19 screening result"
        ),
        algorithm_id=hd.sr.AlgorithmIdentification(algorithm.name, algorithm.version, algorithm.parameters()),
        source_images=[hd.sr.SourceImageForMeasurementGroup(source.SOPClassUID, source.SOPInstanceUID)],
        measurements=measurements or None,
        qualitative_evaluations=evaluations,
    )
    procedure = procedure_reported(reason is None)
    report = hd.sr.MeasurementReport(
        observation_context=device_context(algorithm),
        procedure_reported=procedure,
        imaging_measurements=[group],
    )
    sr = hd.sr.ComprehensiveSR(
        evidence=[source],
        content=report,
        series_instance_uid=_uid(source.SOPInstanceUID, algorithm, "sr-series"),
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=_uid(source.SOPInstanceUID, algorithm, "sr"),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        series_description="ccad result (not for diagnosis)",
    )
    return _unicode(sr)


def sr_content(algorithm: Algorithm, prediction, reason: str | None) -> tuple[list, list]:
    """(measurements, qualitative evaluations): the intended use always; then why the image was not scored,
    or the probabilities, the class by the decision rule, its threshold, the guard's verdict and severity."""
    import highdicom as hd
    from highdicom.sr import CodedConcept

    no_units = CodedConcept(value="1", scheme_designator="UCUM", meaning="no units")
    yes, no = CodedConcept("373066001", "SCT", "Yes"), CodedConcept("373067005", "SCT", "No")
    intended = hd.sr.QualitativeEvaluation(
        _code("intended-use", "Intended use"), _code("not-for-diagnosis", "Research screening aid, not for diagnosis")
    )
    if reason is not None:
        return [], [intended, hd.sr.QualitativeEvaluation(_code("not-scored", "Not scored"), _code("reason", reason))]

    def measurement(code: str, meaning: str, value) -> Any:
        return hd.sr.Measurement(name=_code(code, meaning), value=float(value), unit=no_units)

    measurements = [measurement(f"p-{c}", f"Probability of {c}", v) for c, v in prediction.probabilities.items()]
    if algorithm.threshold is not None:
        measurements.append(
            measurement(
                "decision-threshold", f"Decision threshold on p({algorithm.positive_class})", algorithm.threshold
            )
        )
    measurements += [
        measurement(f"severity-{key}", f"Severity: {key}", value)
        for key, value in (prediction.severity or {}).items()
        if isinstance(value, (int, float)) and not isinstance(value, bool)
    ]
    evaluations = [
        intended,
        hd.sr.QualitativeEvaluation(
            _code("screening-result", "Screening result"),
            _code(f"class-{prediction.predicted_class}", f"{prediction.predicted_class} (decision rule)"),
        ),
        hd.sr.QualitativeEvaluation(
            _code("out-of-distribution", FLAG_MEANING[0].upper() + FLAG_MEANING[1:]),
            no if prediction.in_distribution is not False else yes,
        ),
    ]
    return measurements, evaluations


def device_context(algorithm: Algorithm):
    """The observation context: ccad as the observing device."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=_uid("device", algorithm, "device"),
        name=algorithm.name,
        manufacturer_name=MANUFACTURER,
        model_name=f"{algorithm.name} {algorithm.version}",
    )
    return hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device, observer_identifying_attributes=device
        )
    )


def banner_lines(prediction, algorithm: Algorithm | None = None, version: str = __version__) -> list[str]:
    """The capture's burned-in text: "not for diagnosis", then the decision in words with the probability of
    the positive class and the threshold it was compared with (never the probability of the decided class,
    which reads as the opposite), and the out-of-distribution flag."""
    positive = algorithm.positive_class if algorithm is not None and algorithm.positive_class else None
    positive = positive or next((c for c in prediction.probabilities if "covid" in c.lower()), None)
    lines = [BANNER.format(version=algorithm.version if algorithm is not None else version)]
    if positive is None or positive not in prediction.probabilities:
        probability = prediction.probabilities[prediction.predicted_class]
        lines.append(f"ccad: most likely {prediction.predicted_class} (p = {probability:.2f})")
    else:
        p = prediction.probabilities[positive]
        suspected = prediction.predicted_class == positive
        word = _display(positive)
        rule = (
            f"threshold {algorithm.threshold:.2f}"
            if algorithm is not None and algorithm.threshold is not None
            else "the most likely class"
        )
        lines.append(f"ccad: {word} {'suspected' if suspected else 'not suspected'} - p({word}) = {p:.2f}, {rule}")
    if prediction.in_distribution is False:
        lines.append("NOT A FRONTAL CHEST X-RAY like those the model was built for")
    return lines


def _display(class_name: str) -> str:
    """How a class is named to a reader: ``covid`` as "COVID-19"."""
    return "COVID-19" if class_name.lower().replace("-", "").replace("_", "") in ("covid", "covid19") else class_name


def heatmap_capture(source, algorithm: Algorithm, prediction):
    """A Secondary Capture (RGB) of the X-ray with ``prediction``'s heatmap and lung outline overlaid and
    the banner burned in."""
    import highdicom as hd

    from ccad.io.pictures import overlay

    pictures = prediction.pictures
    rgb = _burn_in(
        overlay(pictures.original, pictures.original_heatmap, outline=pictures.lung_outline),
        banner_lines(prediction, algorithm),
    )
    source = result_source(source)
    orientation = source.get("PatientOrientation")
    orientation = tuple(orientation) if orientation and len(orientation) == 2 else ("L", "F")
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=rgb,
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        patient_orientation=orientation,
        series_instance_uid=_uid(source.SOPInstanceUID, algorithm, "sc-series"),
        series_number=SC_SERIES_NUMBER,
        sop_instance_uid=_uid(source.SOPInstanceUID, algorithm, "sc"),
        instance_number=1,
        manufacturer=MANUFACTURER,
        series_description="ccad heatmap (not for diagnosis)",
    )
    sc.BurnedInAnnotation = "YES"
    sc.ImageComments = BANNER.format(version=algorithm.version)
    sc.Laterality = source.Laterality  # General Series, Type 2C: the X-ray's, or empty
    sc.SourceImageSequence = [_reference(source)]  # the X-ray this capture was made from
    sc.ReferencedImageSequence = [_reference(source)]
    return _unicode(sc)


def _reference(source):
    from pydicom.dataset import Dataset

    item = Dataset()
    item.ReferencedSOPClassUID = source.SOPClassUID
    item.ReferencedSOPInstanceUID = source.SOPInstanceUID
    return item


def _burn_in(rgb: np.ndarray, lines: list[str]) -> np.ndarray:
    """``rgb`` with a black band on top holding ``lines`` in white."""
    from PIL import Image, ImageDraw, ImageFont

    width = rgb.shape[1]
    size = max(10, width // 36)
    font = ImageFont.load_default(size=size)
    band = (size + 6) * len(lines) + 6
    canvas = Image.new("RGB", (width, rgb.shape[0] + band))
    canvas.paste(Image.fromarray(rgb), (0, band))
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(lines):
        draw.text((6, 6 + i * (size + 6)), line, fill=(255, 255, 0) if i == 0 else (255, 255, 255), font=font)
    return np.asarray(canvas)
