"""The fold schemes: ml-100k's official u1..u5 (mku.sh), a seeded per-user random split, and a
temporal hold-out. Pure Polars, no Prefect.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from tasks.movielens.catalog import (
    Layout,
    movielens_set,
)
from tasks.movielens.validation import in_pair_order

FOLD_COUNT = 5


def assign_folds(ratings: pl.DataFrame, line_count: int) -> pl.DataFrame:
    """The dataset README's rule (mku.sh): test fold i holds u.data lines of the i-th fifth."""
    fold_size = max(1, line_count // FOLD_COUNT)
    fold = ((pl.col("line") - 1) // fold_size + 1).clip(upper_bound=FOLD_COUNT)
    return ratings.select("user_id", "item_id", fold.cast(pl.Int8).alias("test_fold"))


OFFICIAL, RANDOM, TEMPORAL = "official", "random", "temporal"
TEMPORAL_TEST_FOLD = 1
NEVER_TESTED = 0  # test_fold of a rating in no test fold: always trained on
TEMPORAL_TEST_SHARE = 0.2


@dataclass(frozen=True)
class FoldRule:
    """How a member's test folds are made: its official files (ml-100k), a seeded per-user
    random 5-fold split, or a temporal hold-out of each user's latest ratings."""

    scheme: str
    seed: int = 0

    @property
    def label(self) -> str:
        return f"{self.scheme}:{self.seed}" if self.scheme == RANDOM else self.scheme


OFFICIAL_FOLDS = FoldRule(OFFICIAL)


def fold_rule(dataset: str, scheme: str, seed: int) -> FoldRule:
    """ml-100k keeps its official u1..u5; the others follow ``RECSYS_FOLD_SCHEME``."""
    if movielens_set(dataset).layout is Layout.ML100K:
        return FoldRule(OFFICIAL)
    if scheme not in (RANDOM, TEMPORAL):
        raise ValueError(f"fold scheme must be {RANDOM!r} or {TEMPORAL!r}, not {scheme!r}")
    return FoldRule(scheme, seed if scheme == RANDOM else 0)


def random_folds(ratings: pl.DataFrame, seed: int) -> pl.DataFrame:
    """A seeded per-user 5-fold split: each user's ratings, in a random order, are dealt to
    folds 1..5 in turn from a random first fold, so every rating is in exactly one test fold
    and a user's folds differ in size by one rating at most."""
    pairs = in_pair_order(ratings.select("user_id", "item_id"))
    rng = np.random.default_rng(seed)
    user = pl.col("user_id").rle_id()  # 0, 1, ... by user: the pairs are sorted
    first = pl.Series(rng.integers(0, FOLD_COUNT, size=pairs["user_id"].n_unique()))
    turn = pl.col("draw").rank("ordinal").over("user_id").cast(pl.Int64) - 1
    fold = (turn + pl.lit(first, pl.Int64).gather(user)) % FOLD_COUNT + 1
    return pairs.with_columns(pl.Series("draw", rng.random(pairs.height))).select(
        "user_id", "item_id", fold.cast(pl.Int8).alias("test_fold")
    )


def temporal_folds(ratings: pl.DataFrame, share: float = TEMPORAL_TEST_SHARE) -> pl.DataFrame:
    """A temporal hold-out: each user's latest ratings (``share`` of them, at least one; none
    of a user with a single rating) are test fold 1, the rest are in no test fold (0)."""
    latest_first = ratings.select("user_id", "item_id", "timestamp").sort(
        "user_id", "timestamp", "item_id", descending=[False, True, True]
    )
    count = pl.len().over("user_id")
    held = pl.when(count > 1).then((count * share).floor().cast(pl.Int64).clip(lower_bound=1))
    recency = pl.int_range(pl.len()).over("user_id")  # 0 = the user's latest rating
    fold = pl.when(recency < held.otherwise(0)).then(TEMPORAL_TEST_FOLD).otherwise(NEVER_TESTED)
    return in_pair_order(
        latest_first.select("user_id", "item_id", fold.cast(pl.Int8).alias("test_fold"))
    )


def member_folds(ratings: pl.DataFrame, rule: FoldRule) -> pl.DataFrame:
    if rule.scheme == TEMPORAL:
        return temporal_folds(ratings)
    return random_folds(ratings, rule.seed)
