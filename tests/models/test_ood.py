"""The out-of-distribution guard: a logistic head telling films from foreign inputs, its cut-off from validation
films; and the earlier Mahalanobis guard, still read from older bundles."""

import numpy as np
import pytest
from sklearn.covariance import LedoitWolf
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from ccad.errors import ModelError
from ccad.models.ood import (
    OUT_OF_DISTRIBUTION_TEXT,
    MahalanobisGuard,
    fit_mahalanobis_guard,
    fit_ood_guard,
    load_guard,
    screen,
)


@pytest.fixture(scope="module")
def features():
    """Films, foreign inputs (shifted along the first two features), and held-back films; 40 features with
    unequal scales and one constant."""
    rng = np.random.default_rng(0)
    scale = np.linspace(0.5, 3.0, 40)
    scale[-1] = 0.0
    films, cut = rng.normal(size=(300, 40)) * scale, rng.normal(size=(400, 40)) * scale
    foreign = rng.normal(size=(200, 40)) * scale
    foreign[:, :2] += 4.0
    return films, foreign, cut


def test_the_score_is_minus_log_p_film_of_scikit_learns_standardized_logistic_head(features):
    films, foreign, cut = features
    guard = fit_ood_guard(films, foreign, cut)
    x, y = np.concatenate([films, foreign]), np.r_[np.zeros(300), np.ones(200)]
    reference = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=3000, class_weight="balanced"))
    reference.fit(x, y)
    assert np.allclose(guard.distance(cut), -np.log(reference.predict_proba(cut)[:, 0]), rtol=1e-4, atol=1e-8)
    assert guard.distance(cut[0]) == pytest.approx(guard.distance(cut[:1])[0])
    assert isinstance(guard.distance(cut[0]), float) and guard.distance(cut).min() >= 0


def test_the_cutoff_keeps_99_percent_of_the_held_back_films_and_flags_the_foreign(features):
    films, foreign, cut = features
    guard = fit_ood_guard(films, foreign, cut)
    assert np.mean(guard.distance(cut) <= guard.cutoff) == pytest.approx(0.99, abs=0.003)
    assert guard.keep == 0.99 and np.array_equal(guard.reference_distances, guard.distance(cut))
    rng = np.random.default_rng(1)
    unseen = rng.normal(size=(100, 40)) * np.linspace(0.5, 3.0, 40)
    unseen[:, :2] += 4.0
    assert np.mean(guard.distance(unseen) > guard.cutoff) > 0.95
    assert fit_ood_guard(films, foreign, cut, keep=0.9).cutoff < guard.cutoff


def test_too_few_films_or_no_foreign_input_is_a_clear_error(features):
    films, foreign, cut = features
    for args in ((films[:1], foreign, cut), (films, foreign[:0], cut), (films, foreign, cut[:0])):
        with pytest.raises(ModelError, match="needs 2 training films, 1 foreign input and 1 validation film"):
            fit_ood_guard(*args)


def test_both_kinds_save_and_load_as_themselves(tmp_path, features):
    films, foreign, cut = features
    for guard in (fit_ood_guard(films, foreign, cut), fit_mahalanobis_guard(films, cut)):
        guard.save(tmp_path / "ood.npz")
        loaded = load_guard(tmp_path / "ood.npz")
        assert type(loaded) is type(guard) and loaded.keep == guard.keep
        assert loaded.cutoff == pytest.approx(guard.cutoff)
        assert np.allclose(loaded.distance(cut), guard.distance(cut), rtol=1e-4)
        assert np.allclose(loaded.reference_distances, guard.reference_distances, rtol=1e-6)
        assert loaded.reference_scores is None
    (tmp_path / "bad.npz").write_bytes(b"nonsense")
    with pytest.raises(ModelError, match="not a readable out-of-distribution guard"):
        load_guard(tmp_path / "bad.npz")


def test_each_kind_describes_itself(features):
    films, foreign, cut = features
    head = fit_ood_guard(films, foreign, cut).describe()
    assert head["kind"] == "frontal-chest head" and head["score"].startswith("-ln p(a frontal chest film)")
    assert head["cutoff_rule"] == "keeps 99% of the validation split" and head["dimensions"] == 40
    assert head["drift_reference"] == {"images": 400, "scores": False}
    old = fit_mahalanobis_guard(films, cut).describe()
    assert old["kind"] == "Mahalanobis distance" and old["cutoff_rule"] == "keeps 95% of the validation split"


def test_the_earlier_guards_distance_equals_scikit_learns_mahalanobis(features):
    films, _, cut = features
    guard = fit_mahalanobis_guard(films[:, :-1], cut[:, :-1])
    assert isinstance(guard, MahalanobisGuard)
    assert np.allclose(guard.distance(cut[:, :-1]) ** 2, LedoitWolf().fit(films[:, :-1]).mahalanobis(cut[:, :-1]))
    assert np.mean(guard.distance(cut[:, :-1]) <= guard.cutoff) == pytest.approx(0.95, abs=0.01)
    rng = np.random.default_rng(1)
    train, val = rng.normal(size=(15, 200)), rng.normal(size=(10, 200))
    few = fit_mahalanobis_guard(train, val)
    assert few.vectors.shape[0] <= 14  # stored compactly: one fewer direction than images at most
    assert np.allclose(few.distance(val) ** 2, LedoitWolf().fit(train).mahalanobis(val), rtol=1e-6)


def test_screen_says_what_the_flag_means_and_combines_the_lung_check(features):
    films, foreign, cut = features
    guard = fit_ood_guard(films, foreign, cut)
    assert OUT_OF_DISTRIBUTION_TEXT.startswith("not a frontal chest X-ray like those the model was built for")
    near = screen(guard, films.mean(axis=0))
    assert near["in_distribution"] is True and "warning" not in near and near["lung_qc"] == []
    assert near["ood_cutoff"] == float(f"{guard.cutoff:.4g}") and near["ood_distance"] <= near["ood_cutoff"]
    # to 4 significant digits, not 3 decimals (which made 87% of the shipped guard's validation films 0.000)
    distance = guard.distance(films.mean(axis=0))
    assert 0 < distance < 0.05 and near["ood_distance"] == float(f"{distance:.4g}") != round(distance, 3)
    far = screen(guard, foreign.mean(axis=0))
    assert far["in_distribution"] is False
    assert far["warning"] == f"{OUT_OF_DISTRIBUTION_TEXT} (image unlike a frontal chest X-ray)"
    old = screen(fit_mahalanobis_guard(films, cut), films.mean(axis=0) + 50)
    assert old["warning"] == f"{OUT_OF_DISTRIBUTION_TEXT} (image features unlike the training images)"
    no_lungs = screen(guard, films.mean(axis=0), ("no_lungs",))
    assert no_lungs["in_distribution"] is False and no_lungs["warning"].endswith("(lung check: no lungs)")
    caution = screen(guard, films.mean(axis=0), ("uncertain",))
    assert caution["in_distribution"] is True and caution["lung_qc"] == ["uncertain"]
    assert screen(None, films.mean(axis=0))["in_distribution"] is None
