"""The out-of-distribution guard: Mahalanobis distance under Ledoit-Wolf shrinkage, a cut-off from validation."""

import numpy as np
import pytest
from sklearn.covariance import LedoitWolf

from ccad.errors import ModelError
from ccad.models.ood import OUT_OF_DISTRIBUTION_TEXT, OodGuard, fit_ood_guard, screen


@pytest.fixture(scope="module")
def features():
    rng = np.random.default_rng(0)
    scale = np.linspace(0.5, 3.0, 40)
    return rng.normal(size=(120, 40)) * scale, rng.normal(size=(200, 40)) * scale


def test_distance_equals_scikit_learns_mahalanobis(features):
    train, val = features
    guard = fit_ood_guard(train, val)
    reference = LedoitWolf().fit(train)
    assert np.allclose(guard.distance(val) ** 2, reference.mahalanobis(val), rtol=1e-6)
    assert guard.distance(val[0]) == pytest.approx(guard.distance(val[:1])[0])


def test_more_dimensions_than_images_is_exact_too():
    rng = np.random.default_rng(1)
    train, val = rng.normal(size=(15, 200)), rng.normal(size=(10, 200))
    guard = fit_ood_guard(train, val)
    assert guard.vectors.shape[0] <= 14  # stored compactly: one fewer direction than images at most
    assert np.allclose(guard.distance(val) ** 2, LedoitWolf().fit(train).mahalanobis(val), rtol=1e-6)


def test_cutoff_keeps_95_percent_of_validation_and_flags_the_far(features):
    train, val = features
    guard = fit_ood_guard(train, val)
    assert np.mean(guard.distance(val) <= guard.cutoff) == pytest.approx(0.95, abs=0.01)
    far = val[:10] + 25.0
    assert np.all(guard.distance(far) > guard.cutoff)


def test_save_and_load_round_trip(tmp_path, features):
    train, val = features
    guard = fit_ood_guard(train, val)
    guard.save(tmp_path / "ood.npz")
    loaded = OodGuard.load(tmp_path / "ood.npz")
    assert loaded.cutoff == pytest.approx(guard.cutoff)
    assert np.allclose(loaded.distance(val), guard.distance(val), rtol=1e-4)
    (tmp_path / "bad.npz").write_bytes(b"nonsense")
    with pytest.raises(ModelError, match="not a readable out-of-distribution guard"):
        OodGuard.load(tmp_path / "bad.npz")


def test_screen_combines_the_guard_and_the_lung_check(features):
    train, val = features
    guard = fit_ood_guard(train, val)
    near = screen(guard, train.mean(axis=0))
    assert near["in_distribution"] is True and "warning" not in near and near["lung_qc"] == []
    far = screen(guard, train.mean(axis=0) + 50)
    assert far["in_distribution"] is False and OUT_OF_DISTRIBUTION_TEXT in far["warning"]
    no_lungs = screen(guard, train.mean(axis=0), ("no_lungs",))
    assert no_lungs["in_distribution"] is False and "no lungs" in no_lungs["warning"]
    caution = screen(guard, train.mean(axis=0), ("uncertain",))
    assert caution["in_distribution"] is True and caution["lung_qc"] == ["uncertain"]
    assert screen(None, train.mean(axis=0))["in_distribution"] is None
