"""Which files a command works on: files and folders (walked lazily), manifest CSVs and lists of paths."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Iterable, Iterator

from ccad.errors import ConfigError, ImageReadError
from ccad.io.images import IMAGE_SUFFIXES


def iter_inputs(inputs: Iterable[str | os.PathLike]) -> Iterator[Path]:
    """The images a command works on, lazily and in order: a file as given, the image files under a folder
    (walked lazily, sorted per folder), the ``path`` column of a manifest CSV (relative to the CSV), the lines
    of a ``.txt`` list. Every engine (local, Ray) and every command reads its inputs through this.

    A subfolder that cannot be listed is yielded itself, so that it gets an error row (permission denied)
    instead of vanishing from the results."""
    for item in inputs:
        item = Path(item)
        if "\0" in str(item):
            raise ImageReadError(f"{str(item)!r}: the path contains a NUL byte")
        if item.is_file() and item.suffix.lower() == ".csv":
            yield from _manifest_paths(item)
        elif item.is_file() and item.suffix.lower() == ".txt":
            yield from (Path(line.strip()) for line in item.read_text().splitlines() if line.strip())
        elif item.is_dir():
            found, unlisted = False, []
            for dirpath, dirnames, filenames in os.walk(item, onerror=unlisted.append):
                while unlisted:
                    found = True
                    yield Path(unlisted.pop(0).filename)
                dirnames.sort()
                for name in sorted(filenames):
                    if Path(name).suffix.lower() in IMAGE_SUFFIXES:
                        found = True
                        yield Path(dirpath) / name
            for error in unlisted:
                found = True
                yield Path(error.filename)
            if not found:
                raise ImageReadError(f"{item}: folder holds no image files")
        elif item.exists():
            yield item
        else:
            raise ImageReadError(f"{item}: no such file or folder")


def _manifest_paths(manifest: Path) -> Iterator[Path]:
    with open(manifest, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        if "path" not in (reader.fieldnames or []):
            raise ConfigError(f"{manifest}: a manifest needs a path column")
        for row in reader:
            yield manifest.parent / row["path"]


def expand_inputs(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    return list(iter_inputs(inputs))


def list_inputs(inputs: Iterable[str | os.PathLike]) -> list[str]:
    """:func:`iter_inputs` as a list of strings."""
    return [str(p) for p in iter_inputs(inputs)]


def input_key(path: str | os.PathLike) -> str:
    """How a resumed run recognises a file it has done, however it was spelled: its absolute, resolved path."""
    return str(Path(path).resolve())
