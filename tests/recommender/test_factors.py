"""The ALS factors: exact first sweep, conjugate-gradient warm sweeps, sweeps per fit."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from recommender import (
    Fold,
    KMeansKNN,
    KMeansKNNConfig,
    Ratings,
    clear_component_cache,
    factors,
    knn,
)
from recommender.config import unflatten
from recommender.factors import _conjugate_gradient, _solve_side, fit_factors
from recommender.neighbors import rated_lists


def _problem(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    users, items = rng.integers(0, 60, 900), rng.integers(0, 40, 900)
    pairs = np.unique(np.column_stack([users, items]), axis=0)
    return pairs[:, 0], pairs[:, 1], rng.normal(0.0, 1.0, len(pairs))


def test_conjugate_gradient_solves_small_systems_in_as_many_steps_as_unknowns(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rng = np.random.default_rng(1)
    a = rng.normal(size=(5, 3, 3))
    gram = a @ a.transpose(0, 2, 1) + np.eye(3)
    target = rng.normal(size=(5, 3))
    exact = np.linalg.solve(gram, target[:, :, None])[:, :, 0]
    monkeypatch.setattr(factors, "CG_STEPS", 3)  # exact in n steps for n unknowns
    np.testing.assert_allclose(_conjugate_gradient(gram, target, np.zeros((5, 3))), exact,
                               atol=1e-9)  # fmt: skip
    # a start at the solution stays there (no division by a zero curvature)
    np.testing.assert_allclose(_conjugate_gradient(gram, target, exact), exact, atol=1e-12)


def test_a_warm_sweep_lands_near_the_exact_ridge_solution() -> None:
    users, items, values = _problem()
    lists = rated_lists(users, items, values, 60, 40)
    fixed = np.random.default_rng(2).normal(0.0, 0.3, (40, 8))
    exact = _solve_side(lists, fixed, 0.1)
    start = exact + np.random.default_rng(3).normal(0.0, 0.01, exact.shape)
    warm = _solve_side(lists, fixed, 0.1, start)
    assert np.abs(warm - exact).max() < 0.2 * np.abs(start - exact).max()


def test_factors_with_cg_sweeps_fit_the_residuals_as_the_exact_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    users, items, values = _problem(4)
    cg = fit_factors(users, items, values, (60, 40), 6, 0.1, 12)
    monkeypatch.setattr(factors, "CG_STEPS", 6)  # as many steps as factors: exact sweeps
    exact = fit_factors(users, items, values, (60, 40), 6, 0.1, 12)

    def error(found: tuple[np.ndarray, np.ndarray]) -> float:
        return float(np.sqrt(np.mean(((found[0][users] * found[1][items]).sum(1) - values) ** 2)))

    assert error(cg) == pytest.approx(error(exact), rel=0.02)
    assert error(exact) < 0.9 * float(np.sqrt(np.mean(values**2)))


def _sweeps_of_a_fit(
    monkeypatch: pytest.MonkeyPatch, train: Ratings, config: KMeansKNNConfig
) -> list[int]:
    """The ALS sweeps of each factor fit a cold KMeansKNN fit runs, in order."""
    calls: list[int] = []

    def spy(*args: Any, **kwargs: Any) -> tuple[np.ndarray, np.ndarray]:
        calls.append(args[6])  # n_iterations
        return fit_factors(*args, **kwargs)

    monkeypatch.setattr(knn, "fit_factors", spy)
    clear_component_cache()
    KMeansKNN(config).fit(train)
    clear_component_cache()
    return calls


def test_auto_sweeps_are_few_on_small_sets_and_the_full_count_above(
    monkeypatch: pytest.MonkeyPatch, synthetic_folds: list[Fold]
) -> None:
    train = synthetic_folds[0].train
    # the single (loo) fit: factors without the held share from random, refined on all
    assert _sweeps_of_a_fit(monkeypatch, train, KMeansKNNConfig()) == list(
        knn.SMALL_FACTOR_ITERATIONS
    )
    # the holdout blend on a small set: the validation fit, then the refit from its factors
    holdout = KMeansKNNConfig(blend_fit="holdout")
    assert _sweeps_of_a_fit(monkeypatch, train, holdout) == list(knn.SMALL_FACTOR_ITERATIONS)
    # above LOO_CELLS users x items (here: a threshold below this set), 10 and then 3
    monkeypatch.setattr(knn, "LOO_CELLS", train.n_users * train.n_items - 1)
    assert _sweeps_of_a_fit(monkeypatch, train, holdout) == [
        knn.FACTOR_ITERATIONS, knn.REFIT_FACTOR_ITERATIONS,
    ]  # fmt: skip
    # a count that is set is kept, whatever the size
    assert _sweeps_of_a_fit(monkeypatch, train, KMeansKNNConfig(factor_iterations=7)) == [
        7, knn.REFIT_FACTOR_ITERATIONS,
    ]  # fmt: skip


def test_factor_iterations_round_trip_through_flat_params() -> None:
    for config in (KMeansKNNConfig(), KMeansKNNConfig(factor_iterations=6)):
        params = {name: str(value) for name, value in config.as_params().items()}  # as MLflow
        assert KMeansKNNConfig(**unflatten(params)) == config
    with pytest.raises(ValidationError, match="factor_iterations"):
        KMeansKNNConfig(factor_iterations=0)
