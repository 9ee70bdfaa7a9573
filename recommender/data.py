"""Ratings as a sparse user x item matrix with id maps, plus loaders for the MovieLens 100K files."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from recommender.temporal import as_seconds

logger = logging.getLogger(__name__)

GENRES: tuple[str, ...] = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
    "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
"""The 19 MovieLens genre flags, in the order of u.item and u.genre."""

# Columns of u.item that are not genre flags; anything else numeric counts as a genre.
_ITEM_TEXT_COLUMNS = {"item_id", "title", "release_date", "video_release_date", "imdb_url", "url"}


def column(frame: Any, name: str) -> np.ndarray:
    """One column of a polars/pandas frame (or a mapping of arrays) as a NumPy array."""
    values = frame[name]
    to_numpy = getattr(values, "to_numpy", None)
    return np.asarray(to_numpy() if to_numpy is not None else values)


def column_names(frame: Any) -> list[str]:
    """Column names of a polars/pandas frame or the keys of a mapping of arrays."""
    if isinstance(frame, Mapping):
        return [str(name) for name in frame]
    return [str(name) for name in frame.columns]


def index_of(ids: np.ndarray, sorted_ids: np.ndarray) -> np.ndarray:
    """Positions of ``ids`` in the sorted array ``sorted_ids``; -1 where an id is absent."""
    ids = np.asarray(ids)
    if len(sorted_ids) == 0:
        return np.full(ids.shape, -1, dtype=np.int64)
    position = np.clip(np.searchsorted(sorted_ids, ids), 0, len(sorted_ids) - 1)
    found = sorted_ids[position] == ids
    return np.where(found, position, -1).astype(np.int64)


@dataclass(frozen=True)
class ItemGenres:
    """Genre flags of items: ``flags[k]`` are the 0/1 genres of raw item ``item_ids[k]``."""

    item_ids: np.ndarray
    flags: np.ndarray
    names: tuple[str, ...]

    @classmethod
    def from_frame(cls, items: Any, genre_columns: Sequence[str] | None = None) -> ItemGenres:
        """Read ``item_id`` and the genre columns (the MovieLens names, else every other
        numeric column) from a polars/pandas frame or a mapping of arrays."""
        names = list(genre_columns) if genre_columns is not None else _genre_columns(items)
        if not names:
            raise ValueError("items frame has no genre columns")
        flags = np.column_stack([column(items, name).astype(np.float64) for name in names])
        return cls(column(items, "item_id").astype(np.int64), flags, tuple(names))

    def aligned_to(self, item_ids: np.ndarray) -> np.ndarray:
        """Flags in the order of ``item_ids``; items without a row get all-zero flags."""
        position = index_of(item_ids, np.sort(self.item_ids))
        order = np.argsort(self.item_ids, kind="stable")
        aligned = np.zeros((len(item_ids), self.flags.shape[1]))
        known = position >= 0
        aligned[known] = self.flags[order[position[known]]]
        return aligned


def _genre_columns(items: Any) -> list[str]:
    names = column_names(items)
    known = [name for name in GENRES if name in names]
    if known:
        return known
    return [
        name
        for name in names
        if name not in _ITEM_TEXT_COLUMNS and np.issubdtype(column(items, name).dtype, np.number)
    ]


@dataclass(frozen=True, eq=False)
class Ratings:
    """Explicit ratings: per-rating user/item positions into sorted raw id arrays.

    Build it with :meth:`from_frame` or :meth:`from_arrays`; ``matrix`` is the
    users x items CSR matrix. ``genres`` (items x genres, aligned with ``item_ids``) is optional.
    """

    user_index: np.ndarray
    item_index: np.ndarray
    values: np.ndarray
    user_ids: np.ndarray
    item_ids: np.ndarray
    timestamps: np.ndarray | None = None
    genres: np.ndarray | None = None
    genre_names: tuple[str, ...] = ()
    _cache: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_arrays(
        cls,
        user_ids: Any,
        item_ids: Any,
        ratings: Any,
        timestamps: Any | None = None,
    ) -> Ratings:
        """Ratings from parallel arrays of raw ids and values (a repeated pair keeps the last)."""
        users = np.asarray(user_ids).astype(np.int64)
        items = np.asarray(item_ids).astype(np.int64)
        values = np.asarray(ratings, dtype=np.float64)
        if not (len(users) == len(items) == len(values)):
            raise ValueError("user_ids, item_ids and ratings must have the same length")
        if np.isnan(values).any():
            raise ValueError("ratings contain NaN")
        stamps = None if timestamps is None else as_seconds(timestamps)
        keep = _last_of_each_pair(users, items)
        if len(keep) < len(users):
            logger.warning("dropped %d repeated (user, item) ratings", len(users) - len(keep))
        users, items, values = users[keep], items[keep], values[keep]
        stamps = None if stamps is None else stamps[keep]
        user_ids_sorted, user_index = np.unique(users, return_inverse=True)
        item_ids_sorted, item_index = np.unique(items, return_inverse=True)
        return cls(user_index, item_index, values, user_ids_sorted, item_ids_sorted, stamps)

    @classmethod
    def from_frame(cls, frame: Any, items: Any | None = None) -> Ratings:
        """Ratings from a polars/pandas frame with ``user_id, item_id, rating[, timestamp]``;
        ``items`` (``item_id`` + genre flag columns) attaches the genre matrix."""
        names = column_names(frame)
        stamps = column(frame, "timestamp") if "timestamp" in names else None
        ratings = cls.from_arrays(
            column(frame, "user_id"), column(frame, "item_id"), column(frame, "rating"), stamps
        )
        return ratings if items is None else ratings.with_items(items)

    def with_items(self, items: Any) -> Ratings:
        """A copy carrying the genre flags of ``items`` (frame or :class:`ItemGenres`)."""
        genres = items if isinstance(items, ItemGenres) else ItemGenres.from_frame(items)
        return Ratings(
            self.user_index, self.item_index, self.values, self.user_ids, self.item_ids,
            self.timestamps, genres.aligned_to(self.item_ids), genres.names,
        )  # fmt: skip

    def subset(self, keep: np.ndarray) -> Ratings:
        """The ratings selected by the boolean mask ``keep``, with the same id maps."""
        stamps = None if self.timestamps is None else self.timestamps[keep]
        return Ratings(
            self.user_index[keep], self.item_index[keep], self.values[keep], self.user_ids,
            self.item_ids, stamps, self.genres, self.genre_names,
        )  # fmt: skip

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def __len__(self) -> int:
        return len(self.values)

    @property
    def matrix(self) -> sp.csr_matrix:
        """Users x items CSR matrix of the ratings (cached)."""
        if "matrix" not in self._cache:
            self._cache["matrix"] = sp.csr_matrix(
                (self.values, (self.user_index, self.item_index)),
                shape=(self.n_users, self.n_items),
            )
        return self._cache["matrix"]

    @property
    def fingerprint(self) -> str:
        """Content hash of the ratings (positions, values and id maps; not the timestamps or
        genres), cached: equal data loaded twice gives equal fingerprints. It keys the shared
        component cache, so treat a Ratings as immutable."""
        if "fingerprint" not in self._cache:
            digest = hashlib.blake2b(digest_size=16)
            for array in (self.user_index, self.item_index, self.values, self.user_ids,
                          self.item_ids):  # fmt: skip
                digest.update(f"{array.dtype.str}{array.shape};".encode())
                digest.update(np.ascontiguousarray(array).tobytes())
            self._cache["fingerprint"] = digest.hexdigest()
        return str(self._cache["fingerprint"])

    def user_positions(self, user_ids: Any) -> np.ndarray:
        """Row positions of raw user ids; -1 for users not in these ratings."""
        return index_of(np.asarray(user_ids).astype(np.int64), self.user_ids)

    def item_positions(self, item_ids: Any) -> np.ndarray:
        """Column positions of raw item ids; -1 for items not in these ratings."""
        return index_of(np.asarray(item_ids).astype(np.int64), self.item_ids)

    def raw_users(self) -> np.ndarray:
        """The raw user id of every rating."""
        return self.user_ids[self.user_index]

    def raw_items(self) -> np.ndarray:
        """The raw item id of every rating."""
        return self.item_ids[self.item_index]

    def to_dict(self) -> dict[str, np.ndarray]:
        """Columns ``user_id, item_id, rating`` (``pl.DataFrame(r.to_dict())`` makes a frame)."""
        return {"user_id": self.raw_users(), "item_id": self.raw_items(), "rating": self.values}


def _last_of_each_pair(users: np.ndarray, items: np.ndarray) -> np.ndarray:
    keys = np.stack([users[::-1], items[::-1]], axis=1)
    _, first_in_reversed = np.unique(keys, axis=0, return_index=True)
    return np.sort(len(users) - 1 - first_in_reversed)


@dataclass(frozen=True)
class Fold:
    """One train/test split, e.g. the official MovieLens u1.base/u1.test."""

    name: str
    train: Ratings
    test: Ratings


def load_ratings(path: str | Path) -> Ratings:
    """Ratings from a tab-separated MovieLens file (u.data, u1.base, ...)."""
    table = np.loadtxt(path, dtype=np.int64, ndmin=2)
    return Ratings.from_arrays(table[:, 0], table[:, 1], table[:, 2], table[:, 3])


def load_items(folder: str | Path) -> dict[str, np.ndarray]:
    """u.item as columns ``item_id, title`` and the 19 genre flags (a frame-like mapping)."""
    path = Path(folder) / "u.item"
    lines = path.read_text(encoding="latin-1").splitlines()
    fields = np.array([line.split("|") for line in lines if line.strip()], dtype=object)
    items: dict[str, np.ndarray] = {
        "item_id": fields[:, 0].astype(np.int64),
        "title": fields[:, 1].astype(str),
    }
    for offset, name in enumerate(GENRES):
        items[name] = fields[:, 5 + offset].astype(np.int64)
    return items


def load_users(folder: str | Path) -> dict[str, np.ndarray]:
    """u.user as columns ``user_id, age, gender, occupation, zip_code`` (a frame-like mapping)."""
    path = Path(folder) / "u.user"
    lines = path.read_text(encoding="latin-1").splitlines()
    fields = np.array([line.split("|") for line in lines if line.strip()], dtype=object)
    return {
        "user_id": fields[:, 0].astype(np.int64),
        "age": fields[:, 1].astype(np.int64),
        "gender": fields[:, 2].astype(str),
        "occupation": fields[:, 3].astype(str),
        "zip_code": fields[:, 4].astype(str),
    }


def load_official_folds(
    folder: str | Path, *, with_genres: bool = True, names: Sequence[str] | None = None
) -> list[Fold]:
    """The official folds u1..u5 (80k/20k) from an ml-100k folder; the training Ratings carry
    the genre flags of u.item when ``with_genres`` (the test never needs them)."""
    folder = Path(folder)
    genres = ItemGenres.from_frame(load_items(folder)) if with_genres else None
    folds = []
    for name in names if names is not None else [f"u{k}" for k in range(1, 6)]:
        train = load_ratings(folder / f"{name}.base")
        folds.append(
            Fold(
                name=name,
                train=train if genres is None else train.with_items(genres),
                test=load_ratings(folder / f"{name}.test"),
            )
        )
    return folds
