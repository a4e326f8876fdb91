"""The drift check: the population stability index against hand-computed values, and a state that turns."""

import math

import numpy as np
import pytest

from ccad.evaluation.drift import DRIFT, OK, WARMING_UP, DriftCheck, psi


def test_psi_against_a_hand_computed_value():
    reference = np.array([0.0] * 50 + [1.0] * 50)  # two bins, cut at the median (0.5): 50 / 50
    values = np.array([0.0] * 80 + [1.0] * 20)  # 80 / 20
    ref = [50.5 / 101, 50.5 / 101]  # each share smoothed by half an image
    now = [80.5 / 101, 20.5 / 101]
    expected = sum((n - r) * math.log(n / r) for n, r in zip(now, ref))
    assert psi(reference, values, bins=2) == pytest.approx(expected)
    assert expected == pytest.approx(0.297 * math.log(1.594) + 0.297 * math.log(1 / 0.406), abs=2e-3)  # 0.406
    assert psi(reference, reference, bins=2) == pytest.approx(0.0)


def test_the_state_stays_ok_in_distribution_and_turns_on_a_shift_and_back():
    rng = np.random.default_rng(0)
    reference_scores, reference_distances = rng.beta(2, 5, 400), rng.gamma(9, 4, 400)
    check = DriftCheck(reference_scores, reference_distances, window=200)
    changes = [check.add(s, d) for s, d in zip(rng.beta(2, 5, 199), rng.gamma(9, 4, 199))]
    assert check.state == WARMING_UP and not any(changes)
    changes = [check.add(s, d) for s, d in zip(rng.beta(2, 5, 1000), rng.gamma(9, 4, 1000))]
    assert changes[0] == OK and changes.count(None) == 999 and check.state == OK
    # the population changes: distances (features) move, scores do not
    changes = [check.add(s, d) for s, d in zip(rng.beta(2, 5, 200), rng.gamma(9, 6, 200))]
    assert DRIFT in changes and changes.index(DRIFT) < 200 and check.values["distance"] > 0.25
    # and comes back: ok only once the window is all in distribution again (hysteresis)
    changes = [check.add(s, d) for s, d in zip(rng.beta(2, 5, 400), rng.gamma(9, 4, 400))]
    assert changes.count(OK) == 1 and check.state == OK and changes.index(OK) > 100


def test_a_bundle_without_a_reference_has_no_drift_state():
    check = DriftCheck(None, None)
    assert not check.available and check.add(0.5, 10.0) is None and "no reference" in check.describe()


def _scores_with_counts(targets, window=20):
    """0/1 scores whose last ``window`` hold, in turn, each count of ones in ``targets`` (moved one a step)."""
    recent, scores = [0, 1] * (window // 2), [0, 1] * (window // 2)
    for target in targets:
        while sum(recent) != target:
            x = 1 if sum(recent) < target else 0
            recent = recent[1:] + [x]
            scores.append(x)
    return scores


def test_hysteresis_holds_the_drift_state_while_the_psi_wanders_between_off_and_on():
    # two bins cut at 0.5, the reference 50 / 50; a window of 20 holding k ones has, by hand,
    # PSI(k) = sum (now - 0.5) ln(now / 0.5), now = ((20 - k) + 0.5) / 21 and (k + 0.5) / 21:
    # PSI(16) = 0.371 (past on), PSI(15) = 0.247 and PSI(14) = 0.153 (between off and on), PSI(13) = 0.084 (under off)
    reference = np.array([0.0] * 50 + [1.0] * 50)
    scores = _scores_with_counts([16, 14, 16, 15, 16, 14, 16, 14, 12])
    distances = [i % 2 for i in range(len(scores))]  # always 10 of 20: PSI 0

    def run(**bounds):
        check = DriftCheck(reference, reference, window=20, bins=2, **bounds)
        changes = []
        for s, d in zip(scores, distances):
            change = check.add(float(s), float(d))
            if change:
                changes.append((change, round(check.values["score"], 3)))
        return changes

    assert run() == [(OK, 0.0), (DRIFT, 0.371), (OK, 0.084)]
    # the same stream does cross: without the band between off and on it turns at every crossing
    flips = run(on=0.25, off=0.25)
    assert flips[:3] == [(OK, 0.0), (DRIFT, 0.371), (OK, 0.247)] and len(flips) == 9


def test_describe_is_one_line_with_each_signals_psi():
    reference = np.array([0.0] * 50 + [1.0] * 50)
    check = DriftCheck(reference, reference, window=20, bins=2)
    for s, d in zip(_scores_with_counts([16]), [i % 2 for i in range(40)]):
        check.add(float(s), float(d))
    assert check.describe() == (
        "drift state drift over the last 20 images (score PSI 0.371, distance PSI 0.000; drift past 0.25)"
    )
    assert DriftCheck(None, reference).describe() == (
        "drift check unavailable: the model bundle has no reference distributions"
    )


def test_a_value_on_an_edge_counts_in_the_bin_above_and_an_empty_top_bin_is_kept():
    from ccad.evaluation.drift import Signal, shares

    # edges 0.5 and 0.7: bins (-inf, 0.5), [0.5, 0.7), [0.7, inf); each share smoothed by half a value
    assert shares([0.1, 0.5, 0.5], np.array([0.5, 0.7])) == pytest.approx(np.array([1.5, 2.5, 0.5]) / 4.5)
    signal = Signal.of(np.array([0.0, 0.25, 0.5, 0.75]), bins=2)  # one edge: the median, 0.375
    assert signal.bin(0.375) == 1 and signal.bin(0.3749) == 0
    # all values in the lower bin: PSI by hand, the reference's shares 2.5 / 5 each
    now, ref = np.array([4.5, 0.5]) / 5, np.array([0.5, 0.5])
    assert psi(np.array([0.0, 0.25, 0.5, 0.75]), [0.0, 0.1, 0.2, 0.3], bins=2) == pytest.approx(
        np.sum((now - ref) * np.log(now / ref))
    )


def test_the_psi_of_an_unequal_reference_by_hand():
    from ccad.evaluation.drift import Signal

    signal = Signal(np.array([0.5]), reference=np.array([0.8, 0.2]), counts=np.array([3, 7]))
    now = [3.5 / 11, 7.5 / 11]  # the window's shares, smoothed by half an image a bin
    expected = (now[0] - 0.8) * math.log(now[0] / 0.8) + (now[1] - 0.2) * math.log(now[1] / 0.2)
    assert signal.psi() == pytest.approx(expected) and expected == pytest.approx(1.0352, abs=1e-4)


def test_an_image_without_a_score_or_a_distance_is_not_counted():
    reference = np.array([0.0] * 50 + [1.0] * 50)
    check = DriftCheck(reference, reference, window=2, bins=2)
    assert [check.add(0.0, None), check.add(None, 1.0), check.add(None, None)] == [None] * 3
    assert check.state == WARMING_UP and check._signals is None  # nothing counted, nothing fitted yet
    assert check.add(0.0, 1.0) is None and check.add(1.0, 0.0) == OK  # the second image fills the window


def test_a_psi_equal_to_on_is_not_drift_and_one_equal_to_off_is_not_ok():
    from ccad.evaluation.drift import Signal

    reference = np.array([0.0] * 50 + [1.0] * 50)
    distances = [i % 2 for i in range(200)]

    def psi_of(k):  # the PSI of a window of 20 holding k ones, as the check computes it
        return Signal(np.array([0.5]), np.array([0.5, 0.5]), np.array([20 - k, k])).psi()

    def changes(**bounds):
        check, out = DriftCheck(reference, reference, window=20, bins=2, **bounds), []
        for s, d in zip(_scores_with_counts([16, 12]), distances):
            if check.add(float(s), float(d)):
                out.append((check.state, round(check.values["score"], 4)))
        return out

    assert changes(on=psi_of(16)) == [(OK, 0.0)]  # reaches on, never passes it
    assert changes(on=psi_of(15)) == [(OK, 0.0), (DRIFT, round(psi_of(16), 4)), (OK, round(psi_of(13), 4))]
    assert changes(off=psi_of(13)) == [(OK, 0.0), (DRIFT, round(psi_of(16), 4)), (OK, round(psi_of(12), 4))]
