"""The sweep's units: every configuration once, ordered so side-by-side units share nothing."""

from __future__ import annotations

from tasks.train.units import SweepTask, sweep_tasks


def keys(units: list[SweepTask]) -> list[tuple[str, int, int | None]]:
    return [(u.kind, u.fold, u.n_clusters) for u in units]


def test_every_kind_fold_and_cluster_count_once() -> None:
    units = sweep_tasks(["kmeans_knn", "paper", "bias"], [1, 2, 3], [4, 1], [40, 10])

    assert len(units) == len(set(keys(units))) == 3 * 2 + 3 + 3
    knn = [u for u in units if u.kind == "kmeans_knn"]
    assert {u.n_neighbors for u in knn} == {(10, 40)}
    assert {u.n_neighbors for u in units if u.kind == "paper"} == {(10, 40)}
    assert {(u.n_clusters, u.n_neighbors) for u in units if u.kind == "bias"} == {(None, ())}


def test_units_side_by_side_fit_different_folds() -> None:
    units = sweep_tasks(["kmeans_knn"], [1, 2, 3, 4, 5], [1, 2, 4], [10], side_by_side=2)

    assert keys(units)[:6] == [
        ("kmeans_knn", 1, 1), ("kmeans_knn", 2, 1), ("kmeans_knn", 1, 2),
        ("kmeans_knn", 2, 2), ("kmeans_knn", 1, 4), ("kmeans_knn", 2, 4),
    ]  # fmt: skip
    # a group's folds finish before the next group starts: one group's components cached
    assert [u.fold for u in units[6:12]] == [3, 4] * 3
    assert [u.fold for u in units[12:]] == [5] * 3
    for first, second in zip(units[:12:2], units[1:12:2], strict=True):
        assert first.fold != second.fold
