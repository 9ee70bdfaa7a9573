"""The tuned K-Means + KNN hybrid: user- and/or item-based KNN on baseline residuals, with
K-Means clusters restricting or weighting the neighbourhood and a validation-fit blend."""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Annotated, Any, Literal

import numpy as np
import scipy.sparse as sp
from pydantic import Field

from recommender.base import RecommenderModel
from recommender.bias import Biases, damped_average, fit_biases
from recommender.cache import config_key, shared_component
from recommender.clustering import cluster_labels, reduced_rows
from recommender.config import ModelConfig
from recommender.data import Ratings
from recommender.factors import fit_factors
from recommender.foldin import (
    COLD_START_CLUSTER,
    COLD_START_POPULAR,
    FOLD_IN,
    ClusterPrior,
    FoldedUser,
    prior_share,
    scaled,
)
from recommender.neighbors import (
    RatedLists,
    Similarity,
    SimilarityStats,
    loo_neighborhood_average,
    neighborhood_average,
    rated_lists,
    similarity_stats,
)
from recommender.ranking import ImplicitKNN, ImplicitKNNConfig, ItemKNNScorer, user_co_ratings
from recommender.temporal import Sessions
from recommender.topk import TopNeighbors, sparse_rows, top_k_average, top_neighbors

logger = logging.getLogger(__name__)
_PRIOR_LOCK = threading.Lock()

SWEEP_NEIGHBORS: tuple[int, ...] = (10, 20, 40, 80)
"""Neighbour counts whose blend weights every fit learns, so a sweep needs one fit."""
DENSE_CELLS = 50_000_000
"""Above this many users x items cells, ``engine="auto"`` takes the sparse engine."""
LOO_CELLS = 5_000_000
"""``blend_fit="auto"`` fits the blend on leave-one-out inputs up to this many users x items
cells (ml-100k has 1.6M, ml-1m 22M): see ``KMeansKNNConfig.blend_fit``."""
FOLD_IN_FACTOR_RATINGS = 20
"""A folded-in user's factors are regularised as if they had at least this many ratings
(weighted-lambda scales the penalty with the count, which leaves a user with one rating all
but unregularised). Chosen with the cold start on validation folds carved from u1..u5's
training data (bench/cold_start.py --validation), fold-in RMSE at k = 1 / 3 / 5 / 10: none
1.0339 / 1.0293 / 1.0274 / 1.0134; 10: 1.0321 / 1.0281 / 1.0268 / 1.0133; 20: 1.0318 /
1.0279 / 1.0265 / 1.0130. With regularisation 0.2, 5 / 10 / 20 / 40 / 80 gave 1.0325 /
1.0315 / 1.0311 / 1.0310 / 1.0309 at k = 1: flat from 20."""
REFIT_FACTOR_ITERATIONS = 3
"""ALS sweeps of the refit on all the training ratings, started from the validation fit's
factors (which had ``factor_iterations``). Not tuned: a speed setting, checked to lose nothing
(official folds u1..u5, 5-fold mean RMSE 0.90405 against 0.90408 with 10 sweeps from random)."""
FACTOR_ITERATIONS = 10
"""``factor_iterations="auto"`` above :data:`LOO_CELLS` users x items (see the config)."""
SMALL_FACTOR_ITERATIONS = (4, 2)
"""``factor_iterations="auto"`` up to :data:`LOO_CELLS` users x items: ALS sweeps from random,
then sweeps refining them on all the training ratings (instead of ``FACTOR_ITERATIONS`` and
:data:`REFIT_FACTOR_ITERATIONS`). Chosen on validation splits carved from u1..u5's training
folds (80/20, never the test folds), 5-fold mean RMSE at the ratings' times / without them,
two seeds: 10 + 3 sweeps 0.89305 / 0.91045 and 0.89395 / 0.91128; 4 + 2 0.89294 / 0.91013 and
0.89431 / 0.91153 (a tie within the seeds' spread) at 6 sweeps of 13, which saves about 0.15 s
of ml-100k's 1.4 s fit. 3 + 3, 3 + 2, 4 + 1, 5 + 1 and 5 + 2 were within 0.0005 as well;
2 + 3 lost 0.0015."""
BLEND_PAIRS = 500_000
"""At most this many held-out ratings fit the blend weights (a dozen weights need no more)."""

Engine = Literal["auto", "dense", "sparse"]


class KMeansKNNConfig(ModelConfig):
    """Hyper-parameters of :class:`KMeansKNN`; the defaults are the best configuration found
    (chosen on validation splits carved from the training folds, never on test data)."""

    kind: Literal["kmeans_knn"] = "kmeans_knn"
    based: Literal["user", "item", "both"] = Field(
        default="both", description="neighbourhoods of users, of items, or both blended"
    )
    similarity: Similarity = "pearson"
    n_neighbors: int = Field(default=40, ge=1)
    shrinkage: float = Field(default=100.0, ge=0, description="similarity * (n-1)/(n-1+shrinkage)")
    min_support: int = Field(
        default=1, ge=1, description="co-ratings needed for a non-zero similarity"
    )
    neighbor_damping: float = Field(
        default=0.5, ge=0, description="added to sum(similarity): pulls thin neighbourhoods to 0"
    )
    user_damping: float = Field(default=5.0, ge=0)
    item_damping: float = Field(default=5.0, ge=0)
    n_clusters: int = Field(default=1, ge=1, description="K-Means clusters; 1 = no clustering")
    cluster_weight: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="weight of neighbours outside the cluster; 0 = restrict",
    )
    cluster_components: int = Field(
        default=24, ge=0,
        description="K-Means clusters the rows' top singular components (0: the raw rows)",
    )  # fmt: skip
    cluster_biases: bool = Field(default=False, description="add damped cluster x item biases")
    cluster_bias_damping: float = Field(default=25.0, ge=0)
    # Regularisation 0.15 won on validation splits of the training folds (never the test
    # folds). With the single-fit blend those splits (80% of a training fold) preferred 0.2
    # (mean RMSE 0.90889 against 0.91045), but at scale 0.2 lost 0.04 (bench/scale.py's 1M,
    # sparse engine, its own 1% hold-out: 0.8068 against 0.7659), so 0.15 stays. 30 factors:
    # 0.9044 on those splits against 0.9042 with 50 (100 tied 50), at 57% of the fit time,
    # which a sweep of 30 fits per dataset feels.
    n_factors: int = Field(
        default=30, ge=0, description="latent factors on the residuals; 0 = none"
    )
    factor_regularization: float = Field(default=0.15, gt=0)
    # auto: on ml-100k's validation splits 3/5/7/10 sweeps tie (0.9100/0.9099/0.9101/0.9103:
    # the blend absorbs it; see SMALL_FACTOR_ITERATIONS), but at scale 5 lose (bench/scale.py,
    # sparse engine: 1M RMSE 0.7726 against 0.7659; 25M 0.9258, worse than the baseline's
    # 0.8656), so few sweeps only up to LOO_CELLS users x items.
    factor_iterations: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        default="auto",
        description="ALS sweeps from random (a refit on all the ratings refines with "
        "REFIT_FACTOR_ITERATIONS); auto: SMALL_FACTOR_ITERATIONS up to LOO_CELLS users x "
        "items, FACTOR_ITERATIONS (10) and REFIT_FACTOR_ITERATIONS above",
    )
    validation_fraction: float = Field(
        default=0.1, gt=0, lt=0.5, description="training share held out to fit the blend weights"
    )
    engine: Engine = Field(
        default="auto",
        description="dense: exact, arrays of users x items; sparse: block-wise top neighbours "
        "within clusters, for large sets; auto: sparse above DENSE_CELLS users x items",
    )
    kept_neighbors: int = Field(
        default=200, ge=1, description="sparse engine: neighbours kept per user or item"
    )
    # auto: loo on small dense sets (at most LOO_CELLS users x items), holdout otherwise.
    # ml-100k, on validation splits carved from u1..u5's training folds (80/20, never the test
    # folds): loo's mean RMSE 0.91045 against holdout's 0.91030, at about 0.8 of the fit +
    # predict time; on those folds' cold start (bench/cold_start.py --validation) the
    # fold-in's RMSE moved by at most 0.0007 (k=10) and the ranking not at all. An ml-1m-shaped
    # dense set (bench/scale.py's 1M sample, its 3,700 most rated items, 1% held out): loo
    # 0.7515 against 0.7509 in the same time (its leave-one-out inputs of 91k pairs cost what
    # the second fit saves), so holdout there.
    blend_fit: Literal["auto", "holdout", "loo"] = Field(
        default="auto",
        description="holdout: blend weights fit on a held-out share by parts fit without it "
        "(then refit, see refit); loo: the parts fit once on all the ratings, the weights on "
        "leave-one-out predictions of a share of them (dense engine; no second fit); auto: "
        "loo up to LOO_CELLS users x items, holdout above",
    )
    refit: bool = Field(
        default=True,
        description="fit the parts again on all the training ratings once the blend weights "
        "are fit (False: keep the parts fit without the validation share; half the fit time)",
    )
    # The cold start (fold-in of users not in the training data, recommender.foldin). Chosen
    # with bench/cold_start.py --validation on validation folds carved from u1-u3's training
    # ratings (never the test files): 16 clusters at temperature 0.3 had the best NDCG@10
    # averaged over k = 0..5 among 1/4/8/16 clusters x 0.1/0.3/1; priors 2/5/10/20 and
    # dampings 10/25 were within noise, so 5 and 10 stayed.
    fold_in_clusters: int = Field(
        default=16, ge=1,
        description="K-Means user clusters whose preferences carry users with few ratings; "
        "1 = the population's (no clusters)",
    )  # fmt: skip
    fold_in_prior: float = Field(
        default=5.0, ge=0,
        description="ranking: the cluster prior weighs tau/(tau+n) against n ratings' KNN",
    )  # fmt: skip
    fold_in_rating_prior: float = Field(
        default=5.0, ge=0,
        description="rating: the cluster deviation is added with weight tau/(tau+n)",
    )  # fmt: skip
    fold_in_temperature: float = Field(
        default=0.3, gt=0,
        description="power on a user's ratings' likelihood when assigning clusters",
    )  # fmt: skip
    fold_in_damping: float = Field(
        default=10.0, ge=0, description="damping of the cluster x item mean residuals"
    )
    # Chosen on validation splits carved from u1..u5's training folds (80/20, never the test
    # folds): 5-fold mean RMSE 0.9125 without, 0.9103 with (every fold better by 0.0006 to
    # 0.0029); the scorer's item_l2 100/300/1000 and sharpen 1/3 were within 0.0003.
    implicit_blend: bool = Field(
        default=True,
        description="blend in each pair's implicit-feedback score (who rated what: the "
        "ranking scorer's), so a rating leans on whether the user's history predicts the "
        "item; dense engine, blends of two or more parts",
    )  # fmt: skip
    # Chosen on validation splits carved from u1..u5's training folds (80/20, never the test
    # folds), the offset's weight fit on what the blend leaves: 5-fold mean RMSE 0.91045
    # without the offset, 0.89305 with it. With the mean residual of the 5 ratings nearest in
    # time as a second input, scales of 15 / 40 / 120 / 300 / 600 / 3600 / 86400 s gave
    # 0.8959 / 0.8944 / 0.8931 / 0.8943 / 0.8954 / 0.8967 / 0.8971, and at 120 s that mean's
    # weight was -0.04, so it went (alone: 0.8984; of 3 or 8 ratings 0.8993, 0.8989).
    session_seconds: float = Field(
        default=120.0, ge=0,
        description="a rating's session offset: the damped mean residual of the user's "
        "ratings near its time, weighted exp(-gap / this); predict(..., times=...) (needs "
        "timestamps and a blend); 0 = none",
    )  # fmt: skip
    seed: int = 0
    ranking: ImplicitKNNConfig | None = Field(
        default=ImplicitKNNConfig(),
        description="scorer of recommend(); None ranks by predicted rating",
    )

    def sparse_for(self, train: Ratings) -> bool:
        """Whether a fit on ``train`` takes the sparse engine."""
        if self.engine == "auto":
            return train.n_users * train.n_items > DENSE_CELLS
        return self.engine == "sparse"

    def loo_for(self, train: Ratings) -> bool:
        """Whether a fit on ``train`` fits its blend on leave-one-out inputs (``blend_fit``)."""
        if self.blend_fit == "auto":
            return train.n_users * train.n_items <= LOO_CELLS
        return self.blend_fit == "loo"

    def factor_sweeps(self, train: Ratings) -> tuple[int, int]:
        """ALS sweeps of a factor fit on ``train`` from random, and of one refining factors
        already fit on most of it (``factor_iterations``)."""
        if self.factor_iterations != "auto":
            return int(self.factor_iterations), REFIT_FACTOR_ITERATIONS
        if train.n_users * train.n_items <= LOO_CELLS:
            return SMALL_FACTOR_ITERATIONS
        return FACTOR_ITERATIONS, REFIT_FACTOR_ITERATIONS

    @property
    def n_parts(self) -> int:
        """How many residual predictors the blend combines."""
        return (2 if self.based == "both" else 1) + (1 if self.n_factors > 0 else 0)


@dataclass
class _Side:
    """A fitted neighbourhood: similarity between entities and the lists to average over."""

    similarity: np.ndarray
    lists: RatedLists
    labels: np.ndarray


_FACTOR_FIELDS = (
    "user_damping", "item_damping", "n_factors", "factor_regularization", "factor_iterations",
    "seed",
)  # fmt: skip
_RESIDUAL_FIELDS = ("based", "similarity", "shrinkage", "min_support", *_FACTOR_FIELDS)
"""The config fields :class:`_ResidualModels` depends on (given residuals without cluster
biases): not ``n_clusters``, ``cluster_*`` or ``n_neighbors``, so a sweep over those shares it."""


@dataclass(frozen=True)
class _ResidualModels:
    """What is fitted on a dense residual matrix: the similarities (before any cluster
    weighting), the rated lists and the latent factors of each side that is used."""

    item_similarity: np.ndarray | None
    user_similarity: np.ndarray | None
    item_lists: RatedLists | None
    user_lists: RatedLists | None
    factors: tuple[np.ndarray, np.ndarray] | None
    item_stats: SimilarityStats | None = None
    user_stats: SimilarityStats | None = None
    held_factors: tuple[np.ndarray, np.ndarray] | None = None
    """``blend_fit="loo"``: the factors fit without the held-out share (whose ratings they
    predict out of sample for the blend); ``factors`` are refined from them on all."""

    @classmethod
    def fit(
        cls, train: Ratings, config: KMeansKNNConfig, dense: np.ndarray, rated: np.ndarray,
        start: tuple[np.ndarray, np.ndarray] | None = None, keep_stats: bool = False,
    ) -> _ResidualModels:  # fmt: skip
        """Similarities, rated lists and factors of the residuals; the factors refined from
        ``start`` (a validation fit's) when given, else fit from random."""
        users, items = train.user_index, train.item_index
        residuals = dense[users, items]
        item_similarity = user_similarity = item_lists = user_lists = None
        item_stats = user_stats = None
        if config.based in ("item", "both"):
            item_lists = rated_lists(users, items, residuals, train.n_users, train.n_items)
            item_stats = similarity_stats(dense.T, rated.T, config.similarity)
            item_similarity = item_stats.shrunk(config.shrinkage, config.min_support)
        if config.based in ("user", "both"):
            user_lists = rated_lists(items, users, residuals, train.n_items, train.n_users)
            co_rated = user_co_ratings(train, rated)
            user_stats = similarity_stats(dense, rated, config.similarity, co_rated)
            user_similarity = user_stats.shrunk(config.shrinkage, config.min_support)
        factors = _factors(train, config, residuals, start)
        if not keep_stats:
            item_stats = user_stats = None
        return cls(item_similarity, user_similarity, item_lists, user_lists, factors,
                   item_stats, user_stats)  # fmt: skip


def _factors(
    train: Ratings, config: KMeansKNNConfig, residuals: np.ndarray,
    inner: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray] | None:  # fmt: skip
    """Latent factors of the residuals (None when ``n_factors`` is 0): fit from random, or
    refined from the validation fit's ``inner`` by fewer ALS sweeps
    (:meth:`KMeansKNNConfig.factor_sweeps`; both engines, so they stay equal)."""
    if config.n_factors <= 0:
        return None
    fresh, refining = config.factor_sweeps(train)
    iterations = fresh if inner is None else refining
    return fit_factors(
        train.user_index, train.item_index, residuals.astype(np.float64),
        (train.n_users, train.n_items), config.n_factors, config.factor_regularization,
        iterations, config.seed, item_factors=None if inner is None else inner[1],
    )  # fmt: skip


def _loo_models(
    train: Ratings, config: KMeansKNNConfig, dense: np.ndarray, rated: np.ndarray,
    held: np.ndarray,
) -> _ResidualModels:  # fmt: skip
    """The residual models of a single fit (``blend_fit="loo"``): similarities with their
    sums; factors fit without the ``held`` ratings, then refined on all of them."""
    kept = train.subset(~held)
    held_factors = _factors(kept, config, dense[kept.user_index, kept.item_index])
    models = _ResidualModels.fit(train, config, dense, rated, start=held_factors, keep_stats=True)
    return replace(models, held_factors=held_factors)


class _Parts(ABC):
    """Everything fitted on one set of ratings: baseline, cluster biases, KNN sides, factors.

    :class:`_DenseParts` holds users x items arrays (exact, for small sets); :class:`_SparseParts`
    keeps each user's or item's top neighbours, found within its cluster (for large sets).
    """

    config: KMeansKNNConfig
    biases: Biases
    user_labels: np.ndarray | None
    item_labels: np.ndarray | None
    factors: tuple[np.ndarray, np.ndarray] | None
    item_side: Any  # the item-KNN side, None when not used
    user_side: Any
    implicit: ImplicitKNN | None = None
    """The implicit-feedback scorer whose scores the blend takes (``implicit_blend``)."""

    def __init__(
        self, train: Ratings, config: KMeansKNNConfig, held_out: bool = False,
        inner: _Parts | None = None,
    ) -> None:  # fmt: skip
        """``held_out``: ``train`` lacks the validation share; ``inner``: the parts fit
        without it, whose work a refit on all of ``train`` may reuse."""
        self.config = config
        self.biases = fit_biases(train, config.user_damping, config.item_damping)
        # log(1 + count) of each user and item, scaled as if fit on all the training data.
        scale = 1.0 / (1.0 - (config.validation_fraction if held_out else 0.0))
        self.user_support = (
            np.log1p(np.bincount(train.user_index, minlength=train.n_users) * scale) / 7
        )
        self.item_support = (
            np.log1p(np.bincount(train.item_index, minlength=train.n_items) * scale) / 7
        )

    def _cluster_labels(
        self, by_user: Any, by_item: Any, inner: _Parts | None
    ) -> tuple[np.ndarray | None, np.ndarray | None]:
        """The K-Means labels of the users and items (None where not clustered). A refit
        keeps those of the fit without the validation share (``inner``, on the same users
        and items): K-Means of 90% of the same rows, at half the clustering time. On
        ml-25m-shaped data, 32 clusters, the hold-out RMSE was no worse (1M 0.76582 against
        0.76587, 5M 0.75785 against 0.75798) and the 5M fit took 83 s against 88 s."""
        if inner is not None:
            return inner.user_labels, inner.item_labels
        return self._labels(by_user, "user"), self._labels(by_item, "item")

    def _labels(self, rows: Any, side: str) -> np.ndarray | None:
        wanted = self.config.based in (side, "both")
        if self.config.n_clusters <= 1 or not wanted:
            return None
        config = self.config
        features = reduced_rows(rows, config.cluster_components, config.seed, directions=True)
        return cluster_labels(features, config.n_clusters, config.seed)

    @abstractmethod
    def base(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Baseline plus cluster biases for known positions."""

    def side_averages(
        self, users: np.ndarray, items: np.ndarray, counts: Sequence[int]
    ) -> list[dict[int, np.ndarray]]:
        """The item-KNN and user-KNN residual averages (those that are used), per count."""
        found = []
        for side, owners, targets in (
            (self.item_side, users, items),
            (self.user_side, items, users),
        ):
            if side is not None:
                average = self._average(side, owners, targets, counts)
                found.append({k: average[k][0] for k in counts})
        return found

    @abstractmethod
    def _average(
        self, side: Any, owners: np.ndarray, targets: np.ndarray, counts: Sequence[int]
    ) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """``{k: (average, weight)}`` of the side's neighbourhoods for (owner, target) pairs."""

    def residual_parts(
        self, users: np.ndarray, items: np.ndarray, counts: Sequence[int]
    ) -> dict[int, np.ndarray]:
        """``{k: design matrix}`` of the residual predictions (item-KNN, user-KNN, factors)."""
        columns: dict[int, list[np.ndarray]] = {k: [] for k in counts}
        for found in self.side_averages(users, items, counts):
            for k in counts:
                columns[k].append(found[k])
        if self.factors is not None:
            user_factors, item_factors = self.factors
            dot = (user_factors[users] * item_factors[items]).sum(axis=1)
            for k in counts:
                columns[k].append(dot)
        implicit = self._implicit_scores(users, items)
        return {
            k: _design(parts, self.user_support[users], self.item_support[items], implicit)
            for k, parts in columns.items()
        }

    def _implicit_scores(self, users: np.ndarray, items: np.ndarray) -> np.ndarray | None:
        """The implicit scorer's score of each (user, item) pair (None without the scorer)."""
        if self.implicit is None:
            return None
        found, rows = np.unique(users, return_inverse=True)
        return np.asarray(self.implicit._score_users(found)[rows, items], dtype=np.float64)

    def folded_parts(
        self, rated: np.ndarray, residuals: np.ndarray, targets: np.ndarray, counts: Sequence[int]
    ) -> dict[int, np.ndarray]:
        """:meth:`residual_parts` for one user not in the training data, who rated the item
        positions ``rated`` with these baseline ``residuals``: item-KNN over their own list,
        user-KNN from their similarity to the training users, factors solved for them (the
        ALS step of a training user). Cluster weighting and cluster biases do not apply."""
        columns: dict[int, list[np.ndarray]] = {k: [] for k in counts}
        owner = np.zeros(len(targets), dtype=np.int64)
        if self.item_side is not None:
            lists = rated_lists(np.zeros(len(rated), np.int64), rated, residuals, 1,
                                len(self.item_support))  # fmt: skip
            average = self._average(replace(self.item_side, lists=lists), owner, targets, counts)
            for k in counts:
                columns[k].append(average[k][0])
        if self.user_side is not None:
            row = self.new_user_similarity(rated, residuals)
            side = self._new_user_side(self.user_side, row)
            average = self._average(side, targets, owner, counts)
            for k in counts:
                columns[k].append(average[k][0])
        if self.factors is not None:
            dot = self.item_factors_of(rated, residuals, targets)
            for k in counts:
                columns[k].append(dot)
        user_support = folded_support(len(rated), len(targets))
        # without the implicit score: KMeansKNN._predict_folded adds it for users with as many
        # ratings as the training users whose weights it has
        return {
            k: _design(parts, user_support, self.item_support[targets])
            for k, parts in columns.items()
        }

    def item_factors_of(
        self, rated: np.ndarray, residuals: np.ndarray, targets: np.ndarray
    ) -> np.ndarray:
        """The factor part of a new user: their factor vector solved as ALS solves a
        training user's (weighted-lambda ridge, the penalty of at least
        :data:`FOLD_IN_FACTOR_RATINGS` ratings), dotted with the targets' factors."""
        assert self.factors is not None
        item_factors = self.factors[1]
        chosen = item_factors[rated]
        weight = max(len(rated), FOLD_IN_FACTOR_RATINGS)
        penalty = self.config.factor_regularization * weight + 1e-6
        gram = chosen.T @ chosen + penalty * np.eye(item_factors.shape[1])
        user_factor = np.linalg.solve(gram, chosen.T @ residuals)
        return np.asarray(item_factors[targets] @ user_factor)

    def new_user_similarity(self, rated: np.ndarray, residuals: np.ndarray) -> np.ndarray:
        """Similarity of a new user to every training user, as
        :func:`recommender.neighbors.shrunk_similarity` computes it between training users;
        only the columns the new user rated are read."""
        config = self.config
        columns = self.user_columns[:, rated]
        mask = columns.copy()
        mask.data = np.ones_like(mask.data)
        x = residuals.astype(np.float32)
        covariance = columns @ x
        support = mask @ np.ones(len(rated), dtype=np.float32)
        if config.similarity == "pearson":
            squares = columns.copy()
            squares.data = squares.data**2
            norms = np.sqrt((squares @ np.ones(len(rated), np.float32)) * (mask @ (x * x)))
        else:
            norms = self.user_lengths * float(np.sqrt((x * x).sum()))
        similarity = np.divide(covariance, norms, out=np.zeros_like(covariance), where=norms > 0)
        overlap = np.maximum(support - 1.0, 0.0)
        shrink = config.shrinkage
        similarity *= overlap / (overlap + shrink) if shrink > 0 else (overlap > 0)
        similarity[support < config.min_support] = 0.0
        return similarity.astype(np.float32)

    def _keep_user_columns(self, train: Ratings, residuals: np.ndarray) -> None:
        """The training residuals (net of cluster biases) by item column, for fold-in."""
        users, items = train.user_index, train.item_index
        shape = (train.n_users, train.n_items)
        self.user_columns = sp.csc_matrix(
            sparse_rows(users, items, residuals.astype(np.float32), shape)
        )
        squares = np.bincount(users, residuals.astype(np.float64) ** 2, minlength=shape[0])
        self.user_lengths = np.sqrt(squares)

    @abstractmethod
    def _new_user_side(self, side: Any, similarity: np.ndarray) -> Any:
        """The user-KNN side with a single target: the new user, of this similarity row."""


def _design(
    parts: list[np.ndarray], user_support: np.ndarray, item_support: np.ndarray,
    implicit: np.ndarray | None = None,
) -> np.ndarray:  # fmt: skip
    """Blend inputs: the parts, the parts scaled by user/item support (trust a KNN more where
    there is more data; feature-weighted linear stacking), and the supports; then the
    implicit score, alone and scaled by each support, when given."""
    predictors = np.column_stack(parts)
    columns = [
        np.ones(len(user_support)),
        predictors,
        predictors * user_support[:, None],
        predictors * item_support[:, None],
        user_support,
        item_support,
    ]
    if implicit is not None:  # last
        columns.append(implicit_columns(implicit, user_support, item_support))
    return np.column_stack(columns)


IMPLICIT_COLUMNS = 3


def implicit_columns(
    implicit: np.ndarray, user_support: np.ndarray, item_support: np.ndarray
) -> np.ndarray:
    """The blend's :data:`IMPLICIT_COLUMNS` columns of the implicit score: alone and scaled by
    the user's and the item's support."""
    return np.column_stack([implicit, implicit * user_support, implicit * item_support])


def folded_support(n_ratings: int, n_targets: int) -> np.ndarray:
    """The user support column of a folded-in user with ``n_ratings`` known ratings."""
    return np.full(n_targets, np.log1p(n_ratings) / 7)


class _DenseParts(_Parts):
    """The parts on dense users x items arrays: exact neighbourhoods over every user or item."""

    def __init__(
        self, train: Ratings, config: KMeansKNNConfig, held_out: bool = False,
        inner: _Parts | None = None, held: np.ndarray | None = None,
    ) -> None:  # fmt: skip
        """``held``: the training ratings (mask) whose blend inputs :meth:`loo_parts` will
        give: keep the similarities' sums and fit the factors without them first."""
        super().__init__(train, config, held_out)
        self.held = held
        users, items = train.user_index, train.item_index
        residuals = self.biases.residuals(train).astype(np.float32)
        dense = np.zeros((train.n_users, train.n_items), dtype=np.float32)
        dense[users, items] = residuals
        rated = np.zeros_like(dense)
        rated[users, items] = 1.0
        self.user_labels, self.item_labels = self._cluster_labels(dense, dense.T, inner)
        self.cluster_bias = self._cluster_bias(dense, rated)
        models = self._residual_models(train, dense, rated, inner)
        self.models = models
        self.item_side = self._side(models.item_similarity, models.item_lists, self.item_labels)
        self.user_side = self._side(models.user_similarity, models.user_lists, self.user_labels)
        self.factors = models.factors
        self._keep_user_columns(train, dense[users, items])
        if config.implicit_blend and config.n_parts > 1:
            # the ranking scorer's config (a fit on equal ratings is shared with the ranker)
            self.implicit = ImplicitKNN(config.ranking or ImplicitKNNConfig()).fit(train)

    def drop_loo_inputs(self) -> None:
        """Forget what only :meth:`loo_parts` reads (the similarities' sums, the factors fit
        without the held share), once the blend is fit: a model kept (pickled, served)
        without them is half the size (ml-100k: 48 MB, not 92). The component cache keeps
        its own reference for other fits on the same data."""
        self.models = replace(self.models, item_stats=None, user_stats=None, held_factors=None)
        self.held = None

    def _cluster_bias(self, dense: np.ndarray, rated: np.ndarray) -> np.ndarray:
        """Damped mean residual of each (user cluster, item) and (user, item cluster)."""
        bias = np.zeros_like(dense)
        if not self.config.cluster_biases:
            return bias
        damping = self.config.cluster_bias_damping
        if self.user_labels is not None:
            members = np.eye(self.config.n_clusters, dtype=np.float32)[self.user_labels]
            per_cluster = damped_average(members.T @ dense, members.T @ rated, damping)
            bias += per_cluster[self.user_labels]
        if self.item_labels is not None:
            members = np.eye(self.config.n_clusters, dtype=np.float32)[self.item_labels]
            remaining = (dense - bias) * rated
            per_cluster = damped_average(remaining @ members, rated @ members, damping)
            bias += per_cluster[:, self.item_labels]
        return bias

    def _residual_models(
        self, train: Ratings, dense: np.ndarray, rated: np.ndarray, inner: _Parts | None
    ) -> _ResidualModels:
        """Similarities, lists and factors of the residuals net of the cluster biases. With no
        cluster biases they do not depend on the clusters: shared between fits (cache); a
        refit after the validation fit ``inner`` builds on its factors."""
        config = self.config
        if config.cluster_biases and (self.user_labels is not None or self.item_labels is not None):
            dense -= self.cluster_bias * rated
            if self.held is not None:  # the single fit: its factors without the held share too
                return _loo_models(train, config, dense, rated, self.held)
            return _ResidualModels.fit(train, config, dense, rated)
        if isinstance(inner, _DenseParts):
            fields = (*_RESIDUAL_FIELDS, "validation_fraction")
            key = ("kmeans_knn.residual_models.refit", train.fingerprint,
                   config_key(config, only=fields))  # fmt: skip
            # the models on all the training ratings after the validation fit: similarities
            # anew (reusing the validation fit's 90% cost 0.001 RMSE), the factors refined from
            # its factors by REFIT_FACTOR_ITERATIONS ALS sweeps, not from random
            start = inner.factors
            return shared_component(
                key, lambda: _ResidualModels.fit(train, config, dense, rated, start=start)
            )
        if self.held is not None:
            held = self.held
            fields = (*_RESIDUAL_FIELDS, "validation_fraction")
            key = ("kmeans_knn.residual_models.loo", train.fingerprint,
                   config_key(config, only=fields))  # fmt: skip
            return shared_component(key, lambda: _loo_models(train, config, dense, rated, held))
        key = (
            "kmeans_knn.residual_models", train.fingerprint,
            config_key(config, only=_RESIDUAL_FIELDS),
        )  # fmt: skip
        return shared_component(key, lambda: _ResidualModels.fit(train, config, dense, rated))

    def _side(
        self, similarity: np.ndarray | None, lists: RatedLists | None, labels: np.ndarray | None
    ) -> _Side | None:
        """A neighbourhood with out-of-cluster similarities scaled by ``cluster_weight`` (a new
        array: the shared raw similarity is never modified)."""
        if similarity is None or lists is None:
            return None
        if labels is None:
            labels = np.zeros(len(similarity), dtype=np.int64)
        else:
            same = labels[:, None] == labels[None, :]
            weight = np.where(same, 1.0, self.config.cluster_weight).astype(np.float32)
            similarity = similarity * weight
        return _Side(similarity, lists, labels)

    def base(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Baseline plus cluster biases for known positions."""
        return self.biases.predict(users, items) + self.cluster_bias[users, items]

    def loo_parts(
        self, train: Ratings, chosen: np.ndarray, counts: Sequence[int]
    ) -> tuple[dict[int, np.ndarray], np.ndarray]:
        """``({k: design}, target)`` of the training ratings ``chosen`` as if each had been left
        out of the fit (approximately): the blend's inputs without a held-out fit.

        The baseline without the rating: its user's (item's) bias moves by the residual over
        (count - 1 + damping), which raises the target residual and the user's (item's) other
        residuals by as much. The KNN sides: similarities with the pair's own residuals taken
        out of their sums (exact given the residuals). The factors: those fit without the held
        share (``held_factors``; a ridge-leverage correction of the full fit's did not work:
        u1 validation RMSE 0.937 and worse). The implicit score:
        :meth:`ImplicitKNN.loo_scores`."""
        config = self.config
        users, items = train.user_index[chosen], train.item_index[chosen]
        residual = (train.values[chosen] - self.base(users, items)).astype(np.float32)
        user_count = np.bincount(train.user_index, minlength=train.n_users)[users]
        item_count = np.bincount(train.item_index, minlength=train.n_items)[items]
        user_shift = residual / np.maximum(user_count - 1 + config.user_damping, 1.0)
        item_shift = residual / np.maximum(item_count - 1 + config.item_damping, 1.0)
        target = (residual + user_shift + item_shift).astype(np.float64)
        columns: dict[int, list[np.ndarray]] = {k: [] for k in counts}
        damping = config.neighbor_damping
        for side, stats, owners, targets, shift in (
            (self.item_side, self.models.item_stats, users, items, user_shift),
            (self.user_side, self.models.user_stats, items, users, item_shift),
        ):
            if side is None:
                continue
            assert stats is not None, "fit with loo=True"
            pair_weight = None
            if side.labels is not None and config.n_clusters > 1:
                same = side.labels[:, None] == side.labels[None, :]
                pair_weight = np.where(same, 1.0, config.cluster_weight).astype(np.float32)
            average = loo_neighborhood_average(
                stats, side.lists, owners, targets, residual, counts, damping,
                config.shrinkage, config.min_support, shift, pair_weight,
            )  # fmt: skip
            for k in counts:
                columns[k].append(average[k][0])
        if self.models.held_factors is not None:
            user_factors, item_factors = self.models.held_factors
            dot = (user_factors[users] * item_factors[items]).sum(axis=1)
            for k in counts:
                columns[k].append(dot)
        implicit = None if self.implicit is None else self.implicit.loo_scores(users, items)
        designs = {
            k: _design(parts, self.user_support[users], self.item_support[items], implicit)
            for k, parts in columns.items()
        }
        return designs, target

    def _average(
        self, side: Any, owners: np.ndarray, targets: np.ndarray, counts: Sequence[int]
    ) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        damping = self.config.neighbor_damping
        return neighborhood_average(side.similarity, side.lists, owners, targets, counts, damping)

    def _new_user_side(self, side: Any, similarity: np.ndarray) -> Any:
        return replace(side, similarity=similarity[None, :])


@dataclass(frozen=True)
class _ClusterBias:
    """Damped mean residual of each (user cluster, item), then of each (user, item cluster)
    on what remains: the dense engine's cluster biases as two small tables."""

    user_labels: np.ndarray | None
    item_labels: np.ndarray | None
    by_user_cluster: np.ndarray | None
    by_item_cluster: np.ndarray | None

    @classmethod
    def fit(
        cls, train: Ratings, residuals: np.ndarray, parts: _Parts, n_clusters: int, damping: float
    ) -> _ClusterBias:
        users, items = train.user_index, train.item_index
        remaining = residuals.astype(np.float64)
        by_user_cluster = by_item_cluster = None
        if parts.user_labels is not None:
            cells = (n_clusters, train.n_items)
            keys = np.ravel_multi_index((parts.user_labels[users], items), cells)
            by_user_cluster = _damped_mean(keys, remaining, cells, damping)
            remaining = remaining - by_user_cluster[parts.user_labels[users], items]
        if parts.item_labels is not None:
            cells = (train.n_users, n_clusters)
            keys = np.ravel_multi_index((users, parts.item_labels[items]), cells)
            by_item_cluster = _damped_mean(keys, remaining, cells, damping)
        return cls(parts.user_labels, parts.item_labels, by_user_cluster, by_item_cluster)

    def at(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        bias = np.zeros(len(users))
        if self.by_user_cluster is not None and self.user_labels is not None:
            bias += self.by_user_cluster[self.user_labels[users], items]
        if self.by_item_cluster is not None and self.item_labels is not None:
            bias += self.by_item_cluster[users, self.item_labels[items]]
        return bias


def _damped_mean(
    keys: np.ndarray, values: np.ndarray, shape: tuple[int, int], damping: float
) -> np.ndarray:
    cells = shape[0] * shape[1]
    sums = np.bincount(keys, values, minlength=cells)
    return damped_average(sums, np.bincount(keys, minlength=cells), damping).reshape(shape)


@dataclass(frozen=True)
class _SparseSide:
    """A neighbourhood of the sparse engine: each entity's kept neighbours and the lists."""

    neighbors: TopNeighbors
    lists: RatedLists


def _both_ways(train: Ratings, residuals: np.ndarray) -> tuple[Any, Any]:
    """The residuals as users x items and as items x users sparse rows."""
    users, items = train.user_index, train.item_index
    by_user = sparse_rows(users, items, residuals, (train.n_users, train.n_items))
    return by_user, by_user.T.tocsr()


class _SparseParts(_Parts):
    """The parts on sparse matrices: each item's (user's) top ``kept_neighbors`` found block-wise
    among the items (users) of its K-Means cluster, so no users x items or items x items
    array is ever built and more clusters make the search cheaper."""

    def __init__(
        self, train: Ratings, config: KMeansKNNConfig, held_out: bool = False,
        inner: _Parts | None = None,
    ) -> None:  # fmt: skip
        super().__init__(train, config, held_out)
        users, items = train.user_index, train.item_index
        residuals = self.biases.residuals(train).astype(np.float32)
        by_user, by_item = _both_ways(train, residuals)
        self.user_labels, self.item_labels = self._cluster_labels(by_user, by_item, inner)
        self.cluster_bias: _ClusterBias | None = None
        if config.cluster_biases and (self.user_labels is not None or self.item_labels is not None):
            self.cluster_bias = _ClusterBias.fit(
                train, residuals, self, config.n_clusters, config.cluster_bias_damping
            )
            residuals = residuals - self.cluster_bias.at(users, items).astype(np.float32)
            by_user, by_item = _both_ways(train, residuals)
            self.factors = _factors(train, config, residuals)
        else:
            inner_factors = inner.factors if inner is not None else None
            fields = _FACTOR_FIELDS if inner is None else (*_FACTOR_FIELDS, "validation_fraction")
            key = ("kmeans_knn.factors", inner is not None, train.fingerprint,
                   config_key(config, only=fields))  # fmt: skip
            self.factors = shared_component(
                key, lambda: _factors(train, config, residuals, inner_factors)
            )
        self._keep_user_columns(train, residuals)
        self.item_side = self.user_side = None
        if config.based in ("item", "both"):
            lists = rated_lists(users, items, residuals, train.n_users, train.n_items)
            self.item_side = _SparseSide(self._neighbors(by_item, self.item_labels), lists)
        if config.based in ("user", "both"):
            lists = rated_lists(items, users, residuals, train.n_items, train.n_users)
            self.user_side = _SparseSide(self._neighbors(by_user, self.user_labels), lists)

    def _neighbors(self, rows: Any, labels: np.ndarray | None) -> TopNeighbors:
        config = self.config
        return top_neighbors(
            rows, config.kept_neighbors, config.similarity, config.shrinkage, config.min_support,
            labels, config.cluster_weight,
        )  # fmt: skip

    def base(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        base = self.biases.predict(users, items)
        return base if self.cluster_bias is None else base + self.cluster_bias.at(users, items)

    def _average(
        self, side: Any, owners: np.ndarray, targets: np.ndarray, counts: Sequence[int]
    ) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        damping = self.config.neighbor_damping
        return top_k_average(side.neighbors, side.lists, owners, targets, counts, damping)

    def _new_user_side(self, side: Any, similarity: np.ndarray) -> Any:
        k = min(self.config.kept_neighbors, len(similarity))
        best = np.argpartition(-similarity, k - 1)[:k] if k < len(similarity) else np.arange(k)
        best = best[np.argsort(-similarity[best], kind="stable")]
        values = np.maximum(similarity[best], 0.0)
        indices = np.where(values > 0, best, len(similarity)).astype(np.int32)
        return replace(side, neighbors=TopNeighbors(indices[None, :], values[None, :]))


def _sessions(train: Ratings, parts: _Parts, seconds: float) -> tuple[Sessions, np.ndarray]:
    """The ratings of ``train`` by user and time, with their residuals from ``parts``' base."""
    assert train.timestamps is not None
    users = train.user_index
    residuals = train.values - parts.base(users, train.item_index)
    return Sessions.fit(users, train.timestamps, residuals, train.n_users, seconds)


class KMeansKNN(RecommenderModel[KMeansKNNConfig]):
    """K-Means + KNN recommender; ``KMeansKNN()`` is the best configuration found.

    ``predict``: baseline + a blend of residual KNN predictions, the factors' and the
    implicit-feedback score (weights fit on a share of the training ratings: on their
    leave-one-out predictions on small dense sets, else on the predictions of parts fit
    without them; ``blend_fit``);
    ``recommend``: the implicit-feedback scorer ``ranker_``.
    The parts that do not depend on the clusters or ``n_neighbors`` (raw similarities, rated
    lists, latent factors, the ranker) are shared, read-only, between fits on equal data
    (:mod:`recommender.cache`), so a cluster sweep fits them once.
    """

    config_class = KMeansKNNConfig
    blend_counts: tuple[int, ...] = SWEEP_NEIGHBORS
    """Neighbour counts whose blend weights a fit learns besides ``n_neighbors`` (a neighbour
    sweep sets its own): ``predict(..., n_neighbors=k)`` needs k's weights."""

    def _fit(self, train: Ratings, *, users: Any | None) -> None:
        config = self.config
        counts = sorted({config.n_neighbors, *self.blend_counts})
        self.blend_weights_, self.fold_in_weights_, self.session_weights_, inner = (
            self._blend_weights(train, counts)
        )
        # fold-ins with at least this many ratings blend the implicit score (as many as all
        # but the 5% fewest-rated training users had, on whom its weights were learnt)
        per_user = np.bincount(train.user_index, minlength=train.n_users)
        self.implicit_fold_in_ratings_ = int(np.percentile(per_user[per_user > 0], 5))
        kept = inner if (self.single_fit(train) or not config.refit) else None
        if isinstance(kept, _DenseParts):
            kept.drop_loo_inputs()
        parts = kept if kept is not None else self._parts_class(train)(train, config, inner=inner)
        self.parts_: _Parts = parts
        self.sessions_: Sessions | None = None
        if any(self.session_weights_.values()):
            self.sessions_ = _sessions(train, parts, config.session_seconds)[0]
        self.cluster_labels_ = parts.user_labels if config.based != "item" else parts.item_labels
        self.similarity_ = self.neighbors_ = None
        if isinstance(parts, _DenseParts):
            sides = [s for s in (parts.item_side, parts.user_side) if s is not None]
            self.similarity_ = sides[0].similarity if sides else None
        elif isinstance(parts, _SparseParts):
            sparse_sides = [s for s in (parts.item_side, parts.user_side) if s is not None]
            self.neighbors_ = sparse_sides[0].neighbors if sparse_sides else None
        self.ranker_: ImplicitKNN | ItemKNNScorer | None = None
        if config.ranking is not None and isinstance(parts, _SparseParts):
            self.ranker_ = ItemKNNScorer.fit(train, config.ranking, parts.item_labels)
        elif config.ranking is not None:
            self.ranker_ = ImplicitKNN(config.ranking).fit(train)
        # The cold-start clusters serve fold-ins only (a service-time call): fit on first
        # use, or when the model is pickled for serving, not by every fit of a sweep.
        self._fold_in_users = users
        self._cluster_prior: ClusterPrior | None = None

    @property
    def cluster_prior_(self) -> ClusterPrior:
        """The cold-start user clusters (:class:`recommender.foldin.ClusterPrior`), fit on
        the training ratings the first time a fold-in (or pickling) needs them."""
        self._check_fitted()
        with _PRIOR_LOCK:
            if self._cluster_prior is None:
                config = self.config
                self._cluster_prior = ClusterPrior.fit(
                    self.ratings_, self.baseline_, config.fold_in_clusters,
                    users=self._fold_in_users, components=config.cluster_components,
                    damping=config.fold_in_damping, temperature=config.fold_in_temperature,
                    liked_rating=self.rating_range_[1] - 1.0, seed=config.seed,
                )  # fmt: skip
            return self._cluster_prior

    def __getstate__(self) -> dict[str, Any]:
        """A pickled model is one about to be served: it carries its cold-start clusters."""
        if self.is_fitted:
            _ = self.cluster_prior_
        state = dict(self.__dict__)
        state["_fold_in_users"] = None  # no longer needed once the prior is fit
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Models pickled before the prior was lazy hold it as ``cluster_prior_``.
        if "cluster_prior_" in state:
            state["_cluster_prior"] = state.pop("cluster_prior_")
        state.setdefault("_cluster_prior", None)
        state.setdefault("fold_in_weights_", state.get("blend_weights_", {}))
        state.setdefault("implicit_fold_in_ratings_", 0)
        state.setdefault("_fold_in_users", None)
        state.setdefault("session_weights_", {})
        state.setdefault("sessions_", None)
        self.__dict__.update(state)

    def single_fit(self, train: Ratings) -> bool:
        """Whether the parts are fit once (``blend_fit`` loo, dense engine, a blend)."""
        config = self.config
        return config.loo_for(train) and config.n_parts > 1 and not config.sparse_for(train)

    def _parts_class(self, train: Ratings) -> type[_Parts]:
        return _SparseParts if self.config.sparse_for(train) else _DenseParts

    def _blend_weights(
        self, train: Ratings, counts: Sequence[int]
    ) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray], dict[int, float], _Parts | None]:
        """Least-squares weights ``[intercept, part...]`` per neighbour count, fit on a held-out
        share of the training ratings, the weights without the implicit score (for users
        folded in), the session offset's weight per count, and the parts fit without that
        share; a single part needs no blend (and no such parts).

        A folded-in user's implicit score from a handful of ratings is on another scale than
        a training user's, so users folded in with fewer ratings than
        ``implicit_fold_in_ratings_`` blend without it. Chosen with the cold-start protocol on
        validation folds carved from u1..u5's training data (bench/cold_start.py
        --validation; RMSE with / without it): k=3 1.0350 / 1.0293, k=10 1.0130 / 1.0134,
        k=15 0.9964 / 0.9977, k=40 0.9616 / 0.9636."""
        config = self.config
        if config.n_parts == 1:
            # Just the one residual prediction: intercept 0, weight 1, no support terms.
            single = np.zeros(3 + 3 * config.n_parts)
            single[1] = 1.0
            weights = {k: single for k in counts}
            return weights, weights, {}, None
        rng = np.random.default_rng(config.seed)
        held = rng.random(len(train)) < config.validation_fraction
        fitted_on = np.flatnonzero(held)
        if len(fitted_on) > BLEND_PAIRS:
            fitted_on = np.sort(rng.choice(fitted_on, BLEND_PAIRS, replace=False))
        inner: _Parts
        if self.single_fit(train):
            # the parts on all the ratings; the weights on leave-one-out predictions
            inner = _DenseParts(train, config, held=held)
            designs, target = inner.loo_parts(train, fitted_on, counts)
        else:
            inner = self._parts_class(train)(train.subset(~held), config, held_out=True)
            users, items = train.user_index[fitted_on], train.item_index[fitted_on]
            target = train.values[fitted_on] - inner.base(users, items)
            designs = inner.residual_parts(users, items, counts)
        weights, fold_in = {}, {}
        for k, design in designs.items():
            weights[k] = np.linalg.lstsq(design, target, rcond=None)[0]
            fold_in[k] = weights[k]
            if inner.implicit is not None:  # the implicit score's columns come last
                explicit = design[:, :-IMPLICIT_COLUMNS]
                fold_in[k] = np.linalg.lstsq(explicit, target, rcond=None)[0]
        logger.debug("blend weights at k=%d: %s", config.n_neighbors, weights[config.n_neighbors])
        left = {k: target - design @ weights[k] for k, design in designs.items()}
        return weights, fold_in, self._session_weights(train, inner, held, fitted_on, left), inner

    def _session_weights(
        self, train: Ratings, inner: _Parts, held: np.ndarray, fitted_on: np.ndarray,
        left: dict[int, np.ndarray],
    ) -> dict[int, float]:  # fmt: skip
        """Per count, the least-squares weight of the session offset
        (:mod:`recommender.temporal`) on what the blend ``left`` of the held-out ratings
        ``fitted_on``; none without timestamps. A held-out rating's offset comes from the
        other ratings the parts were fit on."""
        seconds = self.config.session_seconds
        if seconds <= 0 or train.timestamps is None:
            return {}
        users = train.user_index[fitted_on]
        if self.single_fit(train):
            sessions, positions = _sessions(train, inner, seconds)
            offsets = sessions.offsets(users, positions=positions[fitted_on])
        else:
            sessions, _ = _sessions(train.subset(~held), inner, seconds)
            offsets = sessions.offsets(users, train.timestamps[fitted_on])
        square = float(offsets @ offsets)
        return {k: float(offsets @ y) / square if square > 0 else 0.0 for k, y in left.items()}

    def _time_offsets(
        self, users: np.ndarray, times: np.ndarray, counts: Sequence[int | None]
    ) -> dict[int | None, np.ndarray | float]:
        if self.sessions_ is None:
            return dict.fromkeys(counts, 0.0)
        offsets = self.sessions_.offsets(users, times)
        weights = self.session_weights_
        found: dict[int | None, np.ndarray | float] = {}
        for k in counts:
            weight = weights.get(k or self.config.n_neighbors, weights[self.config.n_neighbors])
            found[k] = weight * offsets
        return found

    def _weights_for(self, k: int) -> np.ndarray:
        if k in self.blend_weights_:
            return self.blend_weights_[k]
        logger.info(
            "no blend weights fit for k=%d; using those of k=%d", k, self.config.n_neighbors
        )
        return self.blend_weights_[self.config.n_neighbors]

    def _predict_index(
        self, users: np.ndarray, items: np.ndarray, n_neighbors: int | None = None
    ) -> np.ndarray:
        k = n_neighbors or self.config.n_neighbors
        return self._blend(users, items, [k])[k]

    def _blend(
        self, users: np.ndarray, items: np.ndarray, counts: Sequence[int]
    ) -> dict[int, np.ndarray]:
        base = self.parts_.base(users, items)
        predictions = {}
        for k, design in self.parts_.residual_parts(users, items, counts).items():
            predictions[k] = base + design @ self._weights_for(k)
        return predictions

    def _predict_index_for_neighbors(
        self, users: np.ndarray, items: np.ndarray, counts: Sequence[int]
    ) -> dict[int, np.ndarray]:
        """Every count from one similarity and one partial sort."""
        return self._blend(users, items, list(counts))

    @property
    def ranking_depends_on_neighbors(self) -> bool:
        return self.config.ranking is None

    def _score_users(self, users: np.ndarray, n_neighbors: int | None = None) -> np.ndarray:
        if self.ranker_ is None:
            return super()._score_users(users, n_neighbors)
        return self.ranker_._score_users(users)

    def _score_users_for_neighbors(
        self, users: np.ndarray, counts: Sequence[int]
    ) -> dict[int, np.ndarray]:
        if self.ranker_ is None:
            return self._predicted_scores(users, counts)
        scores = self.ranker_._score_users(users)  # the ranker ignores the neighbour count
        return dict.fromkeys(counts, scores)

    # -- fold-in of users not in the training data ----------------------------------------

    def _fold_in(
        self, items: np.ndarray, values: np.ndarray, n_ignored: int, user_bias: float,
        demographics: Mapping[str, Any] | None,
    ) -> FoldedUser:  # fmt: skip
        """Posterior over the cold-start user clusters from the ratings and demographics."""
        prior = self.cluster_prior_
        residuals = values - self._folded_base(user_bias, items)
        weights, used_demographics = prior.posterior(items, residuals, demographics)
        if len(items):
            strategy = FOLD_IN
        elif used_demographics and prior.n_clusters > 1:
            strategy = COLD_START_CLUSTER
        else:
            strategy = COLD_START_POPULAR
        share = prior_share(len(items), self.config.fold_in_prior)
        return FoldedUser(items, values, n_ignored, user_bias, strategy, weights, share)

    def _folded_base(self, user_bias: float, items: np.ndarray) -> np.ndarray:
        return self.baseline_.mean + user_bias + self.baseline_.item_bias[items]

    def _predict_folded(self, user: FoldedUser, items: np.ndarray) -> np.ndarray:
        """Baseline (with the folded user bias) + the blend of the user's KNN parts + the
        clusters' deviation, weighted ``fold_in_rating_prior / (fold_in_rating_prior + n)``."""
        predictions = self._folded_base(user.user_bias, items)
        if user.n_ratings:
            k = self.config.n_neighbors
            residuals = user.values - self._folded_base(user.user_bias, user.items)
            design = self.parts_.folded_parts(user.items, residuals, items, [k])[k]
            implicit = self.parts_.implicit
            if implicit is not None and user.n_ratings >= self.implicit_fold_in_ratings_:
                scores = implicit.score_new_user(user.items)[items].astype(np.float64)
                support = folded_support(user.n_ratings, len(items))
                added = implicit_columns(scores, support, self.parts_.item_support[items])
                predictions = predictions + np.column_stack([design, added]) @ self._weights_for(k)
            else:
                predictions = predictions + design @ self.fold_in_weights_[k]
        if user.cluster_weights is not None:
            share = prior_share(user.n_ratings, self.config.fold_in_rating_prior)
            predictions = predictions + share * self.cluster_prior_.rating_prior(
                user.cluster_weights, items
            )
        return predictions

    def _score_folded(self, user: FoldedUser) -> np.ndarray:
        """The ranker's scores from the user's rated items, blended with the share of the
        user's clusters who liked each item; the prior's weight shrinks with the ratings."""
        if self.ranker_ is None:
            return super()._score_folded(user)
        assert user.cluster_weights is not None
        prior = scaled(self.cluster_prior_.ranking_prior(user.cluster_weights))
        if user.n_ratings == 0:
            return prior
        # The ranker's scores are already on a 0..1 scale (it blends scaled scorers).
        own = self.ranker_.score_new_user(user.items).astype(np.float64)
        if isinstance(self.ranker_, ItemKNNScorer):  # sums of similarities: put them on 0..1
            own = scaled(own)
        return (1.0 - user.prior_share) * own + user.prior_share * prior
