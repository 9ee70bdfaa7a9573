"""Top-N from implicit feedback (who rated what): sharpened user-KNN blended with item-item
weights learned by ridge regression (EASE), optionally restricted to K-Means user clusters."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import scipy.linalg
import scipy.sparse as sp
from pydantic import Field

from recommender.base import RecommenderModel
from recommender.cache import config_key, shared_component
from recommender.clustering import cluster_labels
from recommender.config import ModelConfig
from recommender.data import Ratings
from recommender.foldin import FoldedUser
from recommender.neighbors import top_k_rows
from recommender.topk import sparse_rows, top_neighbors


class ImplicitKNNConfig(ModelConfig):
    """Ranking scorer on the 0/1 "rated" matrix; the rating values are ignored."""

    kind: Literal["implicit_knn"] = "implicit_knn"
    n_neighbors: int = Field(default=100, ge=1, description="user neighbours per user")
    sharpen: float = Field(default=3.0, ge=0.1, le=10, description="exponent on cosine similarity")
    item_weight: float = Field(
        default=0.8,
        ge=0,
        le=1,
        description="share of the item-item (EASE) scores; 0 = user-KNN only",
    )
    item_l2: float = Field(
        default=300.0, gt=0, description="ridge penalty of the item-item weights"
    )
    n_clusters: int = Field(default=1, ge=1, description="K-Means user clusters; 1 = no clustering")
    cluster_weight: float = Field(
        default=0.0, ge=0, le=1, description="weight of neighbours outside the user's cluster"
    )
    seed: int = 0


_SCORING = ("n_neighbors",)


ALL_USERS_SHARE = 4
"""Requests for at least 1/ALL_USERS_SHARE of the training users read every user's scores."""


@dataclass(frozen=True)
class _Scores:
    """Every training user's scores at the configured ``n_neighbors`` (shared like the fit):
    the blend, and the parts' row maxima and raw EASE scores (leave-one-out scores)."""

    blended: np.ndarray
    user_max: np.ndarray
    item_raw: np.ndarray | None
    item_max: np.ndarray | None


@dataclass(frozen=True)
class _Fitted:
    """What a fit learns from the ratings alone (shared by fits on equal data and config)."""

    rated: np.ndarray
    cluster_labels: np.ndarray
    similarity: np.ndarray
    item_weights: np.ndarray | None
    inverse_diagonal: np.ndarray | None = None
    """The diagonal of EASE's ``(rated.T rated + item_l2 I)^-1`` (leave-one-out scores)."""


class ImplicitKNN(RecommenderModel[ImplicitKNNConfig]):
    """Ranks unrated items; ``predict`` gives the bias baseline (it does not model ratings).

    The fitted arrays are shared (read-only) with other fits on equal ratings and config.
    """

    config_class = ImplicitKNNConfig
    predicts_ratings = False

    def _fit(self, train: Ratings, *, users: Any | None) -> None:
        # n_neighbors is only used when scoring, so fits differing in it share the arrays.
        key = ("implicit_knn.fit", train.fingerprint, config_key(self.config, exclude=_SCORING))
        fitted = shared_component(key, lambda: self._fit_arrays(train))
        self.rated_ = fitted.rated
        self.cluster_labels_ = fitted.cluster_labels
        self.similarity_ = fitted.similarity
        self.item_weights_ = fitted.item_weights
        self.inverse_diagonal_ = fitted.inverse_diagonal

    def _fit_arrays(self, train: Ratings) -> _Fitted:
        config = self.config
        rated = np.zeros((train.n_users, train.n_items), dtype=np.float32)
        rated[train.user_index, train.item_index] = 1.0
        labels = cluster_labels(rated, config.n_clusters, config.seed)
        co_rated = user_co_ratings(train, rated)
        item_weights = diagonal = None
        if config.item_weight > 0:
            item_weights, diagonal = self._item_weights(rated, co_rated)
        similarity = self._user_similarity(rated, labels, co_rated)
        return _Fitted(rated, labels, similarity, item_weights, diagonal)

    def _user_similarity(
        self, rated: np.ndarray, labels: np.ndarray, co_rated: np.ndarray
    ) -> np.ndarray:
        length = np.sqrt(rated.sum(axis=1))
        norms = np.maximum(np.outer(length, length), 1e-9)
        # Sharpening (similarity ** p) lets the closest neighbours dominate the vote.
        similarity = (co_rated / norms) ** self.config.sharpen
        if self.config.n_clusters > 1:
            same = labels[:, None] == labels[None, :]
            similarity *= np.where(same, 1.0, self.config.cluster_weight).astype(np.float32)
        np.fill_diagonal(similarity, 0.0)
        return similarity.astype(np.float32)

    def _item_weights(
        self, rated: np.ndarray, co_rated: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        # EASE (Steck 2019): closed-form item-item regression with a zero diagonal.
        inverse = ridge_gram_inverse(rated, self.config.item_l2, co_rated)
        diagonal = np.diag(inverse).astype(np.float64)
        weights = -inverse / np.diag(inverse)[None, :]
        np.fill_diagonal(weights, 0.0)
        return weights.astype(np.float32), diagonal

    def loo_scores(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """:meth:`_score_users` of rated (user, item) pairs as if that one rating had not been
        there (leave-one-out), for a blend fit on training pairs. User-KNN: the user's
        overlaps with the others and own count lose the item, the top neighbours are found
        again. EASE: item i's ridge regression with the user's 1 on i set to 0 (as a held-out
        rating is absent from the data: 0, not a missing row), which moves the fitted value
        by the leverage ``h`` of the user's row: ``fitted - h`` (validation folds of u1..u5:
        mean RMSE 0.91045 against 0.91108 with the removed-row ``(fitted - h) / (1 - h)``).
        Each scaled by the user's in-sample row maximum."""
        self._check_fitted()
        config = self.config
        rated = self.rated_
        found, rows = np.unique(users, return_inverse=True)
        lengths = rated.sum(axis=1)
        scores = self._all_scores()
        user_max = scores.user_max[users]
        co_rated = user_co_ratings(self.ratings_, rated)
        n_users = rated.shape[0]
        k = min(config.n_neighbors, n_users - 1)
        # Without the pair's rating the user's similarities only scale up by
        # (n / (n - 1)) ** (sharpen / 2) or, for those who rated the item, fall: the new top
        # k are among the old top `width` unless the k-th new one falls below the old
        # (width + 1)-th so scaled (then that row is done over every user).
        width = min(2 * k, n_users - 1)
        ranked = np.argpartition(-self.similarity_[found], width, axis=1)
        candidates = ranked[:, :width][rows]
        beyond = np.take_along_axis(self.similarity_[found], ranked[:, width : width + 1], axis=1)
        growth = (lengths / np.maximum(lengths - 1.0, 1.0)) ** (config.sharpen / 2.0)
        bound = beyond[rows, 0] * growth[users]
        loo_user = np.empty(len(users))
        for chunk in np.array_split(np.arange(len(users)), max(len(users) // 2000, 1)):
            loo_user[chunk], kth = self._loo_user_knn(
                users[chunk], items[chunk], candidates[chunk], co_rated, lengths, k
            )
            redo = chunk[kth < bound[chunk]]
            if len(redo):
                everyone = np.broadcast_to(np.arange(n_users), (len(redo), n_users))
                loo_user[redo] = self._loo_user_knn(users[redo], items[redo], everyone,
                                                    co_rated, lengths, k)[0]  # fmt: skip
        user_scores = loo_user / user_max
        if scores.item_raw is None or scores.item_max is None or self.inverse_diagonal_ is None:
            return user_scores
        raw = scores.item_raw[found]  # in-sample EASE scores S
        diagonal = self.inverse_diagonal_
        # rows of X P: M[u, i] = d_i (X[u, i] - S[u, i]); x' P x' with x' = X[u] less item i
        quadratic = ((rated[found] * (1.0 - raw)) @ diagonal)[rows]
        fitted = raw[rows, items].astype(np.float64)
        d = diagonal[items]
        m = d * (1.0 - fitted)
        leverage = quadratic - 2.0 * m + d - d * fitted**2
        leverage = np.clip(leverage, 0.0, 0.95)
        ease = fitted - leverage
        ease_max = scores.item_max[users]
        share = config.item_weight
        return (1.0 - share) * user_scores + share * ease / ease_max

    def _loo_user_knn(
        self, users: np.ndarray, items: np.ndarray, candidates: np.ndarray,
        co_rated: np.ndarray, lengths: np.ndarray, k: int,
    ) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
        """Leave-one-out user-KNN scores of (user, item) pairs over candidate neighbours
        (rows of user positions; overlaps and the user's count less the item), and each
        row's k-th largest similarity."""
        config = self.config
        n_users, n_items = self.rated_.shape
        rated_by = self.rated_.ravel().take(candidates * n_items + items[:, None])
        shared = co_rated.ravel().take(users[:, None] * n_users + candidates) - rated_by
        scale = np.sqrt(np.maximum(lengths[users] - 1.0, 0.0))[:, None] * np.sqrt(
            lengths[candidates]
        )
        similarity = _power(np.divide(shared, np.maximum(scale, np.float32(1e-9))), config.sharpen)
        if config.n_clusters > 1:
            labels = self.cluster_labels_
            same = labels[users, None] == labels[candidates]
            similarity *= np.where(same, 1.0, config.cluster_weight).astype(np.float32)
        similarity[candidates == users[:, None]] = 0.0
        width = similarity.shape[1]
        if k >= width:
            return (similarity * rated_by).sum(axis=1, dtype=np.float64), similarity.min(axis=1)
        best = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
        chosen = np.take_along_axis(similarity, best, axis=1)
        total = (chosen * np.take_along_axis(rated_by, best, axis=1)).sum(axis=1, dtype=np.float64)
        return total, chosen.min(axis=1)

    def _predict_index(
        self, users: np.ndarray, items: np.ndarray, n_neighbors: int | None = None
    ) -> np.ndarray:
        return self.baseline_.predict(users, items)

    @property
    def ranking_depends_on_neighbors(self) -> bool:
        return True

    def _all_scores(self) -> _Scores:
        """The scores of every training user, computed once per fitted data and config."""
        key = ("implicit_knn.scores", self.ratings_.fingerprint, config_key(self.config))
        return shared_component(
            key, lambda: self._scores(self.similarity_, self.rated_, self.config.n_neighbors)
        )

    def _scores(self, similarity: np.ndarray, rated: np.ndarray, k: int) -> _Scores:
        """The scores at ``k`` neighbours of the users whose similarity rows and rated rows
        these are: each part scaled by its row maximum, then blended."""
        user_raw = top_k_rows(similarity, k) @ self.rated_
        user_max = np.maximum(np.abs(user_raw).max(axis=1), 1e-12)
        user_scores = user_raw / user_max[:, None]
        if self.item_weights_ is None:
            return _Scores(user_scores, user_max, None, None)
        item_raw = rated @ self.item_weights_
        item_max = np.maximum(np.abs(item_raw).max(axis=1), 1e-12)
        share = self.config.item_weight
        blended = (1.0 - share) * user_scores + share * (item_raw / item_max[:, None])
        return _Scores(blended, user_max, item_raw, item_max)

    def _score_users(self, users: np.ndarray, n_neighbors: int | None = None) -> np.ndarray:
        k = n_neighbors or self.config.n_neighbors
        # A request for a large share of the users (the blend, an evaluation's batches) reads
        # every user's scores, computed once; a few users (a served request) score alone, so a
        # served model neither computes nor holds every user's scores for one answer.
        if k == self.config.n_neighbors and ALL_USERS_SHARE * len(users) >= len(self.rated_):
            return self._all_scores().blended[users]
        return self._scores(self.similarity_[users], self.rated_[users], k).blended

    def score_new_user(self, items: np.ndarray) -> np.ndarray:
        """:meth:`_score_users` for a user not in the training data who rated ``items``
        (positions), without a refit. Training users who rated exactly those items are left
        out of the neighbours: they have nothing unrated to add (and a known user folded in
        again would otherwise find themself). With user clusters, the new user's neighbours
        are not restricted to a cluster (they have none)."""
        self._check_fitted()
        n_items = self.ratings_.n_items
        rated = np.zeros(n_items, dtype=np.float32)
        rated[items] = 1.0
        if len(items) == 0:
            return np.zeros(n_items, dtype=np.float32)
        overlap = self.rated_ @ rated
        lengths = self.rated_.sum(axis=1)
        norms = np.maximum(np.sqrt(lengths) * np.sqrt(np.float32(len(items))), 1e-9)
        similarity = ((overlap / norms) ** self.config.sharpen).astype(np.float32)
        similarity[(overlap == len(items)) & (lengths == len(items))] = 0.0
        k = self.config.n_neighbors
        if k < len(similarity):
            kept = np.zeros_like(similarity)
            best = np.argpartition(-similarity, k - 1)[:k]
            kept[best] = similarity[best]
            similarity = kept
        user_scores = _scaled(similarity[None, :] @ self.rated_)[0]
        if self.item_weights_ is None:
            return user_scores
        item_scores = _scaled(rated[None, :] @ self.item_weights_)[0]
        share = self.config.item_weight
        return (1.0 - share) * user_scores + share * item_scores

    def _score_folded(self, user: FoldedUser) -> np.ndarray:
        if user.n_ratings == 0:
            return self.baseline_.item_bias
        return self.score_new_user(user.items)


def user_co_ratings(train: Ratings, rated: np.ndarray) -> np.ndarray:
    """``rated @ rated.T``: how many items each two users both rated, of the dense 0/1
    ``rated`` matrix of ``train``; computed once per data (shared, read-only): the user-KNN
    overlaps, EASE's users x users system and the user-side Pearson support are all it."""
    key = ("co_ratings.users", train.fingerprint)

    def compute() -> np.ndarray:
        ones = rated.astype(np.float32, copy=False)
        return np.asarray(ones @ ones.T)

    return shared_component(key, compute)


def ridge_gram_inverse(
    rated: np.ndarray, l2: float, co_rated: np.ndarray | None = None
) -> np.ndarray:
    """``(rated.T @ rated + l2 * I)^-1`` in float32 (the ridge keeps it well conditioned:
    relative error about 1e-7 against float64). With fewer users than items (MovieLens 100K)
    by Woodbury, ``(I - Y.T Y) / l2`` with ``Y = L^-1 A``, ``L L.T = A A.T + l2 I``: a
    Cholesky factor of the users x users system, one triangular solve and one symmetric
    product (about half the flops of solving with ``A`` and multiplying by ``A.T``)."""
    rated = rated.astype(np.float32, copy=False)
    n_users, n_items = rated.shape
    if n_users >= n_items:
        gram = rated.T @ rated
        gram[np.diag_indices_from(gram)] += l2
        return np.asarray(np.linalg.inv(gram))
    kernel = rated @ rated.T if co_rated is None else co_rated.astype(np.float32, copy=True)
    kernel[np.diag_indices_from(kernel)] += l2
    lower = scipy.linalg.cholesky(kernel, lower=True, check_finite=False)
    solved = scipy.linalg.solve_triangular(lower, rated, lower=True, check_finite=False)
    solved = np.asarray(solved, dtype=np.float32)
    inverse = -(solved.T @ solved)  # NumPy takes a.T @ a as a symmetric product (syrk)
    inverse[np.diag_indices_from(inverse)] += 1.0
    inverse /= l2
    return inverse


def _power(values: np.ndarray, exponent: float) -> np.ndarray:
    """``values ** exponent`` (non-negative values), by multiplications for small integers."""
    if float(exponent).is_integer() and 1 <= exponent <= 4:
        result = values.copy()
        for _ in range(int(exponent) - 1):
            result *= values
        return result
    return np.power(values, exponent)


def _scaled(scores: np.ndarray) -> np.ndarray:
    """Each row divided by its largest magnitude, so the two scorers blend on one scale."""
    return scores / np.maximum(np.abs(scores).max(axis=1, keepdims=True), 1e-12)


@dataclass(frozen=True)
class ItemKNNScorer:
    """Top-N scores for large sets, where :class:`ImplicitKNN`'s users x users and items x
    items arrays do not fit: item-KNN on the 0/1 rated matrix (Deshpande & Karypis 2004).
    Each item keeps its ``n_neighbors`` most cosine-similar items, found block-wise within
    its K-Means cluster; a user's score of an item sums its rated items' similarities to it."""

    rated: sp.csr_matrix
    neighbors: sp.csr_matrix

    @classmethod
    def fit(
        cls, train: Ratings, config: ImplicitKNNConfig, labels: np.ndarray | None = None
    ) -> ItemKNNScorer:
        users, items = train.user_index, train.item_index
        ones = np.ones(len(train), dtype=np.float32)
        rated = sparse_rows(users, items, ones, (train.n_users, train.n_items))
        by_item = sparse_rows(items, users, ones, (train.n_items, train.n_users))
        top = top_neighbors(
            by_item, config.n_neighbors, "cosine", shrinkage=0.0, labels=labels,
            cluster_weight=config.cluster_weight,
        )  # fmt: skip
        return cls(rated, top.to_csr())

    def _score_users(self, users: np.ndarray) -> np.ndarray:
        return np.asarray((self.rated[users] @ self.neighbors).toarray(), dtype=np.float32)

    def score_new_user(self, items: np.ndarray) -> np.ndarray:
        """:meth:`_score_users` for a user not in the training data who rated ``items``."""
        rated = np.zeros(self.neighbors.shape[0], dtype=np.float32)
        rated[items] = 1.0
        return np.asarray(self.neighbors.T @ rated, dtype=np.float32)
