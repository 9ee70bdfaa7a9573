"""Synthetic MovieLens-shaped data in the ml-100k file format, seeded, at any size.

Shape: power-law item popularity and user activity, the ml-100k rating distribution, one to
three genres per movie, latin-1 titles with accents, some missing release dates.

    python bench/synth.py OUT_DIR --ratings 1000000
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--ratings", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-folds", action="store_true")
    args = parser.parse_args()
    size = SyntheticSize.like_movielens(args.ratings)
    write_ml100k(args.out, size, args.seed, folds=not args.no_folds)
    print(f"wrote {size} to {args.out}")


if __name__ == "__main__":
    main()
