"""Feature engineering: item features with Polars expressions, user features with DuckDB SQL.

Both are computed from a given set of ratings, so training can build them from a training
fold alone (no leakage of test ratings); the transform stores the all-data version.
"""

from __future__ import annotations

import re

import duckdb
import polars as pl
from prefect import task
from prefect.logging import get_run_logger
from pydantic import BaseModel, ConfigDict

from tasks.caching import DATA_CONTENT
from tasks.config import load_settings
from tasks.lake import Lake
from tasks.movielens.curate import CuratedDataset

DAMPING = 5.0  # pseudo-ratings at the prior mean: a movie with 2 ratings stays near average


def genre_slug(name: str) -> str:
    """``Children's`` -> ``childrens``, ``Sci-Fi`` -> ``sci_fi``, ``(no genres listed)`` -> ``no_genres_listed``."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower().replace("'", "")).strip("_") or "unnamed"


def genre_column_slugs(genres: pl.DataFrame) -> list[str]:
    """One distinct slug per genre, in genre id order: genres whose names make the same slug
    (``Sci-Fi``, ``Sci Fi``) each get their id after a double underscore (``sci_fi__7``), which
    no plain slug holds, so no two genres ever share a feature column."""
    rows = genres.sort("genre_id").select("genre_id", "name").rows()
    slugs = [genre_slug(name) for _, name in rows]
    shared = {slug for slug in slugs if slugs.count(slug) > 1}
    return [
        f"{slug}__{genre_id}" if slug in shared else slug
        for (genre_id, _), slug in zip(rows, slugs, strict=True)
    ]


def item_features(
    ratings: pl.DataFrame,
    items: pl.DataFrame,
    item_genres: pl.DataFrame,
    genres: pl.DataFrame,
    damping: float = DAMPING,
) -> pl.DataFrame:
    """Per item: genre one-hot, release year, rating count, mean, damped mean, popularity rank."""
    global_mean = float(ratings["rating"].mean() or 0.0)  # type: ignore[arg-type]
    # whole stars sum exactly as integers (Polars sums Int8 into Int64), half stars in float64
    rating = pl.col("rating")
    total = rating.sum() if ratings.schema["rating"].is_integer() else rating.cast(pl.Float64).sum()
    stats = ratings.group_by("item_id").agg(
        pl.len().alias("rating_count"), total.alias("rating_sum")
    )
    stats = stats.with_columns((pl.col("rating_sum") / pl.col("rating_count")).alias("rating_mean"))
    one_hot = _genre_one_hot(items.select("item_id"), item_genres, genres)
    count = pl.col("rating_count").fill_null(0)
    return (
        items.select("item_id", "release_year")
        .join(one_hot, on="item_id", how="left")
        .join(stats, on="item_id", how="left")
        .with_columns(
            count.cast(pl.Int32).alias("rating_count"),
            (
                (pl.col("rating_sum").fill_null(0.0) + damping * global_mean) / (count + damping)
            ).alias("damped_mean"),
        )
        .with_columns(
            pl.col("rating_count")
            .rank(method="ordinal", descending=True)
            .cast(pl.Int32)
            .alias("popularity_rank")
        )
        .drop("rating_sum")
        .sort("item_id")
    )


def _genre_one_hot(
    item_ids: pl.DataFrame, item_genres: pl.DataFrame, genres: pl.DataFrame
) -> pl.DataFrame:
    members = dict(item_genres.group_by("genre_id").agg("item_id").iter_rows())
    dtype = item_ids["item_id"].dtype
    genre_ids = genres.sort("genre_id")["genre_id"].to_list()
    return item_ids.select(
        "item_id",
        *(
            pl.col("item_id")
            .is_in(pl.Series(members.get(genre_id, []), dtype=dtype).implode())
            .cast(pl.Int8)
            .alias(f"genre_{slug}")
            for genre_id, slug in zip(genre_ids, genre_column_slugs(genres), strict=True)
        ),
    )


USER_FEATURES_SQL = """
WITH user_stats AS (
    SELECT user_id, count(*) AS rating_count, avg(rating) AS rating_mean,
           coalesce(stddev_samp(rating), 0) AS rating_std
    FROM ratings GROUP BY user_id
),
per_genre AS (
    SELECT r.user_id, g.genre_id, count(*) AS n, sum(r.rating) AS total
    FROM ratings r JOIN item_genres g USING (item_id)
    GROUP BY r.user_id, g.genre_id
),
affinity AS (
    -- damped mean rating per genre, shrunk toward the user's own mean
    SELECT s.user_id, k.genre_id, coalesce(p.n, 0) AS n,
           (coalesce(p.total, 0) + $damping * s.rating_mean) / (coalesce(p.n, 0) + $damping)
               AS affinity
    FROM user_stats s CROSS JOIN genres k
    LEFT JOIN per_genre p ON p.user_id = s.user_id AND p.genre_id = k.genre_id
),
profile AS (
    -- favourite: ties (to float noise: parallel sums differ in the last bits) go to the lower
    -- genre id
    SELECT user_id, list(affinity ORDER BY genre_id) AS affinity,
           first(genre_id ORDER BY round(affinity, 9) DESC, genre_id) FILTER (WHERE n > 0)
               AS favourite_genre_id
    FROM affinity GROUP BY user_id
)
SELECT u.user_id, u.age, u.gender, u.occupation,
       coalesce(s.rating_count, 0)::INTEGER AS rating_count, s.rating_mean, s.rating_std,
       p.affinity, g.name AS favourite_genre
FROM users u
LEFT JOIN user_stats s USING (user_id)
LEFT JOIN profile p USING (user_id)
LEFT JOIN genres g ON g.genre_id = p.favourite_genre_id
ORDER BY u.user_id
"""


def user_features(
    ratings: pl.DataFrame,
    users: pl.DataFrame,
    item_genres: pl.DataFrame,
    genres: pl.DataFrame,
    damping: float = DAMPING,
) -> pl.DataFrame:
    """Per user: demographics, rating count/mean/std, per-genre affinity, favourite genre."""
    with duckdb.connect() as con:
        for name, frame in (
            ("ratings", ratings),
            ("users", users),
            ("item_genres", item_genres),
            ("genres", genres),
        ):
            con.register(name, ArrowStream(frame))
        features = _query(con, USER_FEATURES_SQL, {"damping": damping})
    columns = [f"affinity_{slug}" for slug in genre_column_slugs(genres)]
    return features.with_columns(
        pl.col("affinity").list.to_struct(fields=columns),
        pl.col("rating_count").cast(pl.Int32),
    ).unnest("affinity")


def read_lake_parquet(lake: Lake, keys: dict[str, str]) -> dict[str, pl.DataFrame]:
    """Read Parquet tables from the lake with DuckDB (S3 through the lake's s3fs client)."""
    with duckdb.connect() as con:
        if lake.protocol != "file":
            con.register_filesystem(lake.fs)
        return {
            name: _query(
                con, "SELECT * FROM read_parquet($path)", {"path": _duckdb_path(lake, key)}
            )
            for name, key in keys.items()
        }


class ArrowStream:
    """A Polars frame as DuckDB reads it: over the Arrow C stream interface, a fresh stream per
    scan, with no pyarrow table in between (importing pyarrow alone takes 50 ms)."""

    def __init__(self, frame: pl.DataFrame) -> None:
        self.frame = frame

    def __arrow_c_stream__(self, requested_schema: object | None = None) -> object:
        return self.frame.__arrow_c_stream__(requested_schema)


def _query(con: duckdb.DuckDBPyConnection, sql: str, params: dict[str, object]) -> pl.DataFrame:
    # DuckDB's own conversion, not Polars reading the relation's Arrow C stream: a stream that
    # DuckDB exports keeps references that are never released, and at interpreter exit
    # nanobind reports them ("leaked 27 instances") for every process that ran a query
    return con.sql(sql, params=params).pl()


def _duckdb_path(lake: Lake, key: str) -> str:
    return lake.path(key) if lake.protocol == "file" else lake.uri(key)


class FeatureSet(BaseModel):
    """Reference to the feature tables computed from one curated version (all ratings)."""

    model_config = ConfigDict(frozen=True)

    dataset: str
    lake_url: str
    version: str

    @property
    def prefix(self) -> str:
        return f"features/{self.dataset}/{self.version}"

    def table_keys(self) -> dict[str, str]:
        return {
            name: f"{self.prefix}/{name}.parquet" for name in ("item_features", "user_features")
        }


def features_in_lake(features: FeatureSet) -> bool:
    """Whether the lake still holds both feature tables of this version."""
    lake = Lake.from_settings(load_settings(), features.lake_url)
    return all(lake.exists(key) for key in features.table_keys().values())


@task(cache_policy=DATA_CONTENT, persist_result=True)
def build_features(curated: CuratedDataset) -> FeatureSet:
    """Item and user features from every rating of the curated version, stored in the lake."""
    lake = Lake.from_settings(load_settings(), curated.lake_url)
    tables = read_lake_parquet(lake, curated.table_keys())
    items = item_features(
        tables["ratings"], tables["items"], tables["item_genres"], tables["genres"]
    )
    users = user_features(
        tables["ratings"], tables["users"], tables["item_genres"], tables["genres"]
    )
    ref = FeatureSet(dataset=curated.dataset, lake_url=lake.url, version=curated.version)
    lake.write_parquet(ref.table_keys()["item_features"], items)
    lake.write_parquet(ref.table_keys()["user_features"], users)
    get_run_logger().info(
        "Features of %s %s: %d items, %d users",
        curated.dataset,
        curated.version,
        items.height,
        users.height,
    )
    return ref
