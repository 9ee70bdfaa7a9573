"""The sweep's pure helpers: which runs register, which plots say something, the cold-start
metric names, a version's description."""

from __future__ import annotations

import polars as pl
import pytest

from tasks.caching import code_version
from tasks.train.sweep import (
    SweepRecord,
    cluster_tradeoff,
    cold_start_metrics,
    informative,
    model_identity,
    registers_by_default,
    version_description,
)
from tasks.train.units import TrainingSet, cold_start_table

TRAINING = TrainingSet(
    dataset="ml-100k", lake_url="file:///lake", version="v1", ratings=100000, users=943,
    items=1682, folds=(1, 2, 3, 4, 5),
)  # fmt: skip
DEFAULT = {"kinds": ["kmeans_knn", "bias"], "n_clusters": [1, 2], "n_neighbors": [10, 20]}


def test_only_a_run_on_every_fold_and_the_default_grid_registers_by_default() -> None:
    assert registers_by_default(DEFAULT, [1, 2, 3, 4, 5], TRAINING, DEFAULT)
    assert registers_by_default({**DEFAULT, "kinds": ["bias", "kmeans_knn"]}, [5, 4, 3, 2, 1],
                                TRAINING, DEFAULT)  # fmt: skip
    assert not registers_by_default(DEFAULT, [1], TRAINING, DEFAULT)
    assert not registers_by_default({**DEFAULT, "n_clusters": [1]}, [1, 2, 3, 4, 5], TRAINING,
                                    DEFAULT)  # fmt: skip


def test_model_identity_is_data_configuration_and_code() -> None:
    one = model_identity(TRAINING, {"kind": "bias", "damping": 10})
    same = model_identity(TRAINING, {"damping": 10, "kind": "bias"})
    other = model_identity(TRAINING.model_copy(update={"version": "v2"}), {"kind": "bias"})

    assert one == same
    assert one["code_version"] == code_version()
    assert other["dataset_version"] == "v2" and other != one


def test_a_flat_metric_is_not_informative() -> None:
    assert not informative(pl.Series([0.385, 0.385, 0.385, None]))
    assert not informative(pl.Series([0.4, float("nan")]))
    assert informative(pl.Series([0.38, 0.39]))


def test_cluster_tradeoff_is_the_best_rmse_and_mean_fit_per_cluster_count() -> None:
    table = pl.DataFrame(
        {"kind": ["kmeans_knn"] * 4 + ["bias"], "n_clusters": [2, 1, 1, 2, None],
         "n_neighbors": [10, 10, 20, 20, None], "rmse": [0.95, 0.91, 0.90, 0.94, 0.8],
         "fit_seconds": [1.0, 3.0, 5.0, 2.0, 0.1]}
    )  # fmt: skip

    tradeoff = cluster_tradeoff(table)

    assert tradeoff.rows() == [(1, 0.90, 4.0), (2, 0.94, 1.5)]


def test_cold_start_metrics_are_named_by_metric_k_and_method() -> None:
    records = [
        {"fold": f, "method": "kmeans", "k": 3, "n_users": 9, "ndcg_at_10": v,
         "precision_at_10": 0.1, "rmse": 1.0}
        for f, v in ((1, 0.2), (2, 0.4))
    ]  # fmt: skip

    metrics = {m.key: m.value for m in cold_start_metrics(cold_start_table(records))}

    assert metrics == {
        "cold_start_ndcg_at_10_k3_kmeans": pytest.approx(0.3),
        "cold_start_precision_at_10_k3_kmeans": pytest.approx(0.1),
        "cold_start_rmse_k3_kmeans": pytest.approx(1.0),
    }


def test_a_version_description_says_what_it_is_its_data_and_metrics() -> None:
    sweep = SweepRecord(
        parent_run_id="abc", metric="rmse", table_csv="", folds=[1, 2, 3, 4, 5],
        best={"params": {"kind": "kmeans_knn", "n_clusters": 1, "n_neighbors": 40},
              "metrics": {"rmse": 0.9041, "ndcg_at_10": 0.385}},
    )  # fmt: skip

    text = version_description(TRAINING, sweep)

    assert text.startswith("K-Means KNN (tuned) (kind kmeans_knn; n_clusters=1, n_neighbors=40)")
    assert "all 100,000 ratings of ml-100k version v1 (943 users, 1,682 items)" in text
    assert "folds 1, 2, 3, 4, 5: RMSE 0.9041, NDCG@10 0.3850" in text
    assert "sweep run abc" in text and code_version() in text
