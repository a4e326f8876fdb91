"""Which files a command works on: files and folders (walked lazily), manifest CSVs and lists of paths."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Iterable, Iterator

from ccad.errors import ConfigError, ImageReadError
from ccad.io.images import IMAGE_SUFFIXES


def iter_inputs(inputs: Iterable[str | os.PathLike]) -> Iterator[Path]:
    """Files given directly, then the image files under given folders (walked lazily, sorted per folder).

    A subfolder that cannot be listed is yielded itself, so that it gets an error row (permission denied)
    instead of vanishing from the results."""
    for item in inputs:
        item = Path(item)
        if "\0" in str(item):
            raise ImageReadError(f"{str(item)!r}: the path contains a NUL byte")
        if item.is_dir():
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


def expand_inputs(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    return list(iter_inputs(inputs))


def list_inputs(inputs: Iterable[str | os.PathLike]) -> list[str]:
    """Image paths from folders and files, manifest CSVs (``path`` column, relative to the CSV) and .txt lists."""
    paths: list[str] = []
    for item in inputs:
        item = Path(item)
        if item.is_file() and item.suffix.lower() == ".csv":
            with open(item, newline="", encoding="utf-8-sig") as f:
                reader = csv.DictReader(f)
                if "path" not in (reader.fieldnames or []):
                    raise ConfigError(f"{item}: a manifest needs a path column")
                paths += [str(item.parent / row["path"]) for row in reader]
        elif item.is_file() and item.suffix.lower() == ".txt":
            paths += [line.strip() for line in item.read_text().splitlines() if line.strip()]
        else:
            paths += [str(p) for p in iter_inputs([item])]
    return paths
