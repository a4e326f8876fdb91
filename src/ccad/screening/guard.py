"""Fitting the out-of-distribution guard through a :class:`~ccad.screening.Screener`: films in, a guard out.

    >>> guard = fit_guard(screener, film_features, cut_features, film_paths, seed=0)   # doctest: +SKIP

``ccad train`` (on its training split), ``ccad guard`` (a bundle's guard refitted) and ``ccad calibrate
--unlabelled`` (on a site's own films) all fit it here: the foreign inputs are made from up to
:data:`MAX_FILMS` of the films (:func:`ccad.data.foreign.foreign_images`), prepared as the model prepares any
input, and their pooled features set against the films' own.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import numpy as np

from ccad.data.foreign import foreign_images
from ccad.io.images import decode_workers
from ccad.models.ood import OodGuard, fit_ood_guard
from ccad.screening.reader import Source
from ccad.screening.screener import Screener

#: Films the foreign inputs are made from (each gives four; a third as many screens of text are added).
MAX_FILMS = 300
_CHUNK = 64


def foreign_features(screener: Screener, films: Sequence[Source], seed: int) -> np.ndarray:
    """(N, d) pooled features of the foreign inputs made from up to :data:`MAX_FILMS` of ``films`` (drawn with
    ``seed``): each turned by 90 and 180 degrees, inverted and cropped to a corner, and screens of text."""
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(len(films), min(MAX_FILMS, len(films)), replace=False).tolist())
    grays = [screener.decode(films[i]) for i in chosen]
    images = (image for _, image in foreign_images(grays, max(20, len(grays) // 3), seed))
    out = []
    with ThreadPoolExecutor(decode_workers(), thread_name_prefix="ccad-guard") as pool:
        while chunk := [image for _, image in zip(range(_CHUNK), images)]:
            prepared = list(pool.map(screener.prepare, chunk))
            out.append(screener.predictor.pooled_features(np.stack([p.image for p in prepared])))
    return np.concatenate(out)


def fit_guard(screener: Screener, films: np.ndarray, cut: np.ndarray, sources: Sequence[Source], seed: int) -> OodGuard:
    """The frontal-chest guard: ``films`` (the training films' pooled features) against the foreign inputs
    made from ``sources`` (those films' files), the cut-off keeping 99% of ``cut`` (held-back films' features)."""
    return fit_ood_guard(films, foreign_features(screener, sources, seed), cut)
