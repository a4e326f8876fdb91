"""The listener's spool: received images wait in ``inbox/`` until scored, results in ``outbox/`` until the
PACS has them (FHIR resources in ``fhir/``, HL7 messages in ``hl7/``). Every file is written atomically (a crash
leaves the old state or the new, never half a file) and readable by its owner only; each is removed once it
has been handled, so nothing of a patient stays on disk longer than it takes to score and deliver, but for the
study folders (``studies/``, :mod:`.study_book`), whose copied attributes stay until ``--study-keep-days``
after the study's answer. A restarted listener finds what was left and carries on."""

from __future__ import annotations

import os
from pathlib import Path

from ccad.errors import ConfigError
from ccad.io.files import atomic_path, write_bytes


class Spool:
    """``Spool(root).create()``: the constructor names the folders, :meth:`create` makes them (mode 0700)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.inbox, self.outbox, self.failed = self.root / "inbox", self.root / "outbox", self.root / "failed"
        self.fhir = self.root / "fhir"  # FHIR reports waiting to be sent
        self.hl7 = self.root / "hl7"  # HL7 ORU messages waiting to be sent

    def create(self) -> "Spool":
        for folder in (self.root, self.inbox, self.outbox, self.failed, self.fhir, self.hl7):
            folder.mkdir(parents=True, exist_ok=True)
            os.chmod(folder, 0o700)
        return self

    def lock(self) -> int:
        """Hold the spool for this process (``fcntl.flock`` on ``ROOT/.lock``, which records the holder's pid):
        a second listener or pull on the same spool would resume the same inbox and score every image twice.
        Returns the lock's descriptor (closing it, or the process ending, releases it); a spool held by another
        process raises :class:`ConfigError` naming its pid."""
        import fcntl

        path = self.root / ".lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise ConfigError(
                f"spool {self.root} is in use by another ccad listener or pull (pid {holder}); "
                "give each its own --spool"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return fd

    def receive(self, key: str, data: bytes) -> Path:
        """Store a received instance (the bytes of a DICOM file) under ``key``."""
        path = self.inbox / f"{key}.dcm"
        write_bytes(path, data)
        os.chmod(path, 0o600)
        return path

    def put_results(self, key: str, datasets) -> list[Path]:
        """Store the result objects of ``key`` (pydicom data sets) for sending, each atomically."""
        paths = []
        for i, ds in enumerate(datasets):
            path = self.outbox / f"{key}-{i}.dcm"
            with atomic_path(path) as tmp:
                ds.save_as(tmp, enforce_file_format=True)
                os.chmod(tmp, 0o600)
            paths.append(path)
        return paths

    @staticmethod
    def image_key(path: Path) -> str:
        """The key of the image a result file belongs to: ``KEY`` of an outbox ``KEY-I.dcm`` (as
        :meth:`put_results` names them), of a FHIR ``KEY.json`` (:meth:`put_fhir`) or an HL7 ``KEY.hl7``."""
        return path.stem if path.suffix in (".json", ".hl7") else path.stem.rsplit("-", 1)[0]

    def set_aside(self, path: Path, reason: str) -> Path:
        """Move a received instance that could not be handled to ``failed/``, with ``reason`` beside it
        (``KEY.reason.txt``): it stays in the spool for a person to look at, and is not retried."""
        target = self.failed / path.name
        os.replace(path, target)
        write_bytes(self.failed / f"{path.stem}.reason.txt", (reason + "\n").encode())
        return target

    def put_fhir(self, key: str, report: dict) -> Path:
        """Store the FHIR report of ``key`` for sending, atomically."""
        import json

        path = self.fhir / f"{key}.json"
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(report))
            os.chmod(tmp, 0o600)
        return path

    def put_hl7(self, key: str, message: str) -> Path:
        """Store the HL7 message of ``key`` for sending, atomically (the text as it is sent, UTF-8)."""
        path = self.hl7 / f"{key}.hl7"
        with atomic_path(path) as tmp:
            tmp.write_bytes(message.encode("utf-8"))
            os.chmod(tmp, 0o600)
        return path

    @staticmethod
    def _pending(folder: Path, pattern: str = "*.dcm") -> list[Path]:
        """The finished files of ``folder``, oldest first; not the ".name.tmp.dcm" files atomic writes are
        still filling, nor one another thread removed (sent, or set aside) while the folder was listed."""
        files = []
        for path in folder.glob(pattern):
            if path.name.startswith("."):
                continue
            try:
                files.append((path.stat().st_mtime, path.name, path))
            except FileNotFoundError:
                continue
        return [path for *_, path in sorted(files)]

    def pending_inbox(self) -> list[Path]:
        return self._pending(self.inbox)

    def pending_outbox(self) -> list[Path]:
        return self._pending(self.outbox)

    def pending_fhir(self) -> list[Path]:
        return self._pending(self.fhir, "*.json")

    def pending_hl7(self) -> list[Path]:
        return self._pending(self.hl7, "*.hl7")
