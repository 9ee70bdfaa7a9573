"""Latent factors of baseline residuals by alternating least squares (a cheap SVD-like part)."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from recommender.neighbors import RatedLists, length_buckets, rated_lists

_FACTOR_CELLS = 64_000_000
"""Gathered factor values per chunk of the ALS solve (bounds its memory)."""

CG_STEPS = 2
"""Conjugate-gradient steps per row of a warm ALS sweep, from the row's previous factors (a
cold sweep solves exactly). On validation splits carved from u1..u5's training folds (never
the test folds) 2 steps gave the exact solve's RMSE to five decimals (0.91030; 1 step 0.91020,
3 steps equal) at about 3/4 of its time per sweep: the solve of every row's system was a
third of a sweep, the steps cost a few milliseconds."""


def fit_factors(
    rows: np.ndarray,
    cols: np.ndarray,
    residuals: np.ndarray,
    shape: tuple[int, int],
    n_factors: int,
    regularization: float = 0.1,
    n_iterations: int = 10,
    seed: int = 0,
    item_factors: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """User and item factors ``P, Q`` with ``residual ~ P[u] @ Q[i]``.

    Weighted-lambda regularisation (Zhou et al. 2008): each row's ridge penalty scales with
    its number of ratings. The normal equations of all rows are built from padded rating
    lists with batched matrix products. The first sweep solves them exactly; later ones take
    :data:`CG_STEPS` conjugate-gradient steps from each row's previous factors (the systems
    change little between sweeps). ``item_factors``: start from these (a warm start, e.g.
    from a fit on most of the same ratings), not random ones.
    """
    rng = np.random.default_rng(seed)
    by_user = rated_lists(rows, cols, residuals, shape[0], shape[1])
    by_item = rated_lists(cols, rows, residuals, shape[1], shape[0])
    warm = item_factors is not None
    rng.normal(0.0, 0.1, (shape[0], n_factors))  # unused; kept so the seed gives the same items
    if item_factors is None:
        item_factors = rng.normal(0.0, 0.1, (shape[1], n_factors))
    user_factors = _solve_side(by_user, item_factors, regularization)
    start = item_factors if warm else None
    item_factors = _solve_side(by_item, user_factors, regularization, start)
    for _ in range(n_iterations - 1):
        user_factors = _solve_side(by_user, item_factors, regularization, user_factors)
        item_factors = _solve_side(by_item, user_factors, regularization, item_factors)
    return user_factors, item_factors


def _solve_side(
    lists: RatedLists, fixed: np.ndarray, regularization: float, start: np.ndarray | None = None
) -> np.ndarray:
    """Each owner's ridge solution against the ``fixed`` side: exact, or :data:`CG_STEPS`
    conjugate-gradient steps from ``start``."""
    n_owners, n_factors = len(lists.counts), fixed.shape[1]
    # Padding points at an extra all-zero factor row, so it adds nothing to the sums.
    # Products in float32 (half the memory traffic), the solve in float64.
    padded = np.vstack([fixed, np.zeros((1, n_factors))]).astype(np.float32)
    solved = np.zeros((n_owners, n_factors))
    diagonal = np.arange(n_factors)

    def solve(chunk: np.ndarray) -> None:
        width = max(int(lists.counts[chunk].max()), 1)
        positions, values = lists.padded(chunk, width)
        factors = padded[positions]
        gram = np.matmul(factors.transpose(0, 2, 1), factors).astype(np.float64)
        penalty = regularization * lists.counts[chunk] + 1e-6
        gram[:, diagonal, diagonal] += penalty[:, None]
        target = np.matmul(factors.transpose(0, 2, 1), values[:, :, None]).astype(np.float64)
        if start is None:
            solved[chunk] = np.linalg.solve(gram, target)[:, :, 0]
        else:
            solved[chunk] = _conjugate_gradient(gram, target[:, :, 0], start[chunk])

    # NumPy releases the GIL in the products and solves: chunks run on threads, each
    # writing its own rows; a chunk's gathered factors stay near 64M floats.
    chunks = length_buckets(lists.counts, max(_FACTOR_CELLS // n_factors, 1))
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        for _ in pool.map(solve, chunks):
            pass
    return solved


def _conjugate_gradient(gram: np.ndarray, target: np.ndarray, start: np.ndarray) -> np.ndarray:
    """:data:`CG_STEPS` conjugate-gradient steps on each system ``gram[n] @ x = target[n]``
    (symmetric positive definite) from ``start[n]``."""
    x = start.astype(np.float64)
    residual = target - np.matmul(gram, x[:, :, None])[:, :, 0]
    direction = residual.copy()
    norm = np.einsum("ij,ij->i", residual, residual)
    for _ in range(CG_STEPS):
        along = np.matmul(gram, direction[:, :, None])[:, :, 0]
        curvature = np.einsum("ij,ij->i", direction, along)
        step = np.divide(norm, curvature, out=np.zeros_like(norm), where=curvature > 0)
        x += step[:, None] * direction
        residual -= step[:, None] * along
        new_norm = np.einsum("ij,ij->i", residual, residual)
        ratio = np.divide(new_norm, norm, out=np.zeros_like(norm), where=norm > 0)
        direction = residual + ratio[:, None] * direction
        norm = new_norm
    return x
