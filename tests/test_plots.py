"""Figures read back: every plotted number checked against a value computed by hand here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from tasks.plots import (
    cluster_sizes_plot,
    cluster_tradeoff_plot,
    cold_start_plot,
    elbow_plot,
    feature_importance_plot,
    genre_popularity_plot,
    item_mean_vs_count_plot,
    long_tail_plot,
    model_comparison_plot,
    rating_distribution_plot,
    ratings_by_demographics_plot,
    save_figure,
    sweep_heatmap,
    user_activity_vs_mean_plot,
)

# Rows deliberately out of order; the "item" rows must be ignored by a "user" heatmap.
SWEEP = pl.DataFrame(
    {
        "kind": ["user", "user", "user", "user", "user", "user", "item"],
        "n_clusters": [8, 2, 4, 2, 8, 4, 2],
        "n_neighbors": [20, 10, 10, 20, 10, 20, 10],
        "rmse": [0.95, 1.00, 0.97, 0.98, 0.96, 0.94, 9.99],
    }
)

# Six ratings; genres: item 1 Action, item 2 Drama, item 3 Action + Comedy.
RATINGS = pl.DataFrame(
    {
        "user_id": [1, 1, 1, 2, 2, 3],
        "item_id": [1, 2, 3, 1, 3, 1],
        "rating": [5, 3, 4, 1, 2, 5],
    },
    schema={"user_id": pl.Int32, "item_id": pl.Int32, "rating": pl.Int8},
)
ITEM_GENRES = pl.DataFrame(
    {"item_id": [1, 2, 3, 3], "genre_id": [0, 1, 0, 2]},
    schema={"item_id": pl.Int32, "genre_id": pl.Int16},
)
GENRES = pl.DataFrame(
    {"genre_id": [0, 1, 2, 3], "name": ["Action", "Drama", "Comedy", "Horror"]},
    schema={"genre_id": pl.Int16, "name": pl.String},
)


def tick_labels(ax: Axes, axis: str) -> list[str]:
    ticks = ax.get_yticklabels() if axis == "y" else ax.get_xticklabels()
    return [tick.get_text() for tick in ticks]


def bars(ax: Axes) -> list[Rectangle]:
    rectangles = [patch for patch in ax.patches if isinstance(patch, Rectangle)]
    assert len(rectangles) == len(ax.patches)
    return rectangles


def bar_widths(ax: Axes) -> list[float]:
    return [float(bar.get_width()) for bar in bars(ax)]


def test_sweep_heatmap_grid_is_the_hand_pivot() -> None:
    figure = sweep_heatmap(SWEEP, "rmse", "user")
    ax = figure.axes[0]
    grid = np.asarray(ax.images[0].get_array())
    # rows n_clusters 2, 4, 8; columns n_neighbors 10, 20
    np.testing.assert_allclose(grid, [[1.00, 0.98], [0.97, 0.94], [0.96, 0.95]])
    assert tick_labels(ax, "y") == ["2", "4", "8"]
    assert tick_labels(ax, "x") == ["10", "20"]
    assert ax.get_title() == "rmse of user: clusters x neighbours"
    assert ax.get_xlabel() == "n_neighbors" and ax.get_ylabel() == "n_clusters"
    assert sorted(text.get_text() for text in ax.texts) == sorted(
        ["1.000", "0.980", "0.970", "0.940", "0.960", "0.950"]
    )
    assert len(figure.axes) == 2  # the colorbar


def test_sweep_heatmap_colormap_direction_depends_on_metric() -> None:
    ndcg = SWEEP.rename({"rmse": "ndcg_at_10"})
    lower = sweep_heatmap(SWEEP, "rmse", "user").axes[0].images[0].get_cmap()
    higher = sweep_heatmap(ndcg, "ndcg_at_10", "user").axes[0].images[0].get_cmap()
    assert lower.name == "viridis_r"
    assert higher.name == "viridis"


def test_sweep_heatmap_missing_cell_is_masked_and_unknown_kind_fails() -> None:
    partial = SWEEP.filter(~((pl.col("n_clusters") == 8) & (pl.col("n_neighbors") == 20)))
    grid = partial.pipe(sweep_heatmap, "rmse", "user").axes[0].images[0].get_array()
    assert np.ma.getmaskarray(np.ma.asarray(grid)).tolist() == [
        [False, False],
        [False, False],
        [False, True],
    ]
    with pytest.raises(ValueError, match="no sweep rows"):
        sweep_heatmap(SWEEP, "rmse", "nope")


def test_elbow_plot_has_two_axes_and_skips_missing_silhouette() -> None:
    figure = elbow_plot([2, 4, 8], [100.0, 60.0, 50.0], [None, 0.4, 0.3], chosen=4)
    left, right = figure.axes
    inertia_line = left.lines[0]
    assert np.asarray(inertia_line.get_xdata()).tolist() == [2, 4, 8]
    assert np.asarray(inertia_line.get_ydata()).tolist() == [100.0, 60.0, 50.0]
    silhouette_line = right.lines[0]
    assert np.asarray(silhouette_line.get_xdata()).tolist() == [4, 8]
    assert np.asarray(silhouette_line.get_ydata()).tolist() == [0.4, 0.3]
    chosen_line = left.lines[1]
    assert chosen_line.get_linestyle() == "--"
    assert np.asarray(chosen_line.get_xdata()).tolist() == [4, 4]
    assert left.get_ylabel() == "inertia" and right.get_ylabel() == "silhouette"


def test_elbow_plot_without_chosen_has_no_vertical_line() -> None:
    left = elbow_plot([2, 3], [10.0, 5.0], [0.5, 0.6]).axes[0]
    assert len(left.lines) == 1


def test_cluster_sizes_plot_is_ordered_by_k_with_every_size_drawn() -> None:
    sizes = {4: [10, 20, 30, 40], 2: [50, 50]}
    ax = cluster_sizes_plot(sizes).axes[0]
    assert tick_labels(ax, "x") == ["2", "4"]
    points = [np.asarray(collection.get_offsets()).tolist() for collection in ax.collections]
    assert points == [[[0, 50], [0, 50]], [[1, 10], [1, 20], [1, 30], [1, 40]]]
    assert ax.get_ylabel() == "members per cluster"


def test_model_comparison_sorts_best_first_and_skips_missing_values() -> None:
    models = pl.DataFrame(
        {
            "model": ["kmeans_knn", "popularity", "paper (reported)", "svd"],
            "rmse": [0.95, None, 0.93, 0.90],
            "ndcg_at_10": [0.30, 0.20, None, float("nan")],
        }
    )
    figure = model_comparison_plot(models)
    rmse_ax, ndcg_ax = figure.axes
    assert tick_labels(rmse_ax, "y") == ["svd", "paper (reported)", "kmeans_knn"]
    assert bar_widths(rmse_ax) == pytest.approx([0.90, 0.93, 0.95])
    assert tick_labels(ndcg_ax, "y") == ["kmeans_knn", "popularity"]
    assert bar_widths(ndcg_ax) == pytest.approx([0.30, 0.20])
    assert rmse_ax.yaxis_inverted()  # first (best) bar on top
    assert [text.get_text() for text in ndcg_ax.texts] == ["0.300", "0.200"]


def test_model_comparison_with_a_metric_entirely_missing() -> None:
    models = pl.DataFrame({"model": ["a", "b"], "rmse": [1.0, 0.5], "ndcg_at_10": [None, None]})
    rmse_ax, ndcg_ax = model_comparison_plot(models).axes
    assert bar_widths(rmse_ax) == [0.5, 1.0]
    assert bar_widths(ndcg_ax) == []
    assert [text.get_text() for text in ndcg_ax.texts] == ["no values"]


def test_feature_importance_keeps_the_top_largest_on_top() -> None:
    importances = [("age", 0.1), ("drama", 0.5), ("year", 0.3), ("count", 0.05)]
    ax = feature_importance_plot(importances, top=3).axes[0]
    assert tick_labels(ax, "y") == ["drama", "year", "age"]
    assert bar_widths(ax) == [0.5, 0.3, 0.1]
    assert ax.yaxis_inverted()


@pytest.mark.parametrize(
    ("values", "labels", "counts"),
    [
        ([5, 3, 4, 1, 2, 3, 3, 5], ["1", "2", "3", "4", "5"], [1, 1, 3, 1, 2]),
        ([0.5, 4.5, 4.5, 5.0, 0.5, 4.5], ["0.5", "4.5", "5"], [2, 3, 1]),
    ],
)
def test_rating_distribution_counts_each_value(
    values: list[float], labels: list[str], counts: list[int]
) -> None:
    ax = rating_distribution_plot(pl.DataFrame({"rating": values})).axes[0]
    assert tick_labels(ax, "x") == labels
    assert [bar.get_height() for bar in bars(ax)] == counts


def test_long_tail_plot_sorts_counts_descending_on_log_axes() -> None:
    users_ax, items_ax = long_tail_plot(RATINGS).axes
    # users: 1 -> 3 ratings, 2 -> 2, 3 -> 1; items: 1 -> 3, 3 -> 2, 2 -> 1
    for ax in (users_ax, items_ax):
        assert np.asarray(ax.lines[0].get_xdata()).tolist() == [1, 2, 3]
        assert np.asarray(ax.lines[0].get_ydata()).tolist() == [3, 2, 1]
        assert ax.get_yscale() == "log"
    assert users_ax.get_title() == "Ratings per user"
    assert items_ax.get_title() == "Ratings per item"


def test_genre_popularity_counts_and_means_by_hand() -> None:
    ax = genre_popularity_plot(RATINGS, ITEM_GENRES, GENRES).axes[0]
    # Action: items 1, 3 -> ratings 5, 1, 5 (item 1) + 4, 2 (item 3) = 5 ratings, mean 3.4
    # Comedy: item 3 -> 4, 2 = 2 ratings, mean 3.0; Drama: item 2 -> 3 = 1 rating; Horror: none
    assert tick_labels(ax, "y") == ["Action", "Comedy", "Drama"]
    assert bar_widths(ax) == [5, 2, 1]
    assert [text.get_text() for text in ax.texts] == [
        "5 (mean 3.40)",
        "2 (mean 3.00)",
        "1 (mean 3.00)",
    ]
    assert ax.yaxis_inverted()


def test_save_figure_writes_a_png_and_creates_folders(tmp_path: Path) -> None:
    figure = rating_distribution_plot(RATINGS)
    path = save_figure(figure, tmp_path / "nested" / "deeper" / "ratings.png")
    assert path == tmp_path / "nested" / "deeper" / "ratings.png"
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 1000


USERS = pl.DataFrame(
    {"user_id": [1, 2, 3], "age": [17, 30, 30], "gender": ["F", "M", "F"],
     "occupation": ["student", "writer", "writer"]},
    schema={"user_id": pl.Int32, "age": pl.Int16, "gender": pl.String, "occupation": pl.String},
)  # fmt: skip
TRADEOFF = pl.DataFrame(
    {"n_clusters": [4, 1, 16], "rmse": [0.91, 0.90, 0.93], "fit_seconds": [1.0, 2.0, 0.5]}
)
COLD_START = pl.DataFrame(
    {"method": ["kmeans", "kmeans", "popularity", "popularity"], "k": [3, 0, 0, 3],
     "ndcg_at_10": [0.20, 0.13, 0.12, 0.14]}
)  # fmt: skip


def test_model_comparison_draws_the_five_summary_metrics() -> None:
    models = pl.DataFrame(
        {"model": ["a", "b"], "rmse": [0.9, 1.0], "mae": [0.7, 0.8], "precision_at_10": [0.3, 0.1],
         "recall_at_10": [0.2, 0.1], "ndcg_at_10": [0.4, 0.2], "coverage": [0.1, 0.2]}
    )  # fmt: skip

    axes = model_comparison_plot(models, note="b ranks ties").axes

    assert [ax.get_title() for ax in axes[:5]] == ["RMSE", "MAE", "P@10", "R@10", "NDCG@10"]
    assert [text.get_text() for text in axes[5].texts] == ["b ranks ties"]
    assert bar_widths(axes[2]) == pytest.approx([0.3, 0.1])
    assert tick_labels(axes[1], "y") == ["a", "b"]


def test_cluster_tradeoff_puts_each_cluster_count_at_its_seconds_and_rmse() -> None:
    ax = cluster_tradeoff_plot(TRADEOFF, "K-Means KNN (tuned)").axes[0]

    points = np.asarray(ax.collections[0].get_offsets()).tolist()
    assert points == [[2.0, 0.90], [1.0, 0.91], [0.5, 0.93]]  # k = 1, 4, 16
    assert [text.get_text() for text in ax.texts] == ["k=1", "k=4", "k=16"]
    assert ax.get_xlabel() == "fit seconds per fold (mean)"
    assert ax.get_title().startswith("K-Means KNN (tuned): fit time against RMSE")


def test_cold_start_plot_draws_ndcg_against_k_per_method() -> None:
    ax = cold_start_plot(COLD_START, {"popularity": "Popularity", "kmeans": "K-Means fold-in",
                                      "item_knn": "item-KNN fold-in"}).axes[0]  # fmt: skip

    lines = {line.get_label(): line for line in ax.lines}
    assert sorted(lines) == ["K-Means fold-in", "Popularity"]  # no rows: no line
    assert np.asarray(lines["K-Means fold-in"].get_xdata()).tolist() == [0, 3]
    assert np.asarray(lines["K-Means fold-in"].get_ydata()).tolist() == [0.13, 0.20]
    assert ax.get_ylabel() == "NDCG@10 (mean over folds)"


def test_item_and_user_scatters_are_counts_against_means() -> None:
    items_ax = item_mean_vs_count_plot(RATINGS).axes[0]
    users_ax = user_activity_vs_mean_plot(RATINGS).axes[0]

    items = sorted(map(tuple, np.asarray(items_ax.collections[0].get_offsets()).tolist()))
    users = sorted(map(tuple, np.asarray(users_ax.collections[0].get_offsets()).tolist()))
    # items: 1 -> 5, 1, 5; 2 -> 3; 3 -> 4, 2; users: 1 -> 5, 3, 4; 2 -> 1, 2; 3 -> 5
    assert items == [(1, 3.0), (2, 3.0), (3, pytest.approx(11 / 3))]
    assert users == [(1, 5.0), (2, 1.5), (3, 4.0)]
    assert items_ax.get_xscale() == users_ax.get_xscale() == "log"


def test_ratings_by_demographics_means_by_hand() -> None:
    age_ax, gender_ax, occupation_ax = ratings_by_demographics_plot(RATINGS, USERS).axes

    # user 1 (17, F, student): 5, 3, 4; user 2 (30, M, writer): 1, 2; user 3 (30, F, writer): 5
    assert tick_labels(age_ax, "y") == ["<18", "25-34"]
    assert bar_widths(age_ax) == pytest.approx([4.0, 8 / 3])
    assert dict(zip(tick_labels(gender_ax, "y"), bar_widths(gender_ax), strict=True)) == {
        "M": pytest.approx(1.5), "F": pytest.approx(4.25)
    }  # fmt: skip
    assert [t.get_text() for t in occupation_ax.texts] == ["2.67 (n=3)", "4.00 (n=3)"]


def test_cluster_plots_say_what_was_clustered() -> None:
    sizes = cluster_sizes_plot({2: [1, 2]}, what="users").axes[0]
    elbow = elbow_plot([2, 4], [2.0, 1.0], [0.1, 0.2], what="users").axes[0]

    assert "clustered: users" in sizes.get_title() and "clustered: users" in elbow.get_title()


def test_every_figure_has_titles_and_axis_labels() -> None:
    models = pl.DataFrame({"model": ["a"], "rmse": [1.0], "ndcg_at_10": [0.5]})
    figures: list[Figure] = [
        sweep_heatmap(SWEEP, "rmse", "user"),
        elbow_plot([2, 4], [2.0, 1.0], [0.1, 0.2], chosen=2),
        cluster_sizes_plot({2: [1, 2]}),
        model_comparison_plot(models),
        feature_importance_plot([("x", 1.0)]),
        rating_distribution_plot(RATINGS),
        long_tail_plot(RATINGS),
        genre_popularity_plot(RATINGS, ITEM_GENRES, GENRES),
        cluster_tradeoff_plot(TRADEOFF, "m"),
        cold_start_plot(COLD_START, {"kmeans": "K-Means fold-in"}),
        item_mean_vs_count_plot(RATINGS),
        user_activity_vs_mean_plot(RATINGS),
        ratings_by_demographics_plot(RATINGS, USERS),
    ]
    for figure in figures:
        main = figure.axes[0]
        suptitle = figure.get_suptitle()
        assert main.get_title() or suptitle
        assert main.get_xlabel() and main.get_ylabel()
