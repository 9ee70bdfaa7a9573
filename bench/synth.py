"""Synthetic MovieLens-shaped data in any member's file format, seeded, at any size.

Shape: power-law item popularity and user activity, the ml-100k rating distribution (with
some ratings half a star lower in the half-star members), one to three genres per movie,
accented titles (latin-1 where the member is), some titles with commas, quotes or no year.
At scale (``--like-ml25m``, ``structured_ratings``): ml-25m's shape and star shares, stars
from a latent user x item model, 25M ratings drawn and written in about 20 s.

    python bench/synth.py OUT_DIR --ratings 1000000 [--dataset ml-25m] [--zip]
    python bench/synth.py OUT_DIR --ratings 25000095 --like-ml25m [--dataset ml-20m]
"""

from __future__ import annotations

import argparse
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from tasks.movielens.catalog import (
    ML1M_AGE_GROUPS,
    ML1M_OCCUPATIONS,
    Layout,
    MovieLensSet,
    movielens_set,
)

GENRES = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)
OCCUPATIONS = (
    "administrator",
    "artist",
    "doctor",
    "educator",
    "engineer",
    "entertainment",
    "executive",
    "healthcare",
    "homemaker",
    "lawyer",
    "librarian",
    "marketing",
    "none",
    "other",
    "programmer",
    "retired",
    "salesman",
    "scientist",
    "student",
    "technician",
    "writer",
)
RATING_SHARES = (0.0611, 0.1137, 0.2715, 0.3417, 0.2120)  # ml-100k's 1..5 stars
ML25M_RATINGS, ML25M_USERS, ML25M_ITEMS = 25_000_095, 162_541, 59_047
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
TITLE_WORDS = (
    "Café",
    "Amélie",
    "Señor",
    "Noël",
    "Zürich",
    "Love",
    "Night",
    "Return",
    "City",
    "Story",
    "Dark",
    "Blue",
    "Last",
    "First",
    "River",
    "Game",
    "Dream",
    "War",
)


@dataclass(frozen=True)
class SyntheticSize:
    ratings: int
    users: int
    items: int

    @classmethod
    def like_movielens(cls, ratings: int) -> SyntheticSize:
        """User and item counts scaled the way the MovieLens family grows."""
        users = max(20, int(943 * (ratings / 100_000) ** 0.75))
        items = max(30, int(1682 * (ratings / 100_000) ** 0.55))
        return cls(ratings=ratings, users=users, items=min(items, 60_000))

    @classmethod
    def like_ml25m(cls, ratings: int) -> SyntheticSize:
        """ml-25m's users per rating (linear) and rated items (``(ratings / 25M) ** 0.6``)."""
        share = ratings / ML25M_RATINGS
        users = max(10, round(ML25M_USERS * share))
        items = max(50, round(ML25M_ITEMS * share**0.6))
        return cls(ratings=ratings, users=users, items=items)


def ratings_frame(size: SyntheticSize, seed: int = 0) -> pl.DataFrame:
    """Unique (user, item) ratings with power-law activity and popularity."""
    rng = np.random.default_rng(seed)
    user_weights = _power_law(size.users, 0.9, rng)
    item_weights = _power_law(size.items, 1.1, rng)
    capacity = size.users * size.items
    target = min(size.ratings, int(capacity * 0.6))
    keys = np.empty(0, dtype=np.int64)
    while keys.size < target:
        draw = int((target - keys.size) * 1.3) + 16
        users = rng.choice(size.users, size=draw, p=user_weights)
        items = rng.choice(size.items, size=draw, p=item_weights)
        keys = np.unique(np.concatenate([keys, users.astype(np.int64) * size.items + items]))
    keys = rng.permutation(keys)[:target]
    stars = rng.choice(np.arange(1, 6), size=target, p=RATING_SHARES)
    times = rng.integers(874_724_710, 893_286_638, size=target)
    return pl.DataFrame(
        {
            "user_id": (keys // size.items + 1).astype(np.int32),
            "item_id": (keys % size.items + 1).astype(np.int32),
            "rating": stars.astype(np.int8),
            "timestamp": times.astype(np.int64),
        }
    )


def _power_law(count: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    weights = 1.0 / np.arange(1, count + 1) ** exponent
    weights = rng.permutation(weights)
    return weights / weights.sum()


def items_frame(items: int, seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed + 1)
    ids = np.arange(1, items + 1)
    years = rng.integers(1922, 1999, size=items)
    days = rng.integers(1, 29, size=items)
    months = rng.integers(0, 12, size=items)
    words = rng.choice(len(TITLE_WORDS), size=(items, 2))
    titles = [
        f"{TITLE_WORDS[a]} {TITLE_WORDS[b]} {i} ({y})"
        for i, (a, b), y in zip(ids, words, years, strict=True)
    ]
    dates = [
        "" if i % 97 == 0 else f"{d:02d}-{MONTHS[m]}-{y}"
        for i, d, m, y in zip(ids, days, months, years, strict=True)
    ]
    flags = np.zeros((items, len(GENRES)), dtype=np.int8)
    for _ in range(2):
        flags[np.arange(items), rng.integers(1, len(GENRES), size=items)] = 1
    columns: dict[str, object] = {
        "item_id": ids,
        "title": titles,
        "release_date": dates,
        "video_release_date": [""] * items,
        "imdb_url": [f"http://us.imdb.com/M/title-exact?movie{i}" for i in ids],
    }
    columns.update({f"g{j}": flags[:, j] for j in range(len(GENRES))})
    return pl.DataFrame(columns)


def users_frame(users: int, seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed + 2)
    zips = rng.integers(10000, 99999, size=users).astype(str).astype(object)
    zips[::50] = "T8H1N"  # Canadian-style codes, as in ml-100k
    return pl.DataFrame(
        {
            "user_id": np.arange(1, users + 1),
            "age": rng.integers(7, 74, size=users),
            "gender": rng.choice(["M", "F"], size=users, p=[0.71, 0.29]),
            "occupation": rng.choice(OCCUPATIONS, size=users),
            "zip_code": zips.astype(str),
        }
    )


def write_ml100k(folder: Path, size: SyntheticSize, seed: int = 0, folds: bool = True) -> Path:
    """Write u.data, u.item (latin-1), u.user, u.genre, u.occupation (and u1..u5) to ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    ratings = ratings_frame(size, seed)
    ratings.write_csv(folder / "u.data", separator="\t", include_header=False)
    items = items_frame(size.items, seed)
    _write_latin1(folder / "u.item", items)
    users_frame(size.users, seed).write_csv(folder / "u.user", separator="|", include_header=False)
    (folder / "u.genre").write_text("".join(f"{g}|{i}\n" for i, g in enumerate(GENRES)) + "\n")
    (folder / "u.occupation").write_text("".join(f"{o}\n" for o in OCCUPATIONS))
    if folds:
        write_folds(folder, ratings)
    return folder


def write_folds(folder: Path, ratings: pl.DataFrame) -> None:
    """The official rule (mku.sh): test fold i is the i-th fifth of u.data, sorted by user, item."""
    fold_size = ratings.height // 5
    order = ["user_id", "item_id"]
    for fold in range(1, 6):
        start, stop = fold_size * (fold - 1), fold_size * fold
        test = ratings.slice(start, stop - start).sort(order)
        base = pl.concat([ratings.slice(0, start), ratings.slice(stop)]).sort(order)
        test.write_csv(folder / f"u{fold}.test", separator="\t", include_header=False)
        base.write_csv(folder / f"u{fold}.base", separator="\t", include_header=False)


def _write_latin1(path: Path, items: pl.DataFrame) -> None:
    text = items.write_csv(separator="|", include_header=False, quote_style="never")
    path.write_bytes(text.encode("latin-1"))


# --- the other members ----------------------------------------------------------------------
DAT_GENRES = GENRES[1:]  # ml-1m's 18, without ml-100k's "unknown"
LATER_GENRES = (*DAT_GENRES, "IMAX")  # ml-10m onwards
NO_GENRES = "(no genres listed)"
HALF_STAR_SHARE = 0.3  # ratings moved half a star down in the half-star members
LATER_TIMES = (789_652_009, 1_697_000_000)  # 1995 .. 2023, as in ml-32m
AGE_SHARES = (0.04, 0.18, 0.35, 0.2, 0.09, 0.08, 0.06)


def member_ratings(member: MovieLensSet, size: SyntheticSize, seed: int) -> pl.DataFrame:
    """``ratings_frame`` in the member's scale and period: half stars, later timestamps."""
    ratings = ratings_frame(size, seed)
    if member.layout is Layout.ML100K or not member.half_stars:
        return ratings
    rng = np.random.default_rng(seed + 3)
    lower = rng.random(ratings.height) < HALF_STAR_SHARE
    times = rng.integers(*LATER_TIMES, size=ratings.height)
    return ratings.with_columns(
        (pl.col("rating").cast(pl.Float32) - pl.Series(lower).cast(pl.Float32) * 0.5).alias(
            "rating"
        ),
        pl.Series("timestamp", times, dtype=pl.Int64),
    )


def movies_frame(items: int, genres: tuple[str, ...], seed: int = 0) -> pl.DataFrame:
    """item_id, title ("Words 12 (1995)"; some with a comma, quotes or no year), genres."""
    rng = np.random.default_rng(seed + 4)
    ids = np.arange(1, items + 1)
    words = np.asarray(TITLE_WORDS)[rng.choice(len(TITLE_WORDS), size=(items, 2))]
    years = rng.integers(1922, 2023, size=items).astype(str)
    base = pl.Series(words[:, 0]) + " " + pl.Series(words[:, 1]) + " " + pl.Series(ids.astype(str))
    title = (
        pl.when(pl.col("item_id") % 7 == 0)
        .then(pl.col("base") + ", The")
        .when(pl.col("item_id") % 11 == 0)
        .then(pl.lit('"') + pl.col("base") + pl.lit('"'))
        .otherwise(pl.col("base"))
    )
    year = (
        pl.when(pl.col("item_id") % 53 == 0)
        .then(pl.lit(""))
        .otherwise(pl.lit(" (") + pl.col("year") + pl.lit(")"))
    )
    listed_genres = [genre for genre in genres if genre != NO_GENRES]  # it stands alone
    picks = np.asarray(listed_genres)[rng.integers(0, len(listed_genres), size=(items, 3))]
    counts = rng.integers(1, 4, size=items)
    listed = (
        pl.concat_list(pl.col("g0"), pl.col("g1"), pl.col("g2"))
        .list.head(pl.col("count"))
        .list.unique(maintain_order=True)
        .list.join("|")
    )
    frame = pl.DataFrame(
        {
            "item_id": ids.astype(np.int32),
            "base": base,
            "year": years,
            "g0": picks[:, 0],
            "g1": picks[:, 1],
            "g2": picks[:, 2],
            "count": counts,
        }
    )
    no_genres = pl.lit(NO_GENRES) if NO_GENRES in genres else pl.lit(DAT_GENRES[7])
    return frame.select(
        "item_id",
        (title + year).alias("title"),
        pl.when(pl.col("item_id") % 41 == 0).then(no_genres).otherwise(listed).alias("genres"),
    )


def ml1m_users_frame(users: int, seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed + 5)
    return pl.DataFrame(
        {
            "user_id": np.arange(1, users + 1),
            "gender": rng.choice(["M", "F"], size=users, p=[0.72, 0.28]),
            "age": rng.choice(ML1M_AGE_GROUPS, size=users, p=AGE_SHARES),
            "occupation": rng.integers(0, len(ML1M_OCCUPATIONS), size=users),
            "zip_code": rng.integers(10000, 99999, size=users).astype(str),
        }
    )


def tags_frame(ratings: pl.DataFrame, seed: int = 0) -> pl.DataFrame:
    """A tag on about one rating in twenty (some tags hold a comma)."""
    rng = np.random.default_rng(seed + 6)
    tagged = ratings.filter(pl.Series(rng.random(ratings.height) < 0.05))
    words = np.asarray(["funny", "dark, moody", "classic", "twist ending", "Noël"])
    return tagged.select(
        "user_id",
        "item_id",
        pl.Series("tag", words[rng.integers(0, len(words), size=tagged.height)]),
        "timestamp",
    )


def links_frame(items: int, seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed + 7)
    imdb = rng.choice(9_999_999, size=items, replace=False) + 1
    tmdb = pl.Series(rng.integers(1, 999_999, size=items)).cast(pl.String)
    return pl.DataFrame(
        {
            "movieId": np.arange(1, items + 1),
            "imdbId": pl.Series(imdb).cast(pl.String).str.zfill(7),
            "tmdbId": tmdb.scatter(np.arange(12, items, 13), None),  # some movies have none
        }
    )


def write_dat(folder: Path, member: MovieLensSet, size: SyntheticSize, seed: int = 0) -> Path:
    """ratings.dat, movies.dat (in the member's encoding)[, users.dat][, tags.dat], '::'-separated."""
    folder.mkdir(parents=True, exist_ok=True)
    ratings = member_ratings(member, size, seed)
    stars = pl.col("rating").cast(pl.String).str.strip_suffix(".0")
    _write_dat(folder / member.ratings_file, ratings.with_columns(stars), "utf-8")
    genres = LATER_GENRES + (NO_GENRES,) if member.half_stars else DAT_GENRES
    _write_dat(folder / member.items_file, movies_frame(size.items, genres, seed), member.encoding)
    if member.users_file:
        _write_dat(folder / member.users_file, ml1m_users_frame(size.users, seed), "utf-8")
    if member.tags_file:
        _write_dat(folder / member.tags_file, tags_frame(ratings, seed), "utf-8")
    return folder


def _write_dat(path: Path, frame: pl.DataFrame, encoding: str) -> None:
    lines = frame.select(pl.concat_str(pl.all().cast(pl.String), separator="::"))
    text = lines.write_csv(include_header=False, quote_style="never")
    path.write_bytes(text.encode(encoding))


def write_csv_member(
    folder: Path,
    member: MovieLensSet,
    size: SyntheticSize,
    seed: int = 0,
    optional: bool = True,
) -> Path:
    """ratings.csv (half stars), movies.csv (RFC 4180 quoting)[, tags.csv, links.csv]."""
    folder.mkdir(parents=True, exist_ok=True)
    ratings = member_ratings(member, size, seed)
    names = {"user_id": "userId", "item_id": "movieId"}
    ratings.rename(names, strict=False).write_csv(folder / member.ratings_file, float_precision=1)
    movies_frame(size.items, (*LATER_GENRES, NO_GENRES), seed).rename(
        names, strict=False
    ).write_csv(folder / member.items_file)
    if optional and member.tags_file:
        tags_frame(ratings, seed).rename(names, strict=False).write_csv(folder / member.tags_file)
    if optional and member.links_file:
        links_frame(size.items, seed).write_csv(folder / member.links_file)
    return folder


def write_dataset(folder: Path, dataset: str, size: SyntheticSize, seed: int = 0) -> Path:
    """The files of ``dataset`` (a registry name) in its layout, as its archive unpacks."""
    member = movielens_set(dataset)
    if member.layout is Layout.ML100K:
        return write_ml100k(folder, size, seed)
    if member.layout is Layout.DAT:
        return write_dat(folder, member, size, seed)
    return write_csv_member(folder, member, size, seed)


# --- ml-25m-shaped ratings at scale ---------------------------------------------------------
ML25M_TIMES = (789_652_009, 1_574_327_703)  # its first and last rating, 1995 .. 2019
# ml-25m's share of each half star, 0.5 .. 5.0
HALF_STAR_SHARES = (0.016, 0.031, 0.016, 0.066, 0.050, 0.196, 0.126, 0.266, 0.085, 0.145)
MIN_USER_RATINGS = 20  # GroupLens keeps users with at least 20 ratings
USER_EXTRA_MEDIAN, USER_EXTRA_SIGMA = 51.0, 1.39  # ratings beyond 20: ml-25m's median 71, mean 154
ITEM_EXPONENT, ITEM_CUTOFF = 0.9, 5.0  # Zipf head, exponential tail: top item 0.37%, median 20
LATENT_DIMS = 8
USER_BIAS_SD, ITEM_BIAS_SD, POPULARITY_LIFT = 0.45, 0.45, 0.15
FACTOR_SD, NOISE_SD = 0.42, 0.7  # interaction sd ~0.5 on a score of sd ~1
SCORE_CHUNK = 1 << 20


def structured_ratings(size: SyntheticSize, seed: int = 0, half_stars: bool = True) -> pl.DataFrame:
    """Unique (user, item) ratings, sorted by user and item like ml-25m's, drawn in bulk.

    Activity: every user rates at least 20 items (fewer only where the items do not allow it),
    the rest lognormal like ml-25m's; popularity: a Zipf head with an exponential tail.
    Stars: ``mean + user bias + item bias + user . item factors + noise``, cut at the quantiles
    of ml-25m's half-star shares (ml-100k's whole-star shares without half stars), so a model
    of the interactions beats the biases.
    """
    rng = np.random.default_rng(seed)
    item_weights = _item_popularity(size.items, rng)
    keys = _unique_pairs(_user_activity(size, rng), item_weights, rng)
    users = (keys // size.items).astype(np.int32)
    items = (keys % size.items).astype(np.int32)
    del keys
    scores = _latent_scores(users, items, size, np.log(item_weights), rng)
    shares = HALF_STAR_SHARES if half_stars else RATING_SHARES
    stars = _stars_by_quantile(scores, shares)
    del scores
    rating = (
        pl.Series("rating", (stars + 1) * 0.5, dtype=pl.Float32)
        if half_stars
        else pl.Series("rating", stars + 1, dtype=pl.Int8)
    )
    return pl.DataFrame(
        [
            pl.Series("user_id", users + 1, dtype=pl.Int32),
            pl.Series("item_id", items + 1, dtype=pl.Int32),
            rating,
            pl.Series("timestamp", _rating_times(users, size.users, rng), dtype=pl.Int64),
        ]
    )


def _user_activity(size: SyntheticSize, rng: np.random.Generator) -> np.ndarray:
    """Ratings per user: the floor, plus a lognormal share of the rest, none above half the
    items (a heavier user's excess goes to the others)."""
    cap = max(1, size.items // 2)
    total = min(size.ratings, size.users * cap)
    floor = min(MIN_USER_RATINGS, cap, total // size.users)
    weights = rng.lognormal(np.log(USER_EXTRA_MEDIAN), USER_EXTRA_SIGMA, size.users)
    counts = floor + rng.multinomial(total - floor * size.users, weights / weights.sum())
    while (excess := int(np.maximum(counts - cap, 0).sum())) > 0:
        counts = np.minimum(counts, cap)
        room = np.where(counts < cap, weights, 0.0)
        counts += rng.multinomial(excess, room / room.sum())
    return counts


def _item_popularity(items: int, rng: np.random.Generator) -> np.ndarray:
    """Draw weights of the items (shuffled ids): a Zipf head with an exponential cut-off."""
    rank = np.arange(items, dtype=np.float64)
    offset = 1.0 + items / 1500  # ml-25m: the most rated movie has 0.33% of the ratings
    weights = (rank + offset) ** -ITEM_EXPONENT * np.exp(-ITEM_CUTOFF * rank / items)
    return rng.permutation(weights / weights.sum())


def _unique_pairs(
    counts: np.ndarray, item_weights: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Sorted ``user * items + item`` keys, ``counts[u]`` distinct items per user.

    Each round draws every user's missing items at once and keeps the new pairs; the rounds
    after the second draw from flatter popularity, so heavy users fill up on the tail.
    """
    items = len(item_weights)
    users = np.arange(len(counts), dtype=np.int64)
    keys = np.empty(0, dtype=np.int64)
    for sharpness in (1.0, 1.0, 0.5, 0.25, *(0.0,) * 60):
        missing = counts - np.bincount(keys // items, minlength=len(counts))
        if not missing.any():
            return keys
        rows = np.repeat(users, missing)
        drawn = _sorted_unique(rows * items + _draw_items(item_weights**sharpness, len(rows), rng))
        found = np.searchsorted(keys, drawn)
        known = found < len(keys)
        known[known] = keys[found[known]] == drawn[known]
        keys = np.sort(np.concatenate([keys, drawn[~known]]), kind="stable")  # merges two runs
    raise RuntimeError(f"could not draw {int(counts.sum())} distinct pairs from {items} items")


def _sorted_unique(keys: np.ndarray) -> np.ndarray:
    """``np.unique`` by sorting: NumPy 2's hash-based unique is ten times slower at 25M keys."""
    keys = np.sort(keys)
    return keys[np.concatenate([[True], keys[1:] != keys[:-1]])]


def _draw_items(weights: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    cumulative = np.cumsum(weights)
    drawn = np.searchsorted(cumulative, rng.random(count) * cumulative[-1], side="right")
    return np.minimum(drawn, len(weights) - 1)


def _latent_scores(
    users: np.ndarray,
    items: np.ndarray,
    size: SyntheticSize,
    log_popularity: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """``user bias + item bias + user . item factors + noise`` per rating (float32, chunked so
    the gathered factors stay small); popular items lean higher, as in MovieLens."""
    lift = (log_popularity - log_popularity.mean()) / log_popularity.std()
    user_bias = rng.normal(0.0, USER_BIAS_SD, size.users).astype(np.float32)
    item_bias = (rng.normal(0.0, ITEM_BIAS_SD, size.items) + POPULARITY_LIFT * lift).astype(
        np.float32
    )
    user_factors = rng.normal(0.0, FACTOR_SD, (size.users, LATENT_DIMS)).astype(np.float32)
    item_factors = rng.normal(0.0, FACTOR_SD, (size.items, LATENT_DIMS)).astype(np.float32)
    scores = np.empty(len(users), dtype=np.float32)
    for start in range(0, len(users), SCORE_CHUNK):
        u, i = users[start : start + SCORE_CHUNK], items[start : start + SCORE_CHUNK]
        interaction = np.einsum("ij,ij->i", user_factors[u], item_factors[i])
        noise = rng.normal(0.0, NOISE_SD, len(u)).astype(np.float32)
        scores[start : start + SCORE_CHUNK] = user_bias[u] + item_bias[i] + interaction + noise
    return scores


def _stars_by_quantile(scores: np.ndarray, shares: tuple[float, ...]) -> np.ndarray:
    """Star index 0..len(shares)-1 of each score: the lowest ``shares[0]`` get 0, and so on."""
    cuts = np.cumsum(shares)[:-1] / sum(shares)
    thresholds = np.quantile(scores, cuts)
    return np.searchsorted(thresholds, scores, side="right").astype(np.int8)


def _rating_times(users: np.ndarray, user_count: int, rng: np.random.Generator) -> np.ndarray:
    """Unix seconds: each user rates within a span (days to years) from a random first day."""
    first, last = ML25M_TIMES
    start = rng.integers(first, last, size=user_count)
    span = np.minimum(rng.exponential(180 * 86_400, size=user_count), last - start)
    return start[users] + (rng.random(len(users)) * span[users]).astype(np.int64)


def write_scaled_csv(
    folder: Path, size: SyntheticSize, seed: int = 0, dataset: str = "ml-25m"
) -> Path:
    """ratings.csv (``structured_ratings``) and movies.csv of a CSV member, fast at any size;
    no tags.csv or links.csv (optional files)."""
    member = movielens_set(dataset)
    if member.layout is not Layout.CSV:
        raise ValueError(f"{dataset} is not a CSV member (layout {member.layout})")
    folder.mkdir(parents=True, exist_ok=True)
    names = {"user_id": "userId", "item_id": "movieId"}
    ratings = structured_ratings(size, seed, half_stars=member.half_stars)
    ratings.rename(names).write_csv(folder / member.ratings_file, float_precision=1)
    del ratings
    movies = movies_frame(size.items, (*LATER_GENRES, NO_GENRES), seed)
    movies.rename(names, strict=False).write_csv(folder / member.items_file)
    return folder


def write_archive(folder: Path, dataset: str, target: Path) -> Path:
    """A zip laid out like GroupLens's: every file under the member's top folder."""
    top = movielens_set(dataset).folder
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            archive.write(path, f"{top}/{path.relative_to(folder).as_posix()}")
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--ratings", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dataset", default="ml-100k", help="a name of tasks/movielens/catalog.py")
    parser.add_argument("--no-folds", action="store_true", help="ml-100k: no u1..u5 files")
    parser.add_argument("--zip", action="store_true", help="also write OUT_DIR.zip")
    parser.add_argument(
        "--like-ml25m",
        action="store_true",
        help="CSV members: ml-25m's shape from the fast latent-model sampler (no tags, links)",
    )
    args = parser.parse_args()
    if args.like_ml25m:
        size = SyntheticSize.like_ml25m(args.ratings)
        dataset = "ml-25m" if args.dataset == "ml-100k" else args.dataset
        write_scaled_csv(args.out, size, args.seed, dataset)
        print(f"wrote {dataset} {size} to {args.out}")
        return
    size = SyntheticSize.like_movielens(args.ratings)
    if args.dataset == "ml-100k":
        write_ml100k(args.out, size, args.seed, folds=not args.no_folds)
    else:
        write_dataset(args.out, args.dataset, size, args.seed)
    if args.zip:
        write_archive(args.out, args.dataset, args.out.with_suffix(".zip"))
    print(f"wrote {args.dataset} {size} to {args.out}")


if __name__ == "__main__":
    main()
