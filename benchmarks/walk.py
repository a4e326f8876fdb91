"""The walk of one image through the package: which ccad modules a ``ccad predict x.png``, a
``POST /api/v1/predict`` and one C-STORE to ``ccad dicom listen`` visit, in what order, whether it ever climbs
back up a layer or returns to a module it has left other than through the adapter, how many times the image
is parsed as DICOM and how many times each intake limit is checked.

A profile hook (``sys.setprofile`` and ``threading.setprofile``: every thread) records each call that crosses
from one ccad module into another; the caller is the nearest ccad frame on the stack, and a call whose stack
holds no ccad frame (a pool thread starting a task) is counted as a thread hand-off. Module-level code
(imports) is left out. For each walk it reports:

- ``modules``: the ccad modules entered; ``moves``: the calls that cross between two of them;
- ``climbs``: calls from a lower layer into a higher one (a callback up the layers); the aim is none;
- ``returns``: calls back into a module that is still below on the same thread's call stack (A -> B -> A:
  a module the walk went down from, entered again from below), other than the adapter (the CLI, the web
  package); the aim is none;
- ``handoffs``: thread hand-offs;
- ``parses``: calls of ``pydicom.filereader.dcmread`` (``pydicom.dcmread``), each under the nearest two ccad
  functions on its thread's stack (``callers``: ``module.function > module.function``, the caller last;
  ``(no ccad caller)`` when there is none);
- ``limit_checks``: calls of each intake limit check (:data:`LIMIT_CHECKS`), with their callers the same way.

Both counts come from the same profile hook, not from patching: a call is matched on the called function's
qualified name (``frame.f_code.co_qualname``) and module (``frame.f_globals["__name__"]``), so a function
imported with ``from x import f`` is counted wherever it is looked up, and nothing is left patched if a walk
fails. ``dcmread`` is matched in its module; a limit check by its name in any ccad module, so one that moves
between ccad modules is still counted (each count is keyed by where it was found: ``module.function``). The
names are those of the checks before and after the intake's refactor into :mod:`ccad.io.dicomfile`
(``report["watched"]`` lists them); a check never called in a walk is absent from its ``limit_checks``. The
pixel limit is checked inline (``width * height > max_pixels``), so the functions that hold such a check are
counted: one call, one check. Only calls in this process are seen: the C-STORE walk builds its results in
the worker threads (``result_process=False``), not in a result process.

The C-STORE walk starts a :class:`ccad.deploy.pacs.listener.Listener` on a free port (spool in a temporary
folder) that sends its results to a small pynetdicom Storage SCP started by the benchmark (outside the walk;
it accepts the SR and the capture without decoding them), C-STOREs one synthetic frontal chest CR to it,
waits until the listener is idle and the SCP has both results, and stops it: start, receipt, scoring,
delivery and stop are all in the walk; the benchmark's own polling of ``listener.idle()`` is not. Its
``moves`` depend a little on timing (the sender threads look at the outbox once a second).

Layers are pyproject.toml's import-linter layers. The model is the bundle shipped with ccad (or ``--model``);
model loading is part of every walk, as in ``ccad predict``, a server's start and a listener's start.

    python benchmarks/walk.py [--model BUNDLE] [--out benchmarks/results/walk.json]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import threading
import time
import tomllib
from collections import Counter
from pathlib import Path

from _report import emit, free_port

ROOT = Path(__file__).resolve().parents[1]

#: What ``parses`` counts: a DICOM data set parsed by pydicom (``pydicom.dcmread`` is this function).
DCMREAD = ("pydicom.filereader", "dcmread")
#: The intake limit checks ``limit_checks`` counts, by function name (in any ccad module), and what each checks.
LIMIT_CHECKS = {
    "check_data_set": "the deflate budget and the element walk (elements, bytes outside the pixel data)",
    "check_codestream": "a compressed codestream's own header against the data set's",
    "image_header": "a web upload's size from its header (a DICOM one parsed and checked: parse_dicom)",
    "check_frame_size": "the pixel limit on a DICOM header (Rows x Columns, x frames x samples)",
    "_read_raster": "the pixel limit on a raster image's header (width x height)",
    "_checked_header": "the pixel and request limits on a web upload (width x height from its header)",
}


def layers() -> list[list[str]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"][0]
    return [[m.strip() for m in row.split("|")] for row in config["layers"]]


def layer_of(module: str, table: list[list[str]]) -> int:
    """0 = the top layer; the deeper, the larger."""
    for i, row in enumerate(table):
        if any(module == m or module.startswith(m + ".") for m in row):
            return i
    return len(table)


class Walk:
    def __init__(self, adapters: tuple[str, ...]):
        self.adapters, self.table = adapters, layers()
        self.calls: list[tuple[str, str]] = []
        self.reentries: list[str] = []
        self.handoffs = 0
        self.watched: Counter[tuple[str, str]] = Counter()  # ("module.function", caller) -> calls
        self._stacks = threading.local()
        self._lock = threading.Lock()

    def hook(self, frame, event, arg):
        if getattr(self._stacks, "paused", False):
            return
        module = frame.f_globals.get("__name__", "")
        stack = getattr(self._stacks, "frames", None)
        if stack is None:
            stack = self._stacks.frames = []
        if event == "call":
            name = frame.f_code.co_qualname
            if (module, name) == DCMREAD or (name in LIMIT_CHECKS and module.startswith("ccad")):
                caller = " > ".join(f"{m}.{f.f_code.co_qualname}" for f, m in stack[-2:]) or "(no ccad caller)"
                with self._lock:
                    self.watched[(f"{module}.{name}", caller)] += 1
        if not module.startswith("ccad") or frame.f_code.co_name == "<module>":
            return
        if event == "return":
            if stack and stack[-1][0] is frame:
                stack.pop()
            return
        if event != "call":
            return
        with self._lock:
            if not stack:
                self.handoffs += 1
                self.calls.append(("(thread)", module))
            elif stack[-1][1] != module:
                caller = stack[-1][1]
                self.calls.append((caller, module))
                below = {m for _, m in stack[:-1]}
                if module in below and not module.startswith(self.adapters):
                    self.reentries.append(f"{' -> '.join(_chain(stack))} -> {module}")
        stack.append((frame, module))

    def __enter__(self):
        threading.setprofile(self.hook)
        sys.setprofile(self.hook)
        return self

    def __exit__(self, *exc):
        sys.setprofile(None)
        threading.setprofile(None)

    @contextlib.contextmanager
    def paused(self):
        """Nothing this thread calls meanwhile is recorded (the benchmark's own polling)."""
        self._stacks.paused = True
        try:
            yield
        finally:
            self._stacks.paused = False

    def counted(self, function: str) -> dict:
        callers = {caller: n for (f, caller), n in sorted(self.watched.items()) if f == function}
        return {"calls": sum(callers.values()), "callers": callers}

    def report(self) -> dict:
        entered, climbs = [], []
        for caller, callee in self.calls:
            if caller != "(thread)" and layer_of(callee, self.table) < layer_of(caller, self.table):
                climbs.append(f"{caller} -> {callee}")
            if callee not in entered:
                entered.append(callee)
        return {
            "modules": len(entered),
            "moves": sum(1 for caller, _ in self.calls if caller != "(thread)"),
            "climbs": sorted(set(climbs)),
            "returns": sorted(set(self.reentries)),
            "handoffs": self.handoffs,
            "parses": self.counted(".".join(DCMREAD)),
            "limit_checks": {f: self.counted(f) for f in sorted({f for f, _ in self.watched} - {".".join(DCMREAD)})},
            "order": entered,
        }


def _chain(stack) -> list[str]:
    """The modules of a call stack, each once in a row."""
    out: list[str] = []
    for _, module in stack:
        if not out or out[-1] != module:
            out.append(module)
    return out


def cli_walk(model: str, image: Path) -> dict:
    from ccad.cli import main

    out, err = io.StringIO(), io.StringIO()
    with Walk(("ccad.cli",)) as walk:
        stdout, stderr = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = out, err
        try:
            code = main(["predict", "--model", model, str(image)])
        finally:
            sys.stdout, sys.stderr = stdout, stderr
    assert code == 0, err.getvalue()
    return walk.report()


def web_walk(model: str, image: Path, content_type: str = "image/png") -> dict:
    """One upload of ``image`` (a PNG, or a DICOM file with ``application/dicom``) to ``POST /api/v1/predict``."""
    from fastapi.testclient import TestClient

    from ccad.deploy.web import ServeSettings, create_app

    with Walk(("ccad.deploy.web",)) as walk:  # threads started inside are hooked: the app is made inside too
        with TestClient(create_app(ServeSettings(Path(model)))) as client:
            upload = ("files", (image.name, image.read_bytes(), content_type))
            answer = client.post("/api/v1/predict", files=[upload])
    assert answer.status_code == 200, answer.text
    return walk.report()


def chest_cr(path: Path, gray) -> Path:
    """A frontal chest radiograph of ``gray`` (H, W) in [0, 1] as a modality sends it (support/dicom_files.py)."""
    from dicom_files import make_xray_dicom

    return make_xray_dicom(path, gray)


class ResultSCP:
    """A Storage SCP on 127.0.0.1 that takes the listener's results, the SR and the capture (any storage SOP
    class: counted, never decoded)."""

    def __init__(self):
        from pynetdicom import AE, StoragePresentationContexts, evt

        self.port, self.received, self._lock = free_port(), [], threading.Lock()
        ae = AE(ae_title="WALKDEST")
        ae.supported_contexts = StoragePresentationContexts
        self._server = ae.start_server(
            ("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)]
        )

    def _store(self, event) -> int:
        with self._lock:
            self.received.append(str(event.request.AffectedSOPClassUID))
        return 0x0000

    def stop(self) -> None:
        self._server.shutdown()


def c_store(ds, port: int) -> int:
    from pynetdicom import AE

    ae = AE(ae_title="WALKSCU")
    ae.add_requested_context(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID))
    assoc = ae.associate("127.0.0.1", port, ae_title="CCAD")
    assert assoc.is_established, "the listener refused the association"
    try:
        status = assoc.send_c_store(ds)
    finally:
        assoc.release()
    return int(status.Status) if status else -1


def cstore_walk(model: str, gray, spool: Path, timeout_s: float = 120.0) -> dict:
    import pydicom

    from ccad.deploy.pacs.listener import Destination, Listener, ListenerSettings

    ds, destination = pydicom.dcmread(chest_cr(spool.parent / "sent.dcm", gray)), ResultSCP()
    try:
        with Walk(("ccad.deploy.pacs",)) as walk:  # the listener's threads are started inside: all hooked
            port = free_port()
            settings = ListenerSettings(
                Path(model),
                Destination("WALKDEST", "127.0.0.1", destination.port),
                spool,
                port=port,
                result_process=False,
                study_window_s=0.0,  # the default, a result per study, answered as soon as its image is scored
            )
            listener = Listener(settings).start()
            try:
                with walk.paused():
                    status = c_store(ds, port)
                    if status != 0x0000:  # e.g. 0xC211: its C-STORE handler raised (logged on stderr)
                        raise RuntimeError(f"the listener answered the C-STORE with status 0x{status:04X}")
                    deadline = time.monotonic() + timeout_s
                    while not (listener.idle() and len(destination.received) >= 2):
                        if time.monotonic() > deadline:
                            raise TimeoutError(f"no results after {timeout_s:g} s ({destination.received})")
                        time.sleep(0.05)
            finally:
                listener.stop()
    finally:
        destination.stop()
    return walk.report()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a bundle (default: the one shipped with ccad)")
    parser.add_argument("--out")
    args = parser.parse_args()
    import logging

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)  # the listener's warnings and errors, if any
    from ccad.data.synthetic import render_patient
    from ccad.models.card import default_bundle

    model = args.model or str(default_bundle())
    import tempfile

    import numpy as np
    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp:
        image = Path(tmp) / "x.png"
        Image.fromarray((render_patient(np.random.default_rng(0), "normal", 256) * 255).astype(np.uint8)).save(image)
        report = {
            "benchmark": "walk",
            "model": Path(model).name,
            "watched": {"parses": ".".join(DCMREAD), "limit_checks": LIMIT_CHECKS},
            "cli": cli_walk(model, image),
        }
        report["web"] = web_walk(model, image)
        dicom = chest_cr(Path(tmp) / "x.dcm", render_patient(np.random.default_rng(0), "normal", 256))
        report["web_dicom"] = web_walk(model, dicom, "application/dicom")
        report["cstore"] = cstore_walk(
            model, render_patient(np.random.default_rng(0), "normal", 256), Path(tmp) / "spool"
        )
    emit(report, args.out)


if __name__ == "__main__":
    main()
