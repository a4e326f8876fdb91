"""Fitting the guard through a screener: the foreign inputs made from the films, prepared as the model prepares
any input."""

import numpy as np
from helpers import fake_screener
from PIL import Image

from ccad.screening import guard as screening_guard


def _films(folder, values):
    """One 32 x 24 PNG a value: a gentle ramp around it (not blank, or it is refused as not an X-ray)."""
    paths = []
    for i, v in enumerate(values):
        ramp = v + np.tile(np.array([-1, 1] * 12), (32, 1))
        paths.append(folder / f"film{i}.png")
        Image.fromarray(ramp.astype(np.uint8)).save(paths[-1])
    return [str(p) for p in paths]


def test_foreign_features_are_four_transforms_of_each_chosen_film_then_the_screens(tmp_path, monkeypatch):
    """The fake screener's pooled features are (mean, 0.25, 1 - mean) of its prepared image, the gray image's
    mean: so each foreign input's row says which film it came from, and how."""
    screener = fake_screener()
    values = [40, 80, 120, 160, 200]
    films = _films(tmp_path, values)
    monkeypatch.setattr(screening_guard, "MAX_FILMS", 3)
    features = screening_guard.foreign_features(screener, films, seed=7)
    assert features.shape == (3 * 4 + 20, 3)  # at least 20 screens
    assert np.allclose(features[:, 1], 0.25) and np.allclose(features[:, 0] + features[:, 2], 1.0)
    means = features[:12, 0].reshape(3, 4)  # per film: rotated 90, rotated 180, inverted, corner crop
    chosen = sorted(np.random.default_rng(7).choice(5, 3, replace=False).tolist())
    expected = np.array([values[i] / 255 for i in chosen])
    assert np.allclose(means[:, 0], expected, atol=1e-6) and np.allclose(means[:, 1], expected, atol=1e-6)
    assert np.allclose(means[:, 2], 1 - expected, atol=1e-6)
    assert np.allclose(means[:, 3], expected, atol=1 / 255)  # a corner of the ramp
    assert len(set(np.round(features[12:, 0], 5))) == 20  # 20 different screens
    again = screening_guard.foreign_features(screener, films, seed=7)
    assert np.array_equal(features, again)


def test_fit_guard_flags_the_foreign_made_from_the_films_and_keeps_99_percent_of_the_held_back(tmp_path):
    screener = fake_screener()
    rng = np.random.default_rng(0)
    values = rng.integers(20, 90, size=60)  # dark films: inverted, they are light
    films = _films(tmp_path, values)
    pooled = np.stack([p.pooled for p in screener.screen(films)])
    guard = screening_guard.fit_guard(screener, pooled[:40], pooled[40:], films[:40], seed=0)
    assert guard.kind == "frontal-chest head" and guard.keep == 0.99
    assert np.mean(guard.distance(pooled[40:]) <= guard.cutoff) >= 0.95
    inverted = np.stack([[1 - v / 255, 0.25, v / 255] for v in values[40:]])
    assert np.all(guard.distance(inverted) > guard.cutoff)
