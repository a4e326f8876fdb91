"""A FHIR R4 result for the hospital record: a ``DiagnosticReport`` an image (or a study), and the ``Task`` a
worklist reads for the reading's priority, built and validated with fhir.resources (its R4B models: R4B changed
no element of these resources).

    report = diagnostic_report(source, algorithm, prediction)       # a dict that validates
    task = worklist_task(report, algorithm, prediction)              # priority "stat" when COVID-19 is suspected
    FhirPoster("https://fhir.example.org/r4").put(report)            # PUT [base]/DiagnosticReport/{id}

The report (``status: preliminary``, category "RAD") contains its own ``Device`` (ccad, its version, the model's
sha256 and variant) and ``Observation`` s: the screening result (the class the decision rule gave), the
probability of each class, and whether the guard flagged the image (not a frontal chest X-ray like those the
model was built for); for an image that was not scored, only why. The imaging study is referenced by its Study
Instance UID (``urn:dicom:uid``). No patient field is copied: ``subject`` is set only when the site names an identifier
system (``patient_system``), and then holds the Patient ID the PACS already has for the study. The
conclusion says it is a research screening aid, not a diagnosis. Resource ids are derived from the image's
SOP Instance UID and the model, as the DICOM results' UIDs are: the same image and model, the same report.
Both resources name the order by its accession number (``basedOn``, an identifier of type ``ACSN``).

Why a ``Task`` for the priority: FHIR R4 gives a ``DiagnosticReport`` no priority element, and its ``category``
classifies the service (radiology), not the urgency; a ``Flag`` must name its subject, a patient, which ccad
does not copy. A ``Task`` is R4's resource for work waiting to be done: its ``priority`` (``stat`` when COVID-19
is suspected, the same as the HL7 message's OBR-5 ``S``; else ``routine``) is the request-priority a worklist
filters on, its ``focus`` is the report, ``basedOn`` the order, and ``for`` (the patient) is optional. Its intent
is ``proposal``: a screening aid proposes a reading order, the RIS decides. Its id is the report's with
``task``: a new version of a study's answer replaces the Task as it replaces the report.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from datetime import datetime, timezone
from typing import Any

from ccad.deploy.pacs.results import MANUFACTURER, Algorithm
from ccad.models.ood import FLAG_MEANING, OUT_OF_DISTRIBUTION_TEXT

CODE_SYSTEM = "urn:ccad:codes"  # ccad's own concepts, as SCHEME (99CCAD) in the SR
NOT_FOR_DIAGNOSIS = "Research screening aid, not for diagnosis: read the image."
_NAMESPACE = uuid.UUID("0b7e6f0e-8f35-4c55-9d67-5a3c0f1f3b61")


def _id(source_uid: str, algorithm: Algorithm, what: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, "\n".join([source_uid, algorithm.model_sha256, algorithm.variant, what])))


def _concept(code: str, display: str) -> dict[str, Any]:
    return {"coding": [{"system": CODE_SYSTEM, "code": code, "display": display}], "text": display}


def diagnostic_report(
    source, algorithm: Algorithm, prediction: Any = None, reason: str | None = None, patient_system: str | None = None
) -> dict[str, Any]:
    """The ``DiagnosticReport`` (a dict, validated against the FHIR model) of ``prediction`` for the DICOM
    data set ``source``, or, with ``reason``, of an image that was not scored."""
    from fhir.resources.R4B.diagnosticreport import DiagnosticReport

    instance, study = str(source.SOPInstanceUID), str(source.StudyInstanceUID)
    observations, conclusion = _observations(algorithm, prediction, reason)
    report = {
        "resourceType": "DiagnosticReport",
        "id": _id(instance, algorithm, "report"),
        "status": "preliminary",
        "contained": [_device(algorithm), *observations],
        "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{instance}"}],
        "category": [
            {
                "coding": [
                    {"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "RAD", "display": "Radiology"}
                ]
            }
        ],
        # ccad's own code, not a LOINC one: no LOINC code names "a screening aid's output on one chest X-ray";
        # a site maps it in its interface engine
        "code": {
            "coding": [
                {
                    "system": CODE_SYSTEM,
                    "code": "covid-19-screening-aid",
                    "display": "COVID-19 screening aid on a chest X-ray",
                }
            ],
            "text": "Chest X-ray: COVID-19 screening aid (ccad)",
        },
        "issued": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "imagingStudy": [
            {
                "identifier": {"system": "urn:dicom:uid", "value": f"urn:oid:{study}"},
                "display": "the imaging study of this X-ray",
            }
        ],
        "result": [{"reference": f"#{o['id']}"} for o in observations],
        "conclusion": conclusion,
    }
    if _order(source):
        report["basedOn"] = _order(source)
    patient_id = str(source.get("PatientID", "") or "").strip()
    if patient_system and patient_id:
        report["subject"] = {"identifier": {"system": patient_system, "value": patient_id}}
    return json.loads(DiagnosticReport.model_validate(report).model_dump_json(exclude_none=True))


def worklist_task(report: dict[str, Any], algorithm: Algorithm, prediction: Any = None) -> dict[str, Any]:
    """The ``Task`` (a dict, validated) that asks for the reading of ``report``'s study with its priority; its
    patient (``for``) is the report's ``subject``, when it names one."""
    from fhir.resources.R4B.task import Task

    suspected = prediction is not None and prediction.predicted_class == algorithm.positive_class
    if prediction is None:
        why = "ccad scored no image of this study: routine reading"
    elif suspected:
        why = f"ccad suspects {algorithm.positive_class}: read this study first"
    else:
        why = f"ccad does not suspect {algorithm.positive_class}: routine reading"
    task = {
        "resourceType": "Task",
        "id": str(uuid.uuid5(_NAMESPACE, f"{report['id']}\ntask")),
        "status": "requested",
        "intent": "proposal",
        "priority": "stat" if suspected else "routine",
        "code": _concept("reading-priority", "Reading priority proposed by a screening aid"),
        "description": f"{why}. {NOT_FOR_DIAGNOSIS}",
        "focus": {"reference": f"DiagnosticReport/{report['id']}"},
        "authoredOn": report["issued"],
    }
    if "basedOn" in report:
        task["basedOn"] = report["basedOn"]
    if "subject" in report:
        task["for"] = report["subject"]
    return json.loads(Task.model_validate(task).model_dump_json(exclude_none=True))


def _order(source) -> list[dict[str, Any]]:
    """``basedOn``: the order by its accession number (none without one)."""
    accession = str(source.get("AccessionNumber", "") or "").strip()
    if not accession:
        return []
    kind = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN"}]}
    return [{"identifier": {"type": kind, "value": accession}, "display": "the imaging order"}]


def _device(algorithm: Algorithm) -> dict[str, Any]:
    """The contained ``Device``: the model by its sha256, its variant, version and decision rule."""
    return {
        "resourceType": "Device",
        "id": "device",
        "identifier": [{"system": "urn:ccad:model-sha256", "value": algorithm.model_sha256}],
        "manufacturer": MANUFACTURER,
        "deviceName": [{"name": f"{algorithm.name} ({algorithm.variant} model)", "type": "model-name"}],
        "version": [{"value": algorithm.version}],
        "note": [{"text": f"decision rule: {algorithm.decision_rule}"}],
    }


def _quantity(value: float) -> dict[str, Any]:
    return {"value": round(float(value), 6), "unit": "1", "system": "http://unitsofmeasure.org", "code": "1"}


def _observations(algorithm: Algorithm, prediction, reason: str | None) -> tuple[list[dict], str]:
    """(the contained ``Observation``s, the conclusion): why the image was not scored, or the class by the
    decision rule, the probabilities, the threshold and the guard's verdict."""
    observations: list[dict] = []

    def observation(code: str, display: str, **value) -> None:
        observations.append(
            {
                "resourceType": "Observation",
                "id": f"obs{len(observations)}",
                "status": "preliminary",
                "code": _concept(code, display),
                "device": {"reference": "#device"},
                **value,
            }
        )

    if prediction is None:
        observation("not-scored", "Not scored", valueString=str(reason)[:500])
        return observations, f"Not scored: {reason}. {NOT_FOR_DIAGNOSIS}"
    observation(
        "screening-result",
        "Screening result (decision rule)",
        valueCodeableConcept=_concept(f"class-{prediction.predicted_class}", prediction.predicted_class),
    )
    for name, p in prediction.probabilities.items():
        observation(f"p-{name}", f"Probability of {name}", valueQuantity=_quantity(p))
    if algorithm.threshold is not None:
        observation(
            "decision-threshold",
            f"Decision threshold on p({algorithm.positive_class})",
            valueQuantity=_quantity(algorithm.threshold),
        )
    outside = prediction.in_distribution is False
    observation("out-of-distribution", FLAG_MEANING[0].upper() + FLAG_MEANING[1:], valueBoolean=outside)
    warning = f" The image is {OUT_OF_DISTRIBUTION_TEXT}." if outside else ""
    conclusion = (
        f"ccad screening result: {prediction.predicted_class} "
        f"(p = {prediction.probabilities[prediction.predicted_class]:.3f}).{warning} {NOT_FOR_DIAGNOSIS}"
    )
    return observations, conclusion


class FhirPoster:
    """Sends reports (and tasks) to a FHIR server as ``PUT [base]/DiagnosticReport/{id}`` (``Task/{id}``: update as
    create, with the id derived from the image and model: a resent report replaces itself, where a POST would add a
    duplicate).
    Authentication from the environment:
    ``CCAD_FHIR_TOKEN`` (bearer); TLS verification on (``ca_file`` for a site's own authority)."""

    def __init__(self, base: str, ca_file: str | None = None, timeout_s: float = 30.0):
        self.base, self.ca_file, self.timeout_s = base.rstrip("/"), ca_file, timeout_s

    def put(self, report: dict[str, Any]) -> str | None:
        """``PUT [base]/{resourceType}/{id}`` (update-as-create): None when the server stored it, else why not
        (its HTTP status, a redirect, which is never followed, or an answer that is not the report sent back nor
        an OperationOutcome: a 200 from something that is not a FHIR server). Raises OSError when the server
        cannot be reached. The answer is read up to :data:`MAX_ANSWER_BYTES`."""
        import ssl
        import urllib.error
        import urllib.request

        headers = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}
        token = os.environ.get("CCAD_FHIR_TOKEN")
        if token:
            headers["Authorization"] = f"Bearer {token}"
        request = urllib.request.Request(
            f"{self.base}/{report['resourceType']}/{report['id']}",
            method="PUT",
            data=json.dumps(report).encode(),
            headers=headers,
        )
        context = ssl.create_default_context(cafile=self.ca_file) if self.base.startswith("https") else None
        deadline = time.monotonic() + self.timeout_s
        try:  # urllib does not follow a redirect of a PUT: it arrives here as an HTTPError
            with urllib.request.urlopen(request, timeout=self.timeout_s, context=context) as answer:
                status, body = answer.status, _read_by(answer, deadline)
        except urllib.error.HTTPError as e:
            return f"FHIR server answered HTTP {e.code}"
        if body is None:
            return f"FHIR server's answer took longer than {self.timeout_s:g} s"
        if status not in (200, 201):
            return f"FHIR server answered HTTP {status}"
        return stored_answer(body, report["id"], report["resourceType"])


#: The most of a FHIR server's answer that is read (a report's echo is a few KB).
MAX_ANSWER_BYTES = 2**20


def _read_by(answer, deadline: float) -> bytes | None:
    """Up to :data:`MAX_ANSWER_BYTES` + 1 bytes of ``answer`` as they arrive (``read1``), or None once
    ``deadline`` (``time.monotonic()``) passes, checked between reads (each waits at most the poster's
    timeout): the whole answer has a deadline, within one read's timeout, not only each read."""
    chunks, seen = [], 0
    while seen <= MAX_ANSWER_BYTES:
        if time.monotonic() > deadline:
            return None
        chunk = answer.read1(65536)
        if not chunk:
            break
        chunks.append(chunk)
        seen += len(chunk)
    return b"".join(chunks)


def stored_answer(body: bytes, report_id: str, kind_sent: str = "DiagnosticReport") -> str | None:
    """None when a 200/201 answer's body says the resource was stored: empty (``Prefer: return=minimal``), the
    resource sent back with its id, or an OperationOutcome without an error; else why it does not."""
    if not body.strip():
        return None
    if len(body) > MAX_ANSWER_BYTES:
        return "FHIR server answered with a body over 1 MB"
    try:
        answer = json.loads(body)
    except ValueError:
        return "FHIR server answered with a body that is not JSON"
    kind = answer.get("resourceType") if isinstance(answer, dict) else None
    if kind == kind_sent and answer.get("id") == report_id:
        return None
    if kind == "OperationOutcome":
        issues = answer.get("issue") or []
        severe = [i for i in issues if isinstance(i, dict) and i.get("severity") in ("error", "fatal")]
        return "FHIR server answered with an OperationOutcome error" if severe else None
    return f"FHIR server answered with a {str(kind)[:40] if kind else 'JSON body'}, not the report"


def keep_report(
    fhir: str, spool, key: str, source, algorithm: Algorithm, prediction, reason: str | None, patient: str | None
) -> None:
    """The report (``KEY.json``) and its worklist task (``KEY.task.json``, after it: the task names the report)
    where ``--fhir`` says: into the spool to be PUT (a URL), or written into that folder (mode 0600, atomically)
    for an interface engine."""
    from pathlib import Path

    from ccad.io.files import atomic_path

    report = diagnostic_report(source, algorithm, prediction, reason, patient)
    resources = {key: report, f"{key}.task": worklist_task(report, algorithm, prediction)}
    for name, resource in resources.items():
        if fhir.startswith(("http://", "https://")):
            spool.put_fhir(name, resource)
            continue
        folder = Path(fhir)
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(folder / f"{name}.json") as tmp:  # readable by the listener's user only
            tmp.write_text(json.dumps(resource, indent=1))
            os.chmod(tmp, 0o600)
