"""A bundle made from another (``ccad calibrate``, ``ccad adapt``): built beside its target, renamed into place.

    write_derived_bundle(base, out, card, keep=card.sha256, write=lambda work: new_card, sign_key=None)

The files named in ``keep`` are copied from ``base`` into a fresh folder beside ``out``; ``write(work)`` writes the
files that change and returns the new card; the card gets the sha256 of every file then in the folder, is saved
(and signed with ``sign_key``; an old signature never survives), and the folder replaces ``out`` in one rename.
On any error nothing of it is left behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterable, Iterator

from ccad.io.files import sha256
from ccad.models.card import ModelCard
from ccad.models.signing import SIGNATURE_FILE, sign_bundle


def write_derived_bundle(
    base: str | os.PathLike,
    out: str | os.PathLike,
    keep: Iterable[str],
    write: Callable[[Path], ModelCard],
    sign_key: str | os.PathLike | None = None,
) -> None:
    base, out = Path(base), Path(out)
    with bundle_folder(out) as work:
        for name in keep:
            shutil.copyfile(base / name, work / name)
        card = write(work)
        (work / SIGNATURE_FILE).unlink(missing_ok=True)
        files = {p.name: sha256(p) for p in sorted(work.iterdir()) if p.is_file()}
        replace(card, sha256=files).save(work)
        if sign_key is not None:
            sign_bundle(work, sign_key)


@contextmanager
def bundle_folder(out: Path) -> Iterator[Path]:
    """A fresh private folder beside ``out`` to build a bundle in (``ccad export``, calibrate, adapt): when the
    block ends without error it replaces ``out`` (an existing one removed first) in one rename; on any error
    it is removed, and ``out`` is left as it was."""
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        yield work
        if out.exists():
            shutil.rmtree(out)
        work.chmod(0o755)  # mkdtemp makes it private
        os.replace(work, out)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
