"""MovieLens recommender models: K-Means + KNN hybrid, baselines, paper model, forest."""

from __future__ import annotations

from typing import Any

from recommender.base import RecommenderModel, not_fitted_error
from recommender.baselines import BiasBaseline, BiasConfig, GlobalMean, GlobalMeanConfig
from recommender.bias import Biases, fit_biases
from recommender.cache import clear_component_cache, component_cache_info
from recommender.clustering import (
    RatingClusters,
    cluster_labels,
    elbow_inertias,
    elbow_point,
    silhouette,
)
from recommender.config import ModelConfig
from recommender.data import (
    GENRES,
    Fold,
    ItemGenres,
    Ratings,
    load_items,
    load_official_folds,
    load_ratings,
    load_users,
)
from recommender.evaluate import (
    CrossValidationResult,
    FoldResult,
    cross_validate,
    evaluate_fitted,
    evaluate_fold,
    evaluate_neighbor_sweep,
    sweep_grid,
)
from recommender.forest import ForestConfig, RandomForestRatings
from recommender.knn import KMeansKNN, KMeansKNNConfig
from recommender.metrics import (
    coverage,
    hit_matrix,
    mae,
    map_at_k,
    ndcg_at_k,
    precision_at_k,
    ranking_scores,
    recall_at_k,
    rmse,
)
from recommender.paper import PAPER_RMSE, PaperConfig, PaperKNN
from recommender.popularity import Popularity, PopularityConfig
from recommender.ranking import ImplicitKNN, ImplicitKNNConfig
from recommender.registry import MODELS, build_model, config_from_params, make_config


def __getattr__(name: str) -> Any:
    # made on first use, not at import: see recommender.base.not_fitted_error
    if name == "ModelNotFittedError":
        return not_fitted_error()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), "ModelNotFittedError"})


__all__ = [
    "GENRES", "MODELS", "PAPER_RMSE", "BiasBaseline", "BiasConfig", "Biases",
    "CrossValidationResult", "Fold", "FoldResult", "ForestConfig", "GlobalMean",
    "GlobalMeanConfig", "ImplicitKNN", "ImplicitKNNConfig", "ItemGenres", "KMeansKNN",
    "KMeansKNNConfig", "ModelConfig", "ModelNotFittedError", "PaperConfig", "PaperKNN",
    "Popularity", "PopularityConfig", "RandomForestRatings", "RatingClusters", "Ratings",
    "RecommenderModel", "build_model", "clear_component_cache", "cluster_labels",
    "component_cache_info", "config_from_params", "coverage",
    "cross_validate", "elbow_inertias", "elbow_point", "evaluate_fitted", "evaluate_fold",
    "evaluate_neighbor_sweep", "fit_biases", "hit_matrix", "load_items", "load_official_folds",
    "load_ratings", "load_users", "mae", "make_config", "map_at_k", "ndcg_at_k",
    "precision_at_k", "ranking_scores", "recall_at_k", "rmse", "silhouette", "sweep_grid",
]  # fmt: skip
