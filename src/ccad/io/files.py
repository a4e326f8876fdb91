"""Atomic file writes: a crash or Ctrl-C never leaves a half-written output."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; move it into place only on success.

    The temporary name keeps the target's suffix, so writers that infer the
    format from it (``model.save("x.keras")``) still work.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=f".tmp{target.suffix}", dir=target.parent)
    os.close(fd)
    os.unlink(tmp)  # writers create the file themselves
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text(target: str | os.PathLike, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_bytes(target: str | os.PathLike, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def write_json(target: str | os.PathLike, obj: Any) -> None:
    write_text(target, json.dumps(obj, indent=2, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def private_path(path: str | os.PathLike, what: str, folder: bool = False) -> Path:
    """``path`` made private to this process's user, whatever was there before: a folder (``folder``) created
    mode 0700 or a file 0600, the mode set again on one that existed. A symlink, or one owned by another user,
    is refused (:class:`ccad.errors.ConfigError` naming ``what``): patient-derived data never goes where
    another account chose or can read."""
    import errno
    import stat

    from ccad.errors import ConfigError

    path = Path(path)
    try:
        if folder:
            path.mkdir(parents=True, exist_ok=True, mode=0o700)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
        flags = (os.O_RDONLY | os.O_DIRECTORY) if folder else (os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK, 0o600)  # a FIFO does not block the open
    except OSError as e:
        if e.errno == errno.ELOOP or path.is_symlink():  # O_NOFOLLOW met a symlink
            raise ConfigError(f"{what} {path}: is a symbolic link; give the real path") from None
        raise ConfigError(f"{what} {path}: cannot write there ({e.strerror})") from None
    try:
        info = os.fstat(fd)
        if info.st_uid != os.geteuid():
            raise ConfigError(f"{what} {path}: belongs to another user (uid {info.st_uid}); refused")
        if not folder and not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"{what} {path}: not a regular file")
        os.fchmod(fd, 0o700 if folder else 0o600)
    finally:
        os.close(fd)
    return path


def pseudonym(text: str | bytes) -> str:
    """What the result log calls an image (a study, an accession number): 16 hex digits of a sha256 (of a UID,
    an accession number or the bytes uploaded)."""
    return hashlib.sha256(text.encode() if isinstance(text, str) else text).hexdigest()[:16]
