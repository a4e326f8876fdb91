import numpy as np
import pytest

from ccad.evaluation.metrics import binary_metrics, bootstrap_intervals, compute_metrics

CLASSES = ["covid", "normal"]


def test_binary_metrics_match_hand_computation():
    # 10 images: 4 covid (index 0), 6 normal. Predictions: TP=3, FN=1, TN=5, FP=1.
    y_true = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
    p_covid = np.array([0.9, 0.8, 0.7, 0.4, 0.6, 0.3, 0.2, 0.1, 0.1, 0.05])
    probs = np.stack([p_covid, 1 - p_covid], axis=1)
    m = compute_metrics(y_true, probs, CLASSES, "covid", n_resamples=200)
    assert m["confusion_matrix"] == [[3, 1], [1, 5]]
    assert m["accuracy"]["value"] == pytest.approx(8 / 10)
    assert m["sensitivity"]["value"] == pytest.approx(3 / 4)
    assert m["specificity"]["value"] == pytest.approx(5 / 6)
    assert m["precision"]["value"] == pytest.approx(3 / 4)
    assert m["f1"]["value"] == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))
    # AUC by hand: pairs (covid, normal) where covid scores higher; 0.4 loses to 0.6 only -> 23/24
    assert m["auc"]["value"] == pytest.approx(23 / 24)
    for name in ("accuracy", "sensitivity", "specificity", "auc"):
        lo, hi = m[name]["ci95"]
        assert lo <= m[name]["value"] <= hi and lo < hi


def test_intervals_narrow_with_more_data():
    rng = np.random.default_rng(0)

    def width(n):
        y = rng.integers(0, 2, n)
        p = np.clip(0.7 * (y == 0) + rng.normal(0.15, 0.2, n), 0, 1)
        m = compute_metrics(y, np.stack([p, 1 - p], 1), CLASSES, "covid", n_resamples=300)
        return m["accuracy"]["ci95"][1] - m["accuracy"]["ci95"][0]

    assert width(1000) < width(40)


def test_grouped_bootstrap_moves_groups_together():
    # two groups: all values in group a are 1, in b are 0. Resampling groups gives means in {0, 0.5, 1} only.
    values = np.array([1, 1, 1, 0, 0, 0], float)
    seen = set()

    def stat(idx):
        seen.add(round(values[idx].mean(), 6))
        return {"mean": values[idx].mean()}

    bootstrap_intervals(stat, 6, groups=["a", "a", "a", "b", "b", "b"], n_resamples=100)
    assert seen <= {0.0, 0.5, 1.0}


def test_single_class_set_gives_sensitivity_and_says_auc_needs_both():
    y_true = np.zeros(20, int)
    p = np.linspace(0.2, 0.9, 20)
    m = compute_metrics(y_true, np.stack([p, 1 - p], 1), CLASSES, "covid", n_resamples=100)
    assert m["sensitivity"]["value"] == pytest.approx(np.mean(p > 0.5))
    assert m["sensitivity"]["ci95"] is not None
    assert m["auc"]["value"] is None and m["specificity"]["value"] is None
    assert any("AUC needs" in n for n in m["notes"])


def test_three_classes_add_macro_f1_and_per_class():
    y = np.array([0, 1, 2, 0, 1, 2])
    probs = np.eye(3)[[0, 1, 2, 0, 2, 1]]
    m = compute_metrics(y, probs, ["covid", "normal", "pneumonia"], "covid", n_resamples=50)
    assert m["accuracy"]["value"] == pytest.approx(4 / 6)
    assert m["sensitivity"]["value"] == 1.0
    assert m["macro_f1"] == pytest.approx((1 + 0.5 + 0.5) / 3)
    assert set(m["per_class"]) == {"covid", "normal", "pneumonia"}


def test_binary_metrics_with_no_predicted_positive():
    truth = np.array([True, False])
    m = binary_metrics(truth, np.array([False, False]), np.array([0.4, 0.1]))
    assert m["precision"] is None and m["sensitivity"] == 0.0


def test_balanced_class_weights():
    from ccad.training.fit import class_weights as _class_weights

    weights = _class_weights(np.array([0, 1, 1, 1]), 2, "balanced")
    assert weights == pytest.approx({0: 2.0, 1: 2 / 3})
    assert _class_weights(np.array([0, 1]), 2, None) is None


def test_ece_brier_and_operating_points_by_hand():
    from ccad.evaluation.metrics import calibration_metrics, expected_calibration_error

    truth = np.array([1, 1, 0, 0, 1, 0, 0, 0, 0, 0], bool)
    p = np.array([0.95, 0.85, 0.85, 0.15, 0.15, 0.15, 0.05, 0.05, 0.05, 0.05])
    # bins: [0.9,1]: {0.95} rate 1 -> |1-0.95|=0.05 x 0.1; [0.8,0.9): {0.85,0.85} rate .5 -> 0.35 x 0.2;
    # [0.1,0.2): {0.15 x3} rate 1/3 -> |1/3-0.15| x 0.3; [0,0.1): {0.05 x4} rate 0 -> 0.05 x 0.4
    expected = 0.1 * 0.05 + 0.2 * 0.35 + 0.3 * (1 / 3 - 0.15) + 0.4 * 0.05
    assert expected_calibration_error(truth, p) == pytest.approx(expected)
    m = calibration_metrics(truth, p)
    assert m["brier"] == pytest.approx(np.mean((p - truth) ** 2))
    # 7 negatives: 90% specificity allows 0 false positives (1/7 > 0.1) -> only 0.95 is called: 1/3 sensitivity
    assert m["sensitivity_at_90_specificity"] == pytest.approx(1 / 3)
    assert m["sensitivity_at_95_specificity"] == pytest.approx(1 / 3)


def test_calibration_metrics_come_with_intervals():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 200)
    p = np.clip(0.8 * (y == 0) + rng.normal(0.1, 0.15, 200), 0, 1)
    m = compute_metrics(y, np.stack([p, 1 - p], 1), CLASSES, "covid", n_resamples=200)
    for name in ("ece", "brier", "sensitivity_at_90_specificity", "sensitivity_at_95_specificity"):
        lo, hi = m[name]["ci95"]
        assert lo <= m[name]["value"] <= hi
