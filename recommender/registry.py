"""Model kinds by name: build a model from a config, a kind name, or flat (MLflow) params."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from recommender.base import RecommenderModel
from recommender.baselines import BiasBaseline, BiasConfig, GlobalMean, GlobalMeanConfig
from recommender.config import ModelConfig, unflatten
from recommender.forest import ForestConfig, RandomForestRatings
from recommender.knn import KMeansKNN, KMeansKNNConfig
from recommender.paper import PaperConfig, PaperKNN
from recommender.popularity import Popularity, PopularityConfig
from recommender.ranking import ImplicitKNN, ImplicitKNNConfig

MODELS: dict[str, tuple[type[ModelConfig], type[RecommenderModel[Any]]]] = {
    "global_mean": (GlobalMeanConfig, GlobalMean),
    "bias": (BiasConfig, BiasBaseline),
    "popularity": (PopularityConfig, Popularity),
    "paper": (PaperConfig, PaperKNN),
    "kmeans_knn": (KMeansKNNConfig, KMeansKNN),
    "implicit_knn": (ImplicitKNNConfig, ImplicitKNN),
    "forest": (ForestConfig, RandomForestRatings),
}
"""kind -> (config class, model class)."""


def make_config(kind: str, **params: Any) -> ModelConfig:
    """The validated config of ``kind`` (e.g. ``make_config("kmeans_knn", n_clusters=4)``)."""
    if kind not in MODELS:
        raise ValueError(f"unknown model kind {kind!r}; known: {sorted(MODELS)}")
    return MODELS[kind][0](**params)


def config_from_params(params: Mapping[str, Any]) -> ModelConfig:
    """Rebuild a config from :meth:`ModelConfig.as_params` output (strings are fine)."""
    nested = unflatten(params)
    kind = nested.pop("kind", None)
    if kind is None:
        raise ValueError("params need a 'kind'")
    return make_config(str(kind), **nested)


def build_model(config: ModelConfig | str, **params: Any) -> RecommenderModel[Any]:
    """An unfitted model from a config, or from a kind name plus hyper-parameters."""
    if isinstance(config, str):
        config = make_config(config, **params)
    elif params:
        config = config.model_copy(update=params)
    config_class, model_class = MODELS[config.kind]
    return model_class(config_class.model_validate(config.model_dump()))
