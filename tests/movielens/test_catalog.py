"""The MovieLens registry, the settings that choose a member, and the folds of the members
without official ones."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl
import pytest
from pydantic import ValidationError

from bench.synth import SyntheticSize, ratings_frame
from tasks.config import load_settings
from tasks.movielens.catalog import DATASETS, Layout, UnknownDatasetError, movielens_set
from tasks.movielens.curate import dataset_version
from tasks.movielens.folds import FoldRule, fold_rule, random_folds, temporal_folds

# The archives and MD5s GroupLens publishes (files.grouplens.org/datasets/movielens/*.zip.md5).
PUBLISHED = {
    "ml-100k": "0e33842e24a9c977be4e0107933c0723",
    "ml-1m": "c4d9eecfca2ab87c1945afe126590906",
    "ml-10m": "ce571fd55effeba0271552578f2648bd",
    "ml-20m": "cd245b17a1ae2cc31bb14903e1204af3",
    "ml-25m": "6b51fb2759a8657d3bfcbfc42b592ada",
    "ml-32m": "d472be332d4daa821edc399621853b57",
    "ml-latest-small": None,
    "ml-latest": None,
}
RATINGS = ratings_frame(SyntheticSize(ratings=3000, users=60, items=150), seed=8)


def test_registry_urls_and_checksums_are_the_published_ones() -> None:
    assert {name: member.md5 for name, member in DATASETS.items()} == PUBLISHED
    for name, member in DATASETS.items():
        assert member.url == f"https://files.grouplens.org/datasets/movielens/{name}.zip"


def test_registry_records_each_layout() -> None:
    assert movielens_set("ml-10m").folder == "ml-10M100K"
    assert [m.name for m in DATASETS.values() if m.users_file] == ["ml-100k", "ml-1m"]
    assert [m.name for m in DATASETS.values() if not m.half_stars] == ["ml-100k", "ml-1m"]
    assert movielens_set("ml-1m").encoding == "latin-1"
    assert movielens_set("ml-10m").required_files == ("ratings.dat", "movies.dat")
    csv = movielens_set("ml-25m")
    assert csv.layout is Layout.CSV
    assert csv.required_files == ("ratings.csv", "movies.csv")
    assert (csv.links_file, csv.tags_file) == ("links.csv", "tags.csv")


def test_unknown_member_is_a_clear_error() -> None:
    with pytest.raises(UnknownDatasetError, match=r"'ml-2m'; known: ml-100k, ml-1m"):
        movielens_set("ml-2m")


def test_dataset_setting_brings_its_archive_and_md5(
    recsys_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RECSYS_DATASET", "ml-25m")

    settings = load_settings()

    assert settings.movielens_source == "https://files.grouplens.org/datasets/movielens/ml-25m.zip"
    assert settings.movielens_md5 == "6b51fb2759a8657d3bfcbfc42b592ada"
    assert (settings.fold_scheme, settings.fold_seed) == ("random", 0)


def test_explicit_source_and_empty_md5_win_over_the_registry(
    recsys_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RECSYS_DATASET", "ml-1m")
    monkeypatch.setenv("RECSYS_MOVIELENS_SOURCE", "/data/ml-1m.zip")
    monkeypatch.setenv("RECSYS_MOVIELENS_MD5", "")

    settings = load_settings()

    assert (settings.movielens_source, settings.movielens_md5) == ("/data/ml-1m.zip", None)


def test_unknown_dataset_setting_fails_early(
    recsys_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RECSYS_DATASET", "ml-7m")

    with pytest.raises(ValidationError, match="unknown MovieLens dataset 'ml-7m'"):
        load_settings()


def test_ml100k_keeps_official_folds_whatever_the_scheme() -> None:
    assert fold_rule("ml-100k", "temporal", 3) == FoldRule("official")
    assert fold_rule("ml-25m", "random", 3) == FoldRule("random", 3)
    assert fold_rule("ml-1m", "temporal", 3) == FoldRule("temporal")


def test_random_folds_hold_every_rating_once_balanced_per_user() -> None:
    folds = random_folds(RATINGS, seed=1)

    assert (
        folds.select("user_id", "item_id")
        .sort("user_id", "item_id")
        .equals(RATINGS.select("user_id", "item_id").sort("user_id", "item_id"))
    )
    assert folds.select(pl.struct("user_id", "item_id").is_unique().all()).item()
    assert set(folds["test_fold"].unique()) == {1, 2, 3, 4, 5}
    per_user = folds.group_by("user_id", "test_fold").len()
    spread = per_user.group_by("user_id").agg(
        (pl.col("len").max() - pl.col("len").min()).alias("spread"),
        pl.col("len").sum().alias("total"),
        pl.len().alias("folds"),
    )
    assert spread["spread"].max() <= 1  # type: ignore[operator]
    # a user with five ratings or more is tested in every fold
    assert spread.filter(pl.col("total") >= 5)["folds"].unique().to_list() == [5]


def test_random_folds_are_seeded() -> None:
    shuffled = RATINGS.sample(fraction=1.0, shuffle=True, seed=4)

    same = random_folds(shuffled, seed=1)
    other = random_folds(RATINGS, seed=2)

    assert same.equals(random_folds(RATINGS, seed=1))  # whatever the file order
    assert not other.equals(same)


def test_temporal_holdout_tests_each_users_latest_ratings() -> None:
    folds = temporal_folds(RATINGS).join(RATINGS, on=["user_id", "item_id"])

    per_user = folds.group_by("user_id").agg(
        pl.len().alias("n"),
        (pl.col("test_fold") == 1).sum().alias("held"),
        pl.col("timestamp").filter(pl.col("test_fold") == 1).min().alias("first_test"),
        pl.col("timestamp").filter(pl.col("test_fold") == 0).max().alias("last_train"),
    )
    assert set(folds["test_fold"].unique()) == {0, 1}
    expected_held = (
        pl.when(pl.col("n") > 1).then((pl.col("n") * 0.2).floor().clip(lower_bound=1)).otherwise(0)
    )
    assert per_user.select((pl.col("held") == expected_held).all()).item()
    trained_and_tested = per_user.filter(pl.col("held") > 0, pl.col("last_train").is_not_null())
    assert (trained_and_tested["first_test"] >= trained_and_tested["last_train"]).all()


def test_temporal_holdout_of_a_hand_checked_user() -> None:
    ratings = pl.DataFrame(
        {
            "user_id": [7] * 6 + [8],
            "item_id": [1, 2, 3, 4, 5, 6, 1],
            "rating": [3] * 7,
            "timestamp": [10, 60, 30, 50, 20, 40, 5],
        }
    )

    folds = temporal_folds(ratings).sort("user_id", "item_id")

    # user 7: floor(6 * 0.2) = 1 rating held out, the latest (item 2); user 8 has one rating
    assert folds["test_fold"].to_list() == [0, 1, 0, 0, 0, 0, 0]


def test_version_changes_with_the_fold_rule_only_off_ml100k() -> None:
    from tasks.movielens.sources import RawDataset, RawFile

    raw = RawDataset(
        dataset="ml-25m",
        lake_url="file:///lake",
        sha256="ab" * 32,
        files=(RawFile(file="ratings.csv", size=1, sha256="cd" * 32),),
    )

    versions = {
        dataset_version(raw, rule)
        for rule in (FoldRule("random", 0), FoldRule("random", 1), FoldRule("temporal"))
    }

    assert len(versions) == 3
    assert dataset_version(raw) == dataset_version(raw, FoldRule("official"))


def test_an_unpinned_archive_url_is_fetched_anew_each_day(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import tasks.movielens.sources as movielens

    url = "https://files.grouplens.org/datasets/movielens/ml-latest-small.zip"
    today = movielens.resolve_source(url, None).fingerprint
    pinned = movielens.resolve_source(url, "0" * 32).fingerprint

    class Tomorrow(movielens.datetime):
        @classmethod
        def now(cls, tz: Any = None) -> Any:
            return movielens.datetime(2999, 1, 2, tzinfo=tz)

    monkeypatch.setattr(movielens, "datetime", Tomorrow)

    assert movielens.resolve_source(url, None).fingerprint != today
    assert movielens.resolve_source(url, "0" * 32).fingerprint == pinned
