"""The hand-written Whale Optimization Algorithm finds known optima and is reproducible."""

import numpy as np
import pytest

from ccad.training.woa import whale_optimization


def test_woa_finds_the_minimum_of_a_shifted_sphere():
    centre = np.array([0.3, -0.5, 0.7, 0.1, -0.2])
    position, cost = whale_optimization(lambda x: float(np.sum((x - centre) ** 2)), dim=5, epochs=60, population=20)
    assert cost < 1e-3 and np.allclose(position, centre, atol=0.05)


def test_woa_beats_random_search_with_the_same_budget():
    centre = np.linspace(-0.8, 0.8, 20)
    sphere = lambda x: float(np.sum((x - centre) ** 2))  # noqa: E731
    _, woa = whale_optimization(sphere, dim=20, epochs=30, population=16, seed=1)
    draws = np.random.default_rng(1).uniform(-1, 1, (16 * 31, 20))
    random_best = min(sphere(x) for x in draws)
    assert woa < random_best / 2, (woa, random_best)


def test_woa_is_reproducible_and_stays_in_bounds():
    seen = []

    def cost(x):
        seen.append(x.copy())
        return float(np.sum(x))

    a = whale_optimization(cost, dim=4, epochs=5, population=6, seed=7)
    b = whale_optimization(lambda x: float(np.sum(x)), dim=4, epochs=5, population=6, seed=7)
    assert np.array_equal(a[0], b[0]) and a[1] == b[1]
    assert all(np.all((-1 <= x) & (x <= 1)) for x in seen)
    with pytest.raises(ValueError):
        whale_optimization(cost, dim=4, epochs=5, population=1)
