"""Giving every sample a split: train, validation and test, or cross-validation folds, never putting one patient
group in two splits; and a run's ``split.csv``, written and read back.

:func:`assign_splits` splits a :class:`~ccad.data.datasets.Dataset` as its layout says (the paper's
``train/``+``test/`` folders, a manifest's ``split`` column, or a stratified, patient-grouped 20% test and 16%
validation); :func:`cross_validation_folds` makes the folds of ``ccad cv``.
"""

from __future__ import annotations

import csv
import os
from dataclasses import replace
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ccad.data.datasets import Dataset, Sample
from ccad.errors import DataError
from ccad.io.files import write_text

TEST_FRACTION = 0.20
VAL_FRACTION = 0.16
PAPER_VAL_FRACTION = 0.20


def read_split_file(split_csv: str | os.PathLike) -> list[Sample]:
    """The samples of a run's ``split.csv`` (as :func:`write_split` wrote them)."""
    with open(split_csv, newline="", encoding="utf-8") as f:
        return [
            Sample(Path(r["path"]), r["label"], r["group"], r["split"], r.get("source") or "")
            for r in csv.DictReader(f)
        ]


def apply_split_file(dataset: Dataset, split_csv: str | os.PathLike) -> Dataset | None:
    """The dataset with the splits recorded in a run's ``split.csv``, if it lists every sample; else None."""
    split_csv = Path(split_csv)
    if not split_csv.is_file():
        return None
    recorded = {str(s.path.resolve()): s.split for s in read_split_file(split_csv)}
    splits = [recorded.get(str(s.path.resolve())) for s in dataset.samples]
    if None in splits:
        return None
    return replace(dataset, samples=[replace(s, split=sp) for s, sp in zip(dataset.samples, splits)])


def assign_splits(dataset: Dataset, seed: int = 0) -> Dataset:
    """Give every sample a split, keeping each patient group within one split.

    - No split given: stratified by class, grouped by patient, test 20%,
      validation 16%, training the rest.
    - The paper's ``train/``+``test/`` layout (or a manifest with only train and
      test): validation is 20% of ``train`` (the paper's ``validation_split=0.2``).
    - A manifest with train, val and test: used as given.
    - Pooled sources (several ``--data``) where some rows have a split and some do not: the split rows
      keep theirs; the others are split as in the first case, among themselves.
    """
    samples = dataset.samples
    given = {s.split for s in samples}
    if None in given and given != {None}:
        if dataset.layout != "pooled" and len({s.source for s in samples}) < 2:
            raise DataError(f"{dataset.source}: some rows have a split and some do not")
        # pooled sources, some split and some not: split the unsplit rows among themselves
        unsplit = [i for i, s in enumerate(samples) if s.split is None]
        test_idx = _grouped_holdout(samples, unsplit, TEST_FRACTION, seed)
        rest = [i for i in unsplit if i not in test_idx]
        val_idx = _grouped_holdout(samples, rest, VAL_FRACTION / (1 - TEST_FRACTION), seed + 1)
        splits = [
            s.split or ("test" if i in test_idx else "val" if i in val_idx else "train") for i, s in enumerate(samples)
        ]
    elif given == {None}:
        test_idx = _grouped_holdout(samples, range(len(samples)), TEST_FRACTION, seed)
        rest = [i for i in range(len(samples)) if i not in test_idx]
        val_idx = _grouped_holdout(samples, rest, VAL_FRACTION / (1 - TEST_FRACTION), seed + 1)
        splits = ["test" if i in test_idx else "val" if i in val_idx else "train" for i in range(len(samples))]
    elif "val" not in given:
        train = [i for i, s in enumerate(samples) if s.split == "train"]
        val_idx = _grouped_holdout(samples, train, PAPER_VAL_FRACTION, seed)
        splits = ["val" if i in val_idx else s.split for i, s in enumerate(samples)]
    else:
        splits = [s.split for s in samples]
    new_samples = [replace(s, split=split) for s, split in zip(samples, splits)]
    _check_groups_disjoint(new_samples, dataset.source)
    for split in ("train", "val"):
        labels = {s.label for s in new_samples if s.split == split}
        if len(labels) < 2:
            raise DataError(
                f"{dataset.source}: the {split} split has {len(labels)} class(es); every split needs them all"
            )
    return replace(dataset, samples=new_samples)


def cross_validation_folds(dataset: Dataset, folds: int = 5, seed: int = 0, group_by: str = "patient") -> list[Dataset]:
    """Copies of ``dataset`` for cross-validation; in copy i, fold i is ``test``, a grouped, stratified 16%
    of the rest is ``val`` and the remainder ``train``.

    ``group_by="patient"``: ``folds`` folds, stratified by class, no patient group in two folds
    (scikit-learn's ``StratifiedGroupKFold``). ``group_by="source"``: leave one source out, one fold per
    source (``folds`` is ignored): every image is scored by a model that never saw its source. A fold's
    test source may hold one class; its training side must hold them all.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    samples = dataset.samples
    groups = [s.group for s in samples]
    if group_by == "source":
        sources = sorted({s.source for s in samples})
        if len(sources) < 2:
            raise DataError(
                f"{dataset.source}: leave-one-source-out needs two or more sources, found "
                f"{len(sources)} ({', '.join(sources)}); pool manifests with several `data`"
            )
        splits_of = [
            (
                np.array([i for i, s in enumerate(samples) if s.source != src]),
                np.array([i for i, s in enumerate(samples) if s.source == src]),
            )
            for src in sources
        ]
        for src, (rest, _) in zip(sources, splits_of):
            missing = set(dataset.classes) - {samples[j].label for j in rest}
            if missing:
                raise DataError(
                    f"leave-one-source-out: without {src!r} the training data has no "
                    f"{', '.join(sorted(missing))} images; every fold must train on all classes"
                )
    elif group_by == "patient":
        if folds < 2:
            raise DataError(f"`folds` must be at least 2, got {folds}")
        if len(set(groups)) < folds:
            raise DataError(f"{dataset.source}: {len(set(groups))} patient groups cannot fill {folds} folds")
        splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
        splits_of = list(splitter.split(np.zeros(len(samples)), [s.label for s in samples], groups))
    else:
        raise DataError(f"`group_by` {group_by!r}: choose patient or source")
    out = []
    for i, (rest, test) in enumerate(splits_of):
        val = _grouped_holdout(samples, rest, VAL_FRACTION / (1 - 1 / max(folds, 2)), seed + 1 + i)
        test_set = set(test.tolist())
        splits = ["test" if j in test_set else "val" if j in val else "train" for j in range(len(samples))]
        fold = replace(dataset, samples=[replace(s, split=sp) for s, sp in zip(samples, splits)], bad_files=[])
        _check_groups_disjoint(fold.samples, dataset.source)
        out.append(fold)
    return out


def _grouped_holdout(samples: Sequence[Sample], indices: Iterable[int], fraction: float, seed: int) -> set[int]:
    """Indices of a stratified, group-disjoint holdout of about ``fraction`` of ``indices``."""
    from sklearn.model_selection import StratifiedGroupKFold

    indices = list(indices)
    n_splits = max(2, round(1 / fraction))
    groups = [samples[i].group for i in indices]
    if len(set(groups)) < n_splits:
        raise DataError(
            f"too few images or patient groups to split ({len(set(groups))} groups for a "
            f"{fraction:.0%} holdout); add images or give a split column"
        )
    labels = [samples[i].label for i in indices]
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    _, holdout = next(splitter.split(np.zeros(len(indices)), labels, groups))
    return {indices[j] for j in holdout}


def _check_groups_disjoint(samples: Sequence[Sample], source: str) -> None:
    seen: dict[str, str] = {}
    for s in samples:
        if seen.setdefault(s.group, s.split) != s.split:
            raise DataError(f"{source}: patient group {s.group!r} is in both {seen[s.group]} and {s.split}")


def write_split(dataset: Dataset, path: str | os.PathLike) -> None:
    """Write the split actually used as ``path,label,group,split`` (CSV)."""
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["path", "label", "group", "split", "source"])
    for s in dataset.samples:
        writer.writerow([s.path, s.label, s.group, s.split, s.source])
    write_text(path, buffer.getvalue())
