"""Thresholds and temperature fitted on validation data, applied the same way everywhere."""

import numpy as np
import pytest

from ccad.errors import ConfigError
from ccad.models.decision import DecisionRule, apply_temperature, choose_threshold, fit_decision, fit_temperature


def test_youden_threshold_is_the_best_cut_on_hand_made_scores():
    truth = np.array([0, 0, 0, 0, 1, 1, 1, 1], bool)
    score = np.array([0.1, 0.2, 0.3, 0.6, 0.4, 0.7, 0.8, 0.9])
    # cut at 0.7: sens 3/4, spec 4/4 -> J 0.75; cut at 0.4: sens 4/4, spec 3/4 -> J 0.75; first max kept
    threshold = choose_threshold(truth, score, "youden")
    predicted = score >= threshold
    sens, spec = predicted[truth].mean(), (~predicted[~truth]).mean()
    assert sens + spec - 1 == pytest.approx(0.75)


def test_specificity_rule_keeps_the_specificity_on_validation():
    rng = np.random.default_rng(0)
    truth = np.r_[np.zeros(200, bool), np.ones(50, bool)]
    score = np.r_[rng.normal(0, 1, 200), rng.normal(1.5, 1, 50)]
    t95 = choose_threshold(truth, score, "specificity-95")
    t90 = choose_threshold(truth, score, "specificity-90")
    assert (score[~truth] < t95).mean() >= 0.95
    assert (score[~truth] < t90).mean() >= 0.90
    assert t90 <= t95


def test_sensitivity_rule_is_the_highest_threshold_that_finds_the_share_asked():
    truth = np.array([1] * 10 + [0] * 10, bool)
    score = np.r_[np.linspace(0.1, 1.0, 10), np.linspace(0.05, 0.5, 10)]
    threshold = choose_threshold(truth, score, "sensitivity-90")
    assert (score[truth] >= threshold).mean() == pytest.approx(0.9)  # 9 of 10 found...
    assert 0.1 < threshold <= 0.2  # ...and not one more: the 10th (0.1) is below, the 9th (0.2) is above


def test_each_rule_gives_the_threshold_worked_out_by_hand():
    """Positives 0.1, 0.2, ..., 1.0; negatives 0.05, 0.10, ..., 0.50. Every rule puts its threshold midway between
    the score it must keep and the next lower distinct score."""
    truth = np.r_[np.ones(10, bool), np.zeros(10, bool)]
    score = np.r_[np.linspace(0.1, 1.0, 10), np.linspace(0.05, 0.5, 10)]
    # 9 of 10 positives reach 0.2; the next lower score is a negative's 0.15
    assert choose_threshold(truth, score, "sensitivity-90") == pytest.approx(0.175)
    # 95% of 10 positives is 10: every positive, down to 0.1, and the next lower score is 0.05
    assert choose_threshold(truth, score, "sensitivity-95") == pytest.approx(0.075)
    # at most one negative (0.50) at or above the threshold: 0.5, then 0.45 below it
    assert choose_threshold(truth, score, "specificity-90") == pytest.approx(0.475)
    # 95% of 10 negatives is all 10: the lowest cut with no negative at or above it is 0.6, then 0.5 below it
    assert choose_threshold(truth, score, "specificity-95") == pytest.approx(0.55)
    # Youden: the cut with the largest sensitivity + specificity - 1 over every distinct score
    j = {t: (score[truth] >= t).mean() + (score[~truth] < t).mean() - 1 for t in np.unique(score)}
    best = max(j, key=j.get)
    youden = choose_threshold(truth, score, "youden")
    assert (score[truth] >= youden).mean() + (score[~truth] < youden).mean() - 1 == pytest.approx(j[best])
    assert choose_threshold(truth, score, "0.3") == 0.3 and choose_threshold(truth, score, "argmax") is None


def test_a_specificity_kept_only_above_every_score_gives_a_threshold_above_them():
    """Eight negatives, the top score a negative's: any cut at or under it loses 1/8 > 10% of them, so the
    lowest threshold keeping 90% lies above the top score: midway to 1 (or just past a top score of 1)."""
    truth = np.array([False] * 8 + [True] * 4)
    score = np.array([0.9, 0.1, 0.2, 0.3, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8])
    threshold = choose_threshold(truth, score, "specificity-90")
    assert threshold == pytest.approx(0.95) and (score[~truth] < threshold).all()
    score[0] = 1.0
    above = choose_threshold(truth, score, "specificity-90")
    assert above > 1.0 and above == np.nextafter(1.0, 2.0)


def test_a_probability_equal_to_the_threshold_is_positive():
    rule = DecisionRule(positive_index=0, threshold=0.25)
    p = np.array([[0.25, 0.75], [np.nextafter(0.25, 0), 1 - np.nextafter(0.25, 0)]])
    assert rule.predict(p).tolist() == [0, 1]  # ">=" (the card says "p >= threshold"), never ">"


def test_threshold_rules_refuse_bad_input():
    with pytest.raises(ConfigError, match="both"):
        choose_threshold(np.ones(5, bool), np.linspace(0, 1, 5), "youden")
    with pytest.raises(ConfigError, match="number"):
        choose_threshold(np.array([0, 1], bool), np.array([0.2, 0.8]), "sometimes")
    assert choose_threshold(np.array([0, 1], bool), np.array([0.2, 0.8]), "0.3") == 0.3
    assert choose_threshold(np.array([0, 1], bool), np.array([0.2, 0.8]), "argmax") is None


def test_temperature_scaling_recovers_a_known_temperature_and_keeps_the_ranking():
    rng = np.random.default_rng(1)
    n = 4000
    y = rng.integers(0, 2, n)
    true_logits = np.c_[np.zeros(n), (2 * y - 1) * 1.0 + rng.normal(0, 1, n)]
    calibrated = np.exp(true_logits) / np.exp(true_logits).sum(1, keepdims=True)
    # Labels drawn from the calibrated probabilities, then an over-confident model (logits x 3)
    y = (rng.random(n) < calibrated[:, 1]).astype(int)
    overconfident = apply_temperature(calibrated, 1 / 3)
    temperature = fit_temperature(y, overconfident)
    assert temperature == pytest.approx(3.0, rel=0.15)
    rescaled = apply_temperature(overconfident, temperature)
    assert np.array_equal(np.argsort(rescaled[:, 1]), np.argsort(overconfident[:, 1]))
    assert np.allclose(rescaled.sum(1), 1.0)


def test_decision_rule_predicts_positive_above_threshold_else_best_other_class():
    rule = DecisionRule(positive_index=0, threshold=0.3)
    p = np.array(
        [
            [0.35, 0.60, 0.05],  # covid over threshold although not the argmax
            [0.25, 0.15, 0.60],  # below: best of the others (pneumonia)
            [0.29, 0.70, 0.01],
        ]
    )
    assert rule.predict(p).tolist() == [0, 2, 1]
    assert DecisionRule(positive_index=0).predict(p).tolist() == [1, 2, 1]


def test_rule_round_trips_through_metadata_and_defaults_to_argmax():
    y = np.array([0, 0, 1, 1, 0, 1])
    p1 = np.array([0.9, 0.6, 0.4, 0.2, 0.55, 0.35])  # p(covid)
    rule = fit_decision(y, np.c_[p1, 1 - p1], ["covid", "normal"], "covid", "youden", "temperature")
    assert rule.fitted_on.endswith("(n=6)") and rule.temperature > 0
    restored = DecisionRule.from_meta({"decision": rule.to_dict()}, ["covid", "normal"], "covid")
    assert restored == rule
    assert DecisionRule.from_meta({}, ["normal", "covid"], "covid") == DecisionRule(positive_index=1)
