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
