"""Finding labelled images: folders and manifest CSVs, pooled, relabelled, near-duplicate films grouped.

Three layouts are understood (``--data``):

(a) a folder with one subfolder per class: ``D/covid/*.png, D/normal/*.png``;
(b) the paper's layout: ``D/train/<class>/*`` and ``D/test/<class>/*``;
(c) a manifest CSV with columns ``path,label`` and optional ``split``
    (``train``/``val``/``test``) and ``group`` (patient id); paths are relative
    to the CSV's folder.

Every layout becomes a :class:`Dataset`: a list of :class:`Sample` rows plus
the ordered class names. :mod:`ccad.data.splits` gives every sample a split,
never putting one patient group in two splits.
"""

from __future__ import annotations

import csv
import hashlib
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ccad._meta import DEFAULT_POSITIVE
from ccad.data.duplicates import near_duplicate_groups
from ccad.errors import DataError

SPLITS = ("train", "val", "test")
IGNORED_FILES = {"thumbs.db", "desktop.ini", "manifest.csv", "readme.md", "readme.txt"}


@dataclass(frozen=True)
class Sample:
    path: Path
    label: str
    group: str
    split: str | None = None
    source: str = ""
    #: False when the data named no patient group (a folder, a manifest without ``group``): the group is
    #: then the file, joined with its near-duplicates by :func:`discover`.
    group_given: bool = True


@dataclass
class Dataset:
    samples: list[Sample]
    classes: list[str]
    positive_class: str | None
    layout: str
    source: str
    bad_files: list[tuple[str, str]] = field(default_factory=list)

    def subset(self, split: str) -> list[Sample]:
        return [s for s in self.samples if s.split == split]

    def counts(self) -> dict[str, dict[str, int]]:
        """{split: {class: n}} with an ``all`` split."""
        table: dict[str, dict[str, int]] = {}
        for s in self.samples:
            for key in (s.split or "unsplit", "all"):
                table.setdefault(key, {c: 0 for c in self.classes})[s.label] += 1
        return table

    def fingerprint(self) -> str:
        """sha256 of the sorted (path, label, split) list: identifies the data a model saw."""
        h = hashlib.sha256()
        for s in sorted(self.samples, key=lambda s: str(s.path)):
            h.update(f"{s.path}\t{s.label}\t{s.split}\n".encode())
        return h.hexdigest()


@dataclass(frozen=True)
class DataSpec:
    """Which labelled images a command works on: the ``--data``, ``--classes``, ``--where``, ``--relabel``,
    ``--positive`` and ``--skip-bad`` options, in one value that every command passes on."""

    data: str | os.PathLike | tuple[str | os.PathLike, ...]
    classes: tuple[str, ...] | None = None
    where: tuple[str, ...] = ()
    positive_class: str | None = DEFAULT_POSITIVE
    relabel: tuple[str, ...] = ()
    skip_bad: bool = False

    def __post_init__(self):
        if not isinstance(self.data, (str, os.PathLike)):
            data = tuple(self.data)
            object.__setattr__(self, "data", data[0] if len(data) == 1 else data)
        for name in ("where", "relabel"):
            object.__setattr__(self, name, tuple(getattr(self, name) or ()))
        if self.classes is not None:
            object.__setattr__(self, "classes", tuple(self.classes))

    def discover(self, model_classes: Sequence[str] | None = None) -> "Dataset":
        """The :class:`Dataset` this selection names (see :func:`discover`)."""
        return discover(self.data, self.classes, self.where, self.positive_class, model_classes, self.relabel)


def discover(
    data: str | os.PathLike | Sequence[str | os.PathLike],
    classes: Sequence[str] | None = None,
    where: Sequence[str] = (),
    positive_class: str | None = DEFAULT_POSITIVE,
    model_classes: Sequence[str] | None = None,
    relabel: Sequence[str] = (),
    near_duplicates: bool = True,
) -> Dataset:
    """Find the labelled images under ``data`` (a folder or a manifest CSV, or a list of them, pooled).

    Args:
        data: folder (layouts a, b) or CSV file (layout c), or several of them: their rows are pooled and
            each keeps its ``source`` (a manifest's ``source`` column, else the folder or manifest's
            folder name). With several, a ``--where`` filter applies to each manifest that has its column.
        classes: classes to keep, in output order; default: all found, sorted.
        where: ``COLUMN=VALUE`` filters on manifest rows.
        positive_class: the class binary sensitivity/specificity/ROC refer to.
        model_classes: for scoring a trained model: its classes, in its output
            order. Then a set may hold only some of them (one class is fine), and
            a label the model does not know is an error.
        relabel: ``[SOURCE:]OLD=NEW`` label changes, applied before ``classes`` picks rows (e.g.
            ``cohen-covid-chestxray:pneumonia=normal`` makes that source's pneumonias negatives).
        near_duplicates: for training data (no ``model_classes``), images without a patient group that are
            near-duplicates of each other (:mod:`ccad.data.duplicates`) share one group, so no split or fold
            holds the same film twice.
    """
    items = [data] if isinstance(data, (str, os.PathLike)) else list(data)
    if not items:
        raise DataError("`data`: give at least one folder or manifest")
    samples, layout = _gather(items, where)
    samples = _relabel(samples, relabel)
    found = sorted({s.label for s in samples})
    names = " + ".join(str(i) for i in items)
    described = f"{names} (where {' and '.join(where)})" if where else names
    if relabel:
        described += f" (relabel {', '.join(relabel)})"
    if model_classes is not None:
        return _for_model(described, samples, found, classes, list(model_classes), positive_class, layout)
    return _for_training(names, described, samples, found, classes, positive_class, layout, near_duplicates)


def _gather(items: list, where: Sequence[str]) -> tuple[list[Sample], str]:
    """The samples of every folder or manifest, pooled, and the layout (``pooled`` when they differ)."""
    samples, layouts = [], []
    for item in items:
        item_samples, layout = _samples_of(Path(item), where, pooled=len(items) > 1)
        samples += item_samples
        layouts.append(layout)
    if len(items) > 1 and where:
        for column, _ in map(_parse_where, where):
            if not any(_manifest_has(Path(i), column) for i in items):
                raise DataError(f"`where` {column}: no manifest among `data` has that column")
    return samples, layouts[0] if len(set(layouts)) == 1 else "pooled"


def _for_training(names, described, samples, found, classes, positive_class, layout, near_duplicates) -> Dataset:
    """A training set: the classes asked for (all found by default, at least two), near-duplicate films grouped,
    a positive class among them."""
    if classes:
        classes = list(classes)
        unknown = [c for c in classes if c not in found]
        if unknown:
            raise DataError(f"{names}: class {unknown[0]!r} not found (found: {', '.join(found) or 'none'})")
        samples = [s for s in samples if s.label in classes]
    else:
        classes = found
    if len(classes) < 2:
        raise DataError(f"{names}: needs at least two classes, found {len(classes)} ({', '.join(classes) or 'none'})")
    if near_duplicates:
        samples = group_near_duplicates(samples)
    if positive_class is not None and positive_class not in classes:
        if positive_class == DEFAULT_POSITIVE and len(classes) == 2:
            positive_class = None  # default not applicable: metrics use classes[1]
        else:
            raise DataError(f"`positive` {positive_class!r} is not one of the classes ({', '.join(classes)})")
    return Dataset(samples, classes, positive_class or classes[-1], layout, described)


def _samples_of(data: Path, where: Sequence[str], pooled: bool) -> tuple[list[Sample], str]:
    if not data.exists():
        raise DataError(f"{data}: no such file or folder")
    if data.is_file():
        if data.suffix.lower() != ".csv":
            raise DataError(f"{data}: `data` must be a folder or a manifest .csv file")
        if pooled:
            where = [w for w in where if _manifest_has(data, _parse_where(w)[0])]
        return _read_manifest(data, where), "manifest"
    if where and not pooled:
        raise DataError("`where` filters manifest rows; it needs a manifest CSV as `data`")
    if _is_paper_layout(data):
        samples, layout = _scan_paper_layout(data), "train-test-folders"
    else:
        samples, layout = _scan_class_folders(data, split=None), "class-folders"
    return [replace(s, source=data.name) for s in samples], layout


def _manifest_has(path: Path, column: str) -> bool:
    if not path.is_file():
        return False
    with open(path, newline="", encoding="utf-8-sig") as f:
        return column in (next(csv.reader(f), None) or [])


def _relabel(samples: list[Sample], rules: Sequence[str]) -> list[Sample]:
    """Apply ``[SOURCE:]OLD=NEW`` rules (see :func:`discover`)."""
    parsed = []
    for rule in rules:
        scope, _, change = rule.rpartition(":")
        old, sep, new = change.partition("=")
        if not sep or not old.strip() or not new.strip():
            raise DataError(f"`relabel` {rule!r}: expected [SOURCE:]OLD=NEW")
        parsed.append((scope.strip() or None, old.strip(), new.strip()))
    if not parsed:
        return samples
    sources = {s.source for s in samples}
    for scope, _, _ in parsed:
        if scope is not None and scope not in sources:
            raise DataError(f"`relabel`: no source {scope!r} in the data (sources: {', '.join(sorted(sources))})")
    out = []
    for s in samples:
        for scope, old, new in parsed:
            if s.label == old and scope in (None, s.source):
                s = replace(s, label=new)
                break
        out.append(s)
    return out


def group_near_duplicates(samples: list[Sample]) -> list[Sample]:
    """``samples`` with each near-duplicate cluster of the ungrouped ones in the group of its first member.
    Rows whose split the data gives are clustered only with rows given the same split (that split is the
    user's to keep)."""
    out = list(samples)
    for split in {s.split for s in samples}:
        ungrouped = [i for i, s in enumerate(samples) if not s.group_given and s.split == split]
        if len(ungrouped) < 2:
            continue
        first = near_duplicate_groups([samples[i].path for i in ungrouped])
        for i, j in zip(ungrouped, first):
            out[i] = replace(samples[i], group=samples[ungrouped[j]].group)
    return out


def _for_model(data, samples, found, classes, model_classes, positive_class, layout) -> Dataset:
    keep = list(classes or model_classes)
    for c in keep:
        if c not in model_classes:
            raise DataError(f"`classes` {c!r} is not a class of the model ({', '.join(model_classes)})")
    if classes:
        samples = [s for s in samples if s.label in keep]
    strays = sorted({s.label for s in samples} - set(model_classes))
    if strays:
        raise DataError(
            f"{data}: label {strays[0]!r} is not a class of the model ({', '.join(model_classes)}); "
            "pick rows with `classes` or `where`"
        )
    if not samples:
        raise DataError(
            f"{data}: no images of the model's classes ({', '.join(model_classes)}) (found: {', '.join(found)})"
        )
    if positive_class not in model_classes:
        if positive_class not in (None, "covid"):
            raise DataError(
                f"`positive` {positive_class!r} is not one of the model's classes ({', '.join(model_classes)})"
            )
        positive_class = model_classes[-1]
    return Dataset(samples, model_classes, positive_class, layout, str(data))


def _is_paper_layout(root: Path) -> bool:
    return (root / "train").is_dir() and (root / "test").is_dir()


def _scan_paper_layout(root: Path) -> list[Sample]:
    samples = _scan_class_folders(root / "train", split="train") + _scan_class_folders(root / "test", split="test")
    train_classes = {s.label for s in samples if s.split == "train"}
    test_classes = {s.label for s in samples if s.split == "test"}
    if train_classes != test_classes:
        raise DataError(
            f"{root}: train/ and test/ have different class folders "
            f"({', '.join(sorted(train_classes))} vs {', '.join(sorted(test_classes))})"
        )
    return samples


def _scan_class_folders(root: Path, split: str | None) -> list[Sample]:
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DataError(f"{root}: no class subfolders (expected {root}/<class>/<image files>)")
    samples = []
    for class_dir in class_dirs:
        files = sorted(_candidate_files(class_dir))
        if not files:
            raise DataError(f"{class_dir}: class folder is empty")
        # Folders carry no patient ids: each file is its own group.
        samples += [
            Sample(f, class_dir.name, f"{class_dir.name}/{f.relative_to(class_dir)}", split, group_given=False)
            for f in files
        ]
    return samples


def _candidate_files(folder: Path) -> Iterable[Path]:
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if not name.startswith(".") and name.lower() not in IGNORED_FILES:
                yield Path(dirpath) / name


def _read_manifest(csv_path: Path, where: Sequence[str]) -> list[Sample]:
    filters = [_parse_where(w) for w in where]
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            columns = reader.fieldnames or []
            for needed in ("path", "label") + tuple(col for col, _ in filters):
                if needed not in columns:
                    raise DataError(f"{csv_path}: missing column {needed!r} (columns: {', '.join(columns)})")
            rows = [r for r in reader if all(r[col] == value for col, value in filters)]
    except UnicodeDecodeError:
        raise DataError(f"{csv_path}: not UTF-8 text (save the manifest as UTF-8)") from None
    except csv.Error as e:
        raise DataError(f"{csv_path}: not a readable CSV ({e})") from None
    if not rows:
        raise DataError(f"{csv_path}: no rows" + (f" match {' and '.join(where)}" if where else ""))
    samples = []
    for line, row in enumerate(rows, start=2):
        if not (row.get("path") or "").strip() or not (row.get("label") or "").strip():
            raise DataError(f"{csv_path}: row {line}: needs both a path and a label")
        if "\0" in row["path"]:
            raise DataError(f"{csv_path}: row {line}: the path contains a NUL byte")
        split = (row.get("split") or "").strip().lower() or None
        if split is not None and split not in SPLITS:
            raise DataError(f"{csv_path}: row {line}: split {split!r} is not one of train, val, test")
        path = (csv_path.parent / row["path"]).resolve()
        group = (row.get("group") or "").strip()
        source = (row.get("source") or "").strip() or csv_path.parent.name
        samples.append(Sample(path, row["label"].strip(), group or row["path"], split, source, bool(group)))
    return samples


def _parse_where(expression: str) -> tuple[str, str]:
    column, sep, value = expression.partition("=")
    if not sep or not column:
        raise DataError(f"`where` {expression!r}: expected COLUMN=VALUE")
    return column.strip(), value.strip()


def label_indices(samples: Sequence[Sample], classes: Sequence[str]) -> np.ndarray:
    index = {c: i for i, c in enumerate(classes)}
    return np.array([index[s.label] for s in samples], dtype=np.int64)
