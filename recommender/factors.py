"""Latent factors of baseline residuals by alternating least squares (a cheap SVD-like part)."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from recommender.neighbors import RatedLists, length_buckets, rated_lists

_FACTOR_CELLS = 64_000_000
"""Gathered factor values per chunk of the ALS solve (bounds its memory)."""


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
    lists with batched matrix products and solved as one batch. ``item_factors``: start
    from these (a warm start, e.g. from a fit on most of the same ratings), not random ones.
    """
    rng = np.random.default_rng(seed)
    by_user = rated_lists(rows, cols, residuals, shape[0], shape[1])
    by_item = rated_lists(cols, rows, residuals, shape[1], shape[0])
    user_factors = rng.normal(0.0, 0.1, (shape[0], n_factors))
    if item_factors is None:
        item_factors = rng.normal(0.0, 0.1, (shape[1], n_factors))
    for _ in range(n_iterations):
        user_factors = _solve_side(by_user, item_factors, regularization)
        item_factors = _solve_side(by_item, user_factors, regularization)
    return user_factors, item_factors


def _solve_side(lists: RatedLists, fixed: np.ndarray, regularization: float) -> np.ndarray:
    n_owners, n_factors = len(lists.counts), fixed.shape[1]
    # Padding points at an extra all-zero factor row, so it adds nothing to the sums.
    # Products in float32 (half the memory traffic), the solve in float64.
    padded = np.vstack([fixed, np.zeros((1, n_factors))]).astype(np.float32)
    solved = np.zeros((n_owners, n_factors))
    identity = np.eye(n_factors)

    def solve(chunk: np.ndarray) -> None:
        width = max(int(lists.counts[chunk].max()), 1)
        positions, values = lists.padded(chunk, width)
        factors = padded[positions]
        gram = np.matmul(factors.transpose(0, 2, 1), factors).astype(np.float64)
        penalty = regularization * lists.counts[chunk] + 1e-6
        gram += penalty[:, None, None] * identity
        target = np.matmul(factors.transpose(0, 2, 1), values[:, :, None]).astype(np.float64)
        solved[chunk] = np.linalg.solve(gram, target)[:, :, 0]

    # NumPy releases the GIL in the products and solves: chunks run on threads, each
    # writing its own rows; a chunk's gathered factors stay near 64M floats.
    chunks = length_buckets(lists.counts, max(_FACTOR_CELLS // n_factors, 1))
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        for _ in pool.map(solve, chunks):
            pass
    return solved
