"""The cold-start table: popularity, item-KNN fold-in and the K-Means-assisted fold-in for new
users given their first k ratings, on the official ml-100k folds.

    python bench/cold_start.py [--data PATH] [--folds u1,u2] [--validation] [--set name=value]

``--validation`` runs the protocol on validation folds carved from each training fold (a
seeded 80/20 split of its ratings), never touching the test files: the defaults of the
fold-in were chosen that way. ``--set`` overrides a field of the K-Means fold-in's config.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from recommender import (  # noqa: E402
    Fold,
    KMeansKNNConfig,
    ModelConfig,
    PopularityConfig,
    load_official_folds,
    load_users,
)
from recommender.evaluate import COLD_START_COUNTS, ColdStartResult, cold_start_protocol  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data" / "ml-100k"
METRICS = ("ndcg_at_10", "precision_at_10", "rmse")


def methods(overrides: dict[str, Any]) -> dict[str, ModelConfig]:
    """The three methods: the second is the third with one cold-start cluster (the
    population's prior), so the clusters are the only difference between them."""
    return {
        "popularity": PopularityConfig(),
        "item-KNN fold-in": KMeansKNNConfig(**{**overrides, "fold_in_clusters": 1}),
        "K-Means fold-in": KMeansKNNConfig(**overrides),
    }


def validation_folds(folds: list[Fold], seed: int = 0) -> list[Fold]:
    """Each training fold split 80/20 at random (seeded): tuning never sees a test file."""
    carved = []
    rng = np.random.default_rng(seed)
    for fold in folds:
        inner = rng.random(len(fold.train)) < 0.8
        carved.append(Fold(f"{fold.name}-val", fold.train.subset(inner), fold.train.subset(~inner)))
    return carved


def table(results: list[ColdStartResult]) -> str:
    """Per k and method: the mean over folds and the (min..max) spread of each metric, then
    the per-fold margin of the K-Means fold-in over the better baseline."""
    lines = [f"{'k':>3} {'method':<18}" + "".join(f"{m:>26}" for m in METRICS)]
    ks = sorted({r.k for r in results})
    names = list(dict.fromkeys(r.method for r in results))
    for k in ks:
        for name in names:
            rows = [r for r in results if r.k == k and r.method == name]
            cells = ""
            for metric in METRICS:
                values = np.array([getattr(r, metric) for r in rows])
                cells += f"{values.mean():>10.4f} ({values.min():.4f}..{values.max():.4f})"
            lines.append(f"{k:>3} {name:<18}{cells}")
        lines.append(f"{'':>3} {'margin per fold':<18}" + _margins(results, k, names))
    return "\n".join(lines)


def _margins(results: list[ColdStartResult], k: int, names: list[str]) -> str:
    """K-Means fold-in minus the better baseline, per fold: min..max (RMSE: lower is better)."""
    folds = sorted({r.fold for r in results})
    cells = ""
    for metric in METRICS:
        sign = -1.0 if metric == "rmse" else 1.0
        margins = []
        for fold in folds:
            by_method = {
                r.method: getattr(r, metric) for r in results if r.k == k and r.fold == fold
            }
            baseline = max(sign * by_method[name] for name in names[:-1])
            margins.append(sign * by_method[names[-1]] - baseline)
        cells += f"{'':>10} {min(margins):+.4f}..{max(margins):+.4f}"
    return cells


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = os.environ.get("RECSYS_TEST_ML100K", str(DEFAULT_DATA))
    parser.add_argument("--data", default=default, help="the ml-100k folder")
    parser.add_argument("--folds", default="u1,u2,u3,u4,u5")
    parser.add_argument("--validation", action="store_true", help="carved validation folds")
    parser.add_argument("--no-demographics", action="store_true")
    parser.add_argument("--share", type=float, default=0.2)
    parser.add_argument("--set", action="append", default=[], help="name=value of the config")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    # the config validates (and converts) the values: "16", "0.3", "loo"
    overrides = dict(item.split("=", 1) for item in args.set)
    folds = load_official_folds(args.data, names=args.folds.split(","))
    if args.validation:
        folds = validation_folds(folds)
    users = None if args.no_demographics else load_users(args.data)
    started = time.perf_counter()
    results = cold_start_protocol(
        folds, methods(overrides), COLD_START_COUNTS, share=args.share, users=users
    )
    print(f"cold start on {', '.join(f.name for f in folds)}: held-out share {args.share}, "
          f"demographics {'no' if users is None else 'yes'}, overrides {overrides or 'none'}, "
          f"{time.perf_counter() - started:.0f} s")  # fmt: skip
    print(table(results))


if __name__ == "__main__":
    main()
