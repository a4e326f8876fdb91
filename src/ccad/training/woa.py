"""The Whale Optimization Algorithm (Mirjalili & Lewis 2016, Advances in Engineering Software 95:51-67).

Written here, in ~30 lines of numpy, because the one maintained Python implementation (mealpy) pins
numpy <= 1.26 while the rest of the stack runs on numpy 2. It follows the paper's equations (2.1-2.8) with
random vectors r (mealpy draws one scalar per whale, which measured 2-3x worse on a 20-dimensional
sphere) and, as mealpy does, replaces a whale by its move only when the move is better. Checked against
known optima and random search in ``tests/training/test_woa.py``.
"""

from __future__ import annotations

from typing import Callable

import numpy as np


def whale_optimization(
    cost: Callable[[np.ndarray], float],
    dim: int,
    epochs: int,
    population: int,
    seed: int = 0,
    low: float = -1.0,
    high: float = 1.0,
) -> tuple[np.ndarray, float]:
    """(best position, its cost) after ``epochs`` generations of ``population`` whales in [low, high]^dim.

    Each generation ``a`` falls linearly from 2 to 0; A = 2a r - a and C = 2 r' with r, r' uniform vectors.
    With probability 1/2 a whale encircles the best whale (every |A_j| < 1) or swims toward a random whale,
    else it spirals toward the best (b = 1)."""
    if dim < 1 or epochs < 1 or population < 2:
        raise ValueError("whale_optimization needs dim >= 1, epochs >= 1 and population >= 2")
    rng = np.random.default_rng(seed)
    whales = rng.uniform(low, high, (population, dim))
    costs = np.array([cost(w) for w in whales])
    best = int(np.argmin(costs))
    best_position, best_cost = whales[best].copy(), float(costs[best])
    for epoch in range(epochs):
        a = 2.0 - 2.0 * epoch / max(epochs - 1, 1)
        for i in range(population):
            big_a = 2.0 * a * rng.random(dim) - a
            c = 2.0 * rng.random(dim)
            if rng.random() < 0.5:
                target = best_position if np.all(np.abs(big_a) < 1) else whales[rng.integers(population)]
                moved = target - big_a * np.abs(c * target - whales[i])
            else:
                spiral = rng.uniform(-1.0, 1.0)
                moved = np.abs(best_position - whales[i]) * np.exp(spiral) * np.cos(2 * np.pi * spiral) + best_position
            moved = np.clip(moved, low, high)
            moved_cost = float(cost(moved))
            if moved_cost < costs[i]:
                whales[i], costs[i] = moved, moved_cost
                if moved_cost < best_cost:
                    best_position, best_cost = moved.copy(), moved_cost
    return best_position, best_cost
