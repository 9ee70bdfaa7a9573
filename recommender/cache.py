"""In-process memo of fitted components that several model fits can share.

A sweep fits the same training data many times with configs that differ only in a few fields
(``n_clusters``, ``n_neighbors``, ...). Expensive parts that do not depend on those fields
(latent factors, raw similarities, the ranking scorer) are computed once and reused.

Keys are built by the callers from a content fingerprint of the training data
(:attr:`recommender.data.Ratings.fingerprint`, so separately loaded copies of the same data
share entries) plus exactly the config fields the component depends on; see
:func:`config_key`. The cache is thread-safe: a key is computed by one thread while others
asking for it wait for that result. It is bounded by entry count and by the bytes of the
arrays it holds (least recently used entries go first). Cached arrays are made read-only,
since every fit that hits the entry shares them.
"""

from __future__ import annotations

import dataclasses
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from recommender.config import ModelConfig, Param

T = TypeVar("T")

DEFAULT_MAX_ENTRIES = 32  # a five-fold sweep holds about four per fold
DEFAULT_MAX_BYTES = 512 * 2**20


@dataclass(frozen=True)
class CacheInfo:
    """Counters and size of a :class:`ComponentCache`."""

    hits: int
    misses: int
    entries: int
    nbytes: int


@dataclass
class _Entry:
    future: Future[Any]
    nbytes: int = 0


class ComponentCache:
    """Thread-safe LRU memo ``key -> component``, bounded by entries and array bytes.

    ``max_entries=0`` disables it (every call computes). A component larger than
    ``max_bytes`` is returned but not kept.
    """

    def __init__(
        self, max_entries: int = DEFAULT_MAX_ENTRIES, max_bytes: int = DEFAULT_MAX_BYTES
    ) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: OrderedDict[Hashable, _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self._hits = 0
        self._misses = 0

    def get_or_compute(self, key: Hashable, compute: Callable[[], T]) -> T:
        """The component cached under ``key``, computing (once) and storing it if absent.
        Concurrent callers of a key being computed wait for it; errors are not cached."""
        if self.max_entries <= 0:
            return compute()
        with self._lock:
            entry = self._entries.get(key)
            owner = entry is None
            if entry is None:
                self._misses += 1
                entry = self._entries[key] = _Entry(Future())
            else:
                self._hits += 1
                self._entries.move_to_end(key)
        if owner:
            self._compute(key, entry, compute)
        result: T = entry.future.result()
        return result

    def _compute(self, key: Hashable, entry: _Entry, compute: Callable[[], T]) -> None:
        try:
            value = compute()
        except BaseException as error:
            with self._lock:
                self._discard(key, entry)
            entry.future.set_exception(error)
            raise
        arrays = list(_arrays(value))
        for array in arrays:
            array.flags.writeable = False
        with self._lock:
            entry.nbytes = sum(array.nbytes for array in arrays)
            self._evict(keep=key)
        entry.future.set_result(value)

    def _discard(self, key: Hashable, entry: _Entry) -> None:
        if self._entries.get(key) is entry:
            del self._entries[key]

    def _evict(self, keep: Hashable) -> None:
        """Drop least recently used entries until within bounds, never ``keep`` unless it
        alone exceeds ``max_bytes``."""
        kept = self._entries.get(keep)
        if kept is not None and kept.nbytes > self.max_bytes:
            self._discard(keep, kept)
        for key in list(self._entries):
            if len(self._entries) <= self.max_entries and self._nbytes() <= self.max_bytes:
                break
            if key != keep:
                del self._entries[key]

    def _nbytes(self) -> int:
        return sum(entry.nbytes for entry in self._entries.values())

    def clear(self) -> None:
        """Forget every entry and reset the counters (running computations still finish)."""
        with self._lock:
            self._entries.clear()
            self._hits = self._misses = 0

    def info(self) -> CacheInfo:
        with self._lock:
            return CacheInfo(self._hits, self._misses, len(self._entries), self._nbytes())


def _arrays(value: Any) -> Iterable[np.ndarray]:
    """The NumPy arrays inside a component (arrays, tuples/lists/dicts, dataclasses)."""
    if isinstance(value, np.ndarray):
        yield value
    elif isinstance(value, tuple | list):
        for item in value:
            yield from _arrays(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _arrays(item)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for field in dataclasses.fields(value):
            yield from _arrays(getattr(value, field.name))


COMPONENT_CACHE = ComponentCache()
"""The process-wide cache used by the models."""


def shared_component(key: Hashable, compute: Callable[[], T]) -> T:
    """``COMPONENT_CACHE.get_or_compute``: the models' entry point."""
    return COMPONENT_CACHE.get_or_compute(key, compute)


def config_key(
    config: ModelConfig, only: Iterable[str] | None = None, exclude: Iterable[str] = ()
) -> tuple[Param, ...]:
    """Hashable ``(kind, name, value, ...)`` of the flat config fields a component depends
    on: ``only`` these (default: all) minus ``exclude``."""
    params = config.as_params()
    names = sorted(set(params if only is None else only) - set(exclude))
    return (config.kind, *(item for name in names for item in (name, params[name])))


def clear_component_cache() -> None:
    """Empty the shared component cache (e.g. to free memory or time a cold fit)."""
    COMPONENT_CACHE.clear()


def component_cache_info() -> CacheInfo:
    """Hits, misses, entries and array bytes of the shared component cache."""
    return COMPONENT_CACHE.info()
