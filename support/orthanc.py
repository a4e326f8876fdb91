"""A real Orthanc (Debian's ``orthanc``) on 127.0.0.1 for the DICOM tests and benchmarks/pacs.py, and a
C-STORE sender (pynetdicom)."""

import io
import json
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pydicom
from net import free_port  # noqa: F401  (re-exported for the tests and benchmarks/pacs.py)

ORTHANC = shutil.which("Orthanc") or next((p for p in ("/usr/sbin/Orthanc",) if Path(p).is_file()), None)
ROUTE_LUA = """
function OnStoredInstance(instanceId, tags, metadata, origin)
  local modality = tags['Modality']
  if (modality == 'CR' or modality == 'DX') and origin['RequestOrigin'] ~= 'Lua' then
    SendToModality(instanceId, 'ccad')
  end
end
"""


def wait_for(condition, timeout=120.0, what="condition", interval=0.25):
    """``condition()``'s first true value, polled every ``interval`` s; AssertionError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


DICOMWEB_PLUGIN = next((p for p in ("/usr/share/orthanc/plugins/libOrthancDicomWeb.so",) if Path(p).is_file()), None)


class Orthanc:
    """A real Orthanc on 127.0.0.1 with its own storage, routing new CR/DX instances to ccad (``listener_port``;
    None: no routing); with ``dicomweb``, Debian's DICOMweb plugin at ``/dicom-web``."""

    def __init__(self, root: Path, listener_port: int | None, dicomweb: bool = False):
        self.root, self.http_port, self.dicom_port = root, free_port(), free_port()
        root.mkdir(parents=True, exist_ok=True)
        (root / "route.lua").write_text(ROUTE_LUA)
        self.config = root / "orthanc.json"
        self.config.write_text(
            json.dumps(
                {
                    "Name": "ccad-test",
                    "StorageDirectory": str(root / "db"),
                    "IndexDirectory": str(root / "db"),
                    "HttpPort": self.http_port,
                    "DicomPort": self.dicom_port,
                    "DicomAet": "ORTHANC",
                    "RemoteAccessAllowed": False,
                    "AuthenticationEnabled": False,
                    "HttpServerEnabled": True,
                    "DicomServerEnabled": True,
                    "DicomModalities": {"ccad": ["CCAD", "127.0.0.1", listener_port]} if listener_port else {},
                    "LuaScripts": [str(root / "route.lua")] if listener_port else [],
                    "Plugins": [DICOMWEB_PLUGIN] if dicomweb else [],
                    "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
                    "StableAge": 1,
                    "ConcurrentJobs": 2,
                }
            )
        )
        self.process = None

    def start(self):
        self.log = open(self.root / "orthanc.log", "ab")
        self.process = subprocess.Popen([ORTHANC, str(self.config)], stdout=self.log, stderr=subprocess.STDOUT)
        wait_for(self._up, 60, "Orthanc to start")
        return self

    def _up(self):
        try:
            return self.get("/system")
        except OSError:
            return None

    def stop(self):
        if self.process is not None:
            self.process.terminate()
            self.process.wait(30)
            self.process = None
            self.log.close()

    def get(self, path):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=10) as r:
            body = r.read()
        return json.loads(body) if body[:1] in (b"{", b"[") else body

    @property
    def dicomweb(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/dicom-web"

    def upload(self, path) -> dict:
        """Store a DICOM file through Orthanc's REST API (as a modality's upload would arrive)."""
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.http_port}/instances", method="POST", data=Path(path).read_bytes()
        )
        with urllib.request.urlopen(request, timeout=30) as r:
            return json.loads(r.read())

    def study_instances(self, study_uid: str) -> list[pydicom.Dataset]:
        """Every instance Orthanc holds of a study, read back as DICOM files."""
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.http_port}/tools/find",
            method="POST",
            data=json.dumps({"Level": "Instance", "Query": {"StudyInstanceUID": study_uid}}).encode(),
        )
        with urllib.request.urlopen(request, timeout=10) as r:
            ids = json.loads(r.read())
        return [pydicom.dcmread(io.BytesIO(self.get(f"/instances/{i}/file"))) for i in ids]


def c_store(path_or_ds, port: int, ae_title: str, chunked: bool = False) -> int:
    """C-STORE one object to 127.0.0.1:port; its status (or -1 when the association failed). With
    ``chunked`` a file is sent as its bytes, the presentation context taken from its file meta group alone
    (so a data set that does not even parse can be sent, as a hostile sender would)."""
    from pynetdicom import AE, _config

    if chunked and not isinstance(path_or_ds, pydicom.Dataset):
        meta = pydicom.filereader.read_file_meta_info(path_or_ds)
        sop_class, syntax = str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID)
    else:
        ds = (
            path_or_ds
            if isinstance(path_or_ds, pydicom.Dataset)
            else pydicom.dcmread(path_or_ds, force=True, stop_before_pixels=True)
        )
        sop_class, syntax = str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(sop_class, syntax)
    assoc = ae.associate("127.0.0.1", port, ae_title=ae_title)
    if not assoc.is_established:
        return -1
    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = chunked
    try:
        status = assoc.send_c_store(path_or_ds)
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous
        assoc.release()
    return int(status.Status) if status else -1
