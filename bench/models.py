"""Benchmark this project's models (and Surprise's, when installed) on the official folds.

    python bench/models.py [--data PATH] [--quick]

Prints RMSE, MAE, NDCG@10, P@10 and seconds per fold (fit + predict) side by side.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from recommender import (  # noqa: E402
    PAPER_RMSE,
    BiasConfig,
    Fold,
    ForestConfig,
    GlobalMeanConfig,
    ImplicitKNNConfig,
    KMeansKNNConfig,
    ModelConfig,
    PaperConfig,
    PopularityConfig,
    cross_validate,
    evaluate_neighbor_sweep,
    load_official_folds,
    load_users,
    mae,
    rmse,
)

Row = tuple[str, dict[str, float]]

SINGLE = {"n_factors": 0, "ranking": None}
RATING_MODELS: list[tuple[str, ModelConfig, bool]] = [
    # (label, config, rank?) -- ranking by predicted rating over every item is slow.
    ("global mean", GlobalMeanConfig(), False),
    ("damped bias baseline", BiasConfig(), True),
    ("paper: genre K-Means + Pearson user KNN", PaperConfig(), False),
    ("item KNN (shrunk Pearson, residuals)", KMeansKNNConfig(based="item", **SINGLE), False),
    ("user KNN (shrunk Pearson, residuals)", KMeansKNNConfig(based="user", **SINGLE), False),
    ("user KNN, 8 user clusters (restrict)", KMeansKNNConfig(based="user", n_clusters=8, **SINGLE), False),
    ("user KNN, 8 user clusters (weight 0.5)", KMeansKNNConfig(based="user", n_clusters=8, cluster_weight=0.5, **SINGLE), False),
    ("item KNN, 8 item clusters (weight 0.5)", KMeansKNNConfig(based="item", n_clusters=8, cluster_weight=0.5, **SINGLE), False),
    ("item+user KNN blend", KMeansKNNConfig(based="both", **SINGLE), False),
    ("item+user KNN blend + user-cluster biases", KMeansKNNConfig(based="both", n_clusters=4, cluster_weight=1.0, cluster_biases=True, **SINGLE), False),
    ("random forest (features of the train fold)", ForestConfig(), False),
    ("popularity", PopularityConfig(), True),
    ("implicit user-KNN only", ImplicitKNNConfig(item_weight=0.0), True),
    ("implicit user-KNN, 4 user clusters (weight 0.5)", ImplicitKNNConfig(item_weight=0.0, n_clusters=4, cluster_weight=0.5), True),
    ("implicit user-KNN + EASE item weights", ImplicitKNNConfig(), True),
    ("KMeansKNN() defaults", KMeansKNNConfig(), True),
]  # fmt: skip


def run_ours(folds: list[Fold], users: Any, quick: bool) -> list[Row]:
    rows = []
    for label, config, rank in RATING_MODELS:
        if quick and config.kind == "forest":
            continue
        result = cross_validate(config, folds, users=users, rank=rank)
        mean = result.mean
        mean["seconds"] = mean["fit_seconds"] + mean["predict_seconds"]
        rows.append((label, mean))
        logging.info("%s done", label)
    return rows


def run_surprise(folds: list[Fold]) -> list[Row]:
    try:
        from surprise import SVD, Dataset, KNNBaseline, Reader
    except ImportError:
        print("(scikit-surprise not importable: its rows are skipped)")
        return []
    import pandas as pd

    makers = {
        "Surprise KNNBaseline (item, pearson_baseline)": lambda: KNNBaseline(
            k=40, sim_options={"name": "pearson_baseline", "user_based": False}, verbose=False
        ),
        "Surprise SVD": lambda: SVD(random_state=0),
    }
    rows = []
    for label, make in makers.items():
        scores: dict[str, list[float]] = {"rmse": [], "mae": [], "seconds": []}
        for fold in folds:
            frame = pd.DataFrame(fold.train.to_dict())
            data = Dataset.load_from_df(
                frame[["user_id", "item_id", "rating"]], Reader(rating_scale=(1, 5))
            )
            test = fold.test.to_dict()
            started = time.perf_counter()
            algo = make()
            algo.fit(data.build_full_trainset())
            predicted = np.array(
                [
                    algo.predict(u, i).est
                    for u, i in zip(test["user_id"], test["item_id"], strict=True)
                ]
            )
            scores["seconds"].append(time.perf_counter() - started)
            scores["rmse"].append(rmse(predicted, test["rating"]))
            scores["mae"].append(mae(predicted, test["rating"]))
        mean = {name: float(np.mean(values)) for name, values in scores.items()}
        mean.update(ndcg_at_10=math.nan, precision_at_10=math.nan)
        rows.append((label, mean))
    return rows


def sweep_timing(folds: list[Fold]) -> None:
    print(
        "\nNeighbour sweep (one fit per fold, k = 10/20/40/80 from one similarity), mean of 5 folds"
    )
    print(f"{'kind':<10} {'k':>3} {'RMSE':>7} {'fit s':>7} {'predict s/k':>12}")
    for based in ("item", "user"):
        config = KMeansKNNConfig(based=based, **SINGLE)
        per_fold = [evaluate_neighbor_sweep(config, fold, rank=False) for fold in folds]
        for position, k in enumerate((10, 20, 40, 80)):
            results = [fold_results[position] for fold_results in per_fold]
            print(
                f"{based:<10} {k:>3} {np.mean([r.rmse for r in results]):>7.4f} "
                f"{np.mean([r.fit_seconds for r in results]):>7.3f} "
                f"{np.mean([r.predict_seconds for r in results]):>12.4f}"
            )


def print_table(rows: list[Row]) -> None:
    def cell(value: float, width: int, digits: int = 4) -> str:
        return f"{'-':>{width}}" if math.isnan(value) else f"{value:>{width}.{digits}f}"

    print(
        f"\n{'model (5-fold mean, u1..u5)':<50} {'RMSE':>7} {'MAE':>7} {'NDCG@10':>8} {'P@10':>7} {'s/fold':>7}"
    )
    for label, mean in rows:
        print(
            f"{label:<50} {cell(mean['rmse'], 7)} {cell(mean['mae'], 7)} "
            f"{cell(mean['ndcg_at_10'], 8)} {cell(mean['precision_at_10'], 7)} "
            f"{cell(mean['seconds'], 7, 3)}"
        )
    print(f"{'(paper reports, its own 80/20 split)':<50} {PAPER_RMSE:>7.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "ml-100k")
    parser.add_argument("--quick", action="store_true", help="skip the forest and Surprise")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    folds = load_official_folds(args.data)
    users = load_users(args.data)
    rows = run_ours(folds, users, args.quick)
    if not args.quick:
        rows += run_surprise(folds)
    print_table(rows)
    sweep_timing(folds)


if __name__ == "__main__":
    main()
