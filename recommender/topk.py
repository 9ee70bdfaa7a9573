"""Top-k neighbours from sparse rows, computed block-wise within K-Means clusters.

The sparse engine of :class:`recommender.knn.KMeansKNN` never holds a rows x rows matrix: it
multiplies a block of rows against the candidate rows (its cluster's members, or every row
when out-of-cluster neighbours keep some weight), shrinks the similarities exactly as
:func:`recommender.neighbors.shrunk_similarity` does, and keeps each row's ``k`` best. The
cost of a block falls with the number of candidates, so more clusters make the search cheaper.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import scipy.sparse as sp

from recommender.bias import damped_average
from recommender.neighbors import RatedLists, Similarity

logger = logging.getLogger(__name__)

BLOCK_CELLS = 16_000_000
"""Cells of one dense block (rows x candidates) of similarities: bounds the memory."""
PAIR_CELLS = 8_000_000
"""Cells (pairs x neighbours) looked up at once by :func:`top_k_average`."""


@dataclass(frozen=True)
class TopNeighbors:
    """Each row's ``k`` most similar rows with a positive similarity, best first.

    ``indices[r]`` are row positions (padding: ``n_rows``), ``similarity[r]`` their similarity
    (padding: 0).
    """

    indices: np.ndarray
    similarity: np.ndarray

    @property
    def n_rows(self) -> int:
        return len(self.indices)

    def to_csr(self) -> sp.csr_matrix:
        """The neighbours as a sparse ``n_rows x n_rows`` matrix (padding dropped)."""
        kept = self.similarity > 0
        rows = np.repeat(np.arange(self.n_rows), kept.sum(axis=1))
        return sp.csr_matrix(
            (self.similarity[kept], (rows, self.indices[kept])), shape=(self.n_rows, self.n_rows)
        )


def sparse_rows(
    owners: np.ndarray, columns: np.ndarray, values: np.ndarray, shape: tuple[int, int]
) -> sp.csr_matrix:
    """CSR matrix that keeps explicit zeros (a residual of 0 is still a rating)."""
    order = np.lexsort((columns, owners))
    indptr = np.concatenate([[0], np.cumsum(np.bincount(owners, minlength=shape[0]))])
    return sp.csr_matrix(
        (values[order].astype(np.float32), columns[order].astype(np.int32), indptr), shape=shape
    )


def top_neighbors(
    rows: sp.csr_matrix,
    k: int,
    measure: Similarity = "pearson",
    shrinkage: float = 100.0,
    min_support: int = 1,
    labels: np.ndarray | None = None,
    cluster_weight: float = 0.0,
    workers: int | None = None,
) -> TopNeighbors:
    """The ``k`` best neighbours of every row of ``rows`` (its stored entries are the rated
    cells, explicit zeros included). With ``labels``, a row's candidates are the rows of its
    cluster (``cluster_weight`` 0), or all rows with the others' similarity scaled by it.
    ``workers``: threads (default: the CPUs)."""
    workers = workers or os.cpu_count() or 1
    n_rows = rows.shape[0]
    labels = np.zeros(n_rows, dtype=np.int64) if labels is None else np.asarray(labels)
    k = max(1, min(k, n_rows - 1)) if n_rows > 1 else 1
    indices = np.full((n_rows, k), n_rows, dtype=np.int32)
    similarity = np.zeros((n_rows, k), dtype=np.float32)
    mask = rows.copy()
    mask.data = np.ones_like(mask.data)
    squares = rows.copy()
    squares.data = squares.data**2
    lengths = np.sqrt(np.asarray(squares.sum(axis=1)).ravel())
    restrict = cluster_weight == 0.0

    def search(block: np.ndarray, candidates: np.ndarray, right: _Candidates) -> None:
        scores = _block_similarity(
            rows[block], mask[block], squares[block], right, measure, shrinkage, min_support,
            lengths[block], lengths[candidates],
        )  # fmt: skip
        if not restrict:
            scores[:, labels[candidates] != labels[block[0]]] *= cluster_weight
        scores[np.arange(len(block)), np.searchsorted(candidates, block)] = 0.0
        best, values = _best_of_rows(scores, k)
        indices[block, : best.shape[1]] = np.where(values > 0, candidates[best], n_rows)
        similarity[block, : best.shape[1]] = np.maximum(values, 0.0)

    # SciPy's sparse products and NumPy release the GIL: blocks run on threads, a bounded
    # number at a time (each holds a dense block), writing disjoint rows of the result.
    with ThreadPoolExecutor(workers) as pool:
        pending: list[Future[None]] = []
        for cluster in np.unique(labels):
            members = np.flatnonzero(labels == cluster)
            candidates = members if restrict else np.arange(n_rows)
            right = _transposed(rows[candidates], mask[candidates], squares[candidates])
            per_block = max(1, BLOCK_CELLS // max(len(candidates), 1))
            for start in range(0, len(members), per_block):
                block = members[start : start + per_block]
                pending.append(pool.submit(search, block, candidates, right))
                if len(pending) >= 2 * workers:
                    pending.pop(0).result()
        for future in pending:
            future.result()
    return TopNeighbors(indices, similarity)


class _Candidates(NamedTuple):
    """The candidate rows transposed once (columns x candidates) for the block products."""

    values: sp.csr_matrix
    mask: sp.csr_matrix
    squares: sp.csr_matrix


def _transposed(*matrices: sp.csr_matrix) -> _Candidates:
    values, mask, squares = (matrix.T.tocsr() for matrix in matrices)
    return _Candidates(values, mask, squares)


def _block_similarity(
    values: sp.csr_matrix,
    mask: sp.csr_matrix,
    squares: sp.csr_matrix,
    right: _Candidates,
    measure: Similarity,
    shrinkage: float,
    min_support: int,
    block_lengths: np.ndarray,
    candidate_lengths: np.ndarray,
) -> np.ndarray:
    """Shrunk similarities of a block of rows to the candidates (dense, block x candidates)."""
    covariance = (values @ right.values).toarray()
    support = (mask @ right.mask).toarray()
    if measure == "pearson":
        # sum of a's squared residuals where b rated, times the same the other way round
        norms = np.sqrt((squares @ right.mask).toarray() * (mask @ right.squares).toarray())
    else:
        norms = np.outer(block_lengths, candidate_lengths)
    scores = np.divide(covariance, norms, out=np.zeros_like(covariance), where=norms > 0)
    overlap = np.maximum(support - 1.0, 0.0)
    scores *= overlap / (overlap + shrinkage) if shrinkage > 0 else (overlap > 0)
    scores[support < min_support] = 0.0
    return scores.astype(np.float32, copy=False)


def _best_of_rows(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Column positions and values of each row's ``k`` largest scores, largest first."""
    k = min(k, scores.shape[1])
    best = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k < scores.shape[1] else None
    if best is None:
        best = np.broadcast_to(np.arange(scores.shape[1]), scores.shape).copy()
    values = np.take_along_axis(scores, best, axis=1)
    order = np.argsort(-values, axis=1, kind="stable")
    return np.take_along_axis(best, order, axis=1), np.take_along_axis(values, order, axis=1)


def top_k_average(
    neighbors: TopNeighbors,
    lists: RatedLists,
    owners: np.ndarray,
    targets: np.ndarray,
    neighbor_counts: Sequence[int],
    damping: float = 0.0,
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """:func:`recommender.neighbors.neighborhood_average` over kept neighbours: for each pair
    (owner, target), among the target's neighbours that the owner is linked to, the ``k``
    most similar; ``{k: (sum(s*r) / (sum(s) + damping), sum(s))}``. Equal to the dense kernel
    when ``neighbors`` keeps every positive similarity."""
    counts = sorted({int(k) for k in neighbor_counts})
    results = {k: (np.zeros(len(owners)), np.zeros(len(owners))) for k in counts}
    width = neighbors.indices.shape[1]
    per_chunk = max(1, PAIR_CELLS // width)
    by_owner = np.argsort(owners, kind="stable")  # a chunk's owners are few: fast lookups
    for start in range(0, len(owners), per_chunk):
        chunk = by_owner[start : start + per_chunk]
        candidates = neighbors.indices[targets[chunk]]
        weights = neighbors.similarity[targets[chunk]]
        found, values = lists.lookup(owners[chunk], candidates)
        used = found & (weights > 0)
        rank = np.cumsum(used, axis=1)
        for k in counts:
            kept = np.where(used & (rank <= k), weights, np.float32(0.0))
            total = kept.sum(axis=1, dtype=np.float64)
            weighted = (kept * values).sum(axis=1, dtype=np.float64)
            results[k][0][chunk] = damped_average(weighted, total, damping)
            results[k][1][chunk] = total
    return results
