"""Matplotlib figures and Markdown tables for the training sweep and the report.

Built on ``matplotlib.figure.Figure`` directly (no global pyplot state), so safe in threads.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

if TYPE_CHECKING:  # matplotlib loads when a plot is drawn: a cached run draws none
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from matplotlib.image import AxesImage

LOWER_IS_BETTER = frozenset({"rmse", "mae", "mse"})
PAPER_MODEL = "paper (reported)"  # drawn like any other model
METRIC_LABELS = {
    "rmse": "RMSE", "mae": "MAE", "precision_at_10": "P@10", "recall_at_10": "R@10",
    "ndcg_at_10": "NDCG@10", "map_at_10": "MAP@10", "coverage": "coverage",
}  # fmt: skip
SUMMARY_METRICS = ("rmse", "mae", "precision_at_10", "recall_at_10", "ndcg_at_10")
# The age groups MovieLens 1M uses (ml-100k has exact ages): lower bounds and labels.
AGE_GROUPS = ((1, "<18"), (18, "18-24"), (25, "25-34"), (35, "35-44"), (45, "45-49"),
              (50, "50-55"), (56, "56+"))  # fmt: skip


def _lower_is_better(metric: str) -> bool:
    return metric.lower() in LOWER_IS_BETTER


def _new_figure(width: float = 7.0, height: float = 4.5) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _annotate_cells(ax: Axes, image: AxesImage, grid: np.ndarray) -> None:
    """Write each finite cell value (3 decimals) in black or white, whichever reads better."""
    rgba = np.asarray(image.cmap(image.norm(grid)))
    luminance = rgba[..., :3] @ np.array([0.299, 0.587, 0.114])
    for row, col in zip(*np.nonzero(np.isfinite(grid)), strict=True):
        colour = "black" if luminance[row, col] > 0.5 else "white"
        text = f"{grid[row, col]:.3f}"
        ax.text(col, row, text, ha="center", va="center", color=colour, fontsize=8)


def sweep_heatmap(sweep: pl.DataFrame, metric: str, kind: str, name: str | None = None) -> Figure:
    """Grid of ``metric`` for one ``kind`` (titled ``name``, default the kind): rows
    n_clusters, columns n_neighbors (ascending)."""
    rows = sweep.filter(pl.col("kind") == kind)
    if rows.is_empty():
        raise ValueError(f"no sweep rows of kind {kind!r}")
    clusters = sorted(rows["n_clusters"].unique().to_list())
    neighbours = sorted(rows["n_neighbors"].unique().to_list())
    wide = rows.pivot(
        on="n_neighbors", index="n_clusters", values=metric, aggregate_function="mean"
    ).sort("n_clusters")
    grid = wide.select([str(n) for n in neighbours]).cast(pl.Float64).to_numpy()
    figure = _new_figure(1.6 + 0.9 * len(neighbours), 1.4 + 0.6 * len(clusters))
    ax = figure.add_subplot()
    cmap = "viridis_r" if _lower_is_better(metric) else "viridis"
    image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, aspect="auto")
    figure.colorbar(image, ax=ax, label=metric)
    _annotate_cells(ax, image, grid)
    ax.set_xticks(range(len(neighbours)), [str(n) for n in neighbours])
    ax.set_yticks(range(len(clusters)), [str(k) for k in clusters])
    ax.set_xlabel("n_neighbors")
    ax.set_ylabel("n_clusters")
    ax.set_title(f"{metric} of {name or kind}: clusters x neighbours")
    return figure


def elbow_plot(
    n_clusters: list[int],
    inertia: list[float],
    silhouette: list[float | None],
    chosen: int | None = None,
    what: str | None = None,
) -> Figure:
    """Inertia (left axis) and silhouette (right axis, None skipped) against the cluster count;
    ``what`` was clustered (in the title)."""
    figure = _new_figure()
    ax = figure.add_subplot()
    ax.plot(n_clusters, inertia, marker="o", color="tab:blue", label="inertia")
    ax.set_xlabel("number of clusters k")
    ax.set_ylabel("inertia", color="tab:blue")
    ax.set_xticks(n_clusters)
    right = ax.twinx()
    known = [(k, s) for k, s in zip(n_clusters, silhouette, strict=True) if s is not None]
    right.plot(
        [k for k, _ in known],
        [s for _, s in known],
        marker="s",
        color="tab:orange",
        label="silhouette",
    )
    right.set_ylabel("silhouette", color="tab:orange")
    if chosen is not None:
        ax.axvline(chosen, color="grey", linestyle="--", label=f"chosen k = {chosen}")
    handles = ax.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncols=3)
    ax.set_title("K-Means elbow: inertia and silhouette" + (f"\nclustered: {what}" if what else ""))
    return figure


def cluster_sizes_plot(sizes: dict[int, list[int]], what: str | None = None) -> Figure:
    """Per cluster count k (ascending), a boxplot of members per cluster with the points on
    top; ``what`` was clustered (in the title)."""
    ks = sorted(sizes)
    figure = _new_figure(max(6.5, 0.7 * len(ks) + 2.0), 4.5)
    ax = figure.add_subplot()
    positions = list(range(len(ks)))
    ax.boxplot([sizes[k] for k in ks], positions=positions, widths=0.6, showfliers=False)
    for position, k in zip(positions, ks, strict=True):
        ax.scatter([position] * len(sizes[k]), sizes[k], s=12, alpha=0.6, color="tab:blue")
    ax.set_xticks(positions, [str(k) for k in ks])
    ax.set_xlabel("number of clusters k")
    ax.set_ylabel("members per cluster")
    ax.set_title("Cluster sizes per cluster count" + (f"\nclustered: {what}" if what else ""))
    return figure


def _metric_bars(ax: Axes, models: pl.DataFrame, metric: str, label: str) -> None:
    """Horizontal bars of one metric, best on top, models without a value left out."""
    value = pl.col(metric).cast(pl.Float64)
    known = models.filter(value.is_not_null() & value.is_not_nan()).sort(
        metric, descending=not _lower_is_better(metric)
    )
    ax.set_title(label)
    ax.set_xlabel(label)
    if known.is_empty():
        ax.text(0.5, 0.5, "no values", ha="center", va="center", transform=ax.transAxes)
        ax.set_yticks([])
        return
    positions = range(known.height)
    bars = ax.barh(positions, known[metric].cast(pl.Float64).to_list(), color="tab:blue")
    ax.bar_label(bars, fmt="%.3f", padding=3, fontsize=8)
    ax.set_yticks(positions, known["model"].to_list())
    ax.invert_yaxis()
    ax.margins(x=0.2)


def model_comparison_plot(
    models: pl.DataFrame, metrics: tuple[str, ...] | None = None, note: str | None = None
) -> Figure:
    """One panel per metric (default: those of RMSE, MAE, P@10, R@10, NDCG@10 that ``models``
    has), each sorted best-first; ``note`` (how to read a figure) in the spare panel, if any."""
    shown = metrics or tuple(m for m in SUMMARY_METRICS if m in models.columns)
    columns = min(3, len(shown))
    rows = math.ceil(len(shown) / columns)
    figure = _new_figure(5.5 * columns, rows * (0.8 + 0.45 * max(models.height, 4)))
    axes = list(np.atleast_1d(figure.subplots(rows, columns)).ravel())
    for spare in axes[len(shown) :]:
        if note is None or spare is not axes[len(shown)]:
            figure.delaxes(spare)
            continue
        spare.axis("off")
        spare.text(0.0, 0.5, textwrap.fill(note, 45), va="center", fontsize=9)
    for ax, metric in zip(axes, shown, strict=False):
        _metric_bars(ax, models, metric, METRIC_LABELS.get(metric, metric))
    for ax in axes[: len(shown) : columns]:
        ax.set_ylabel("model")
    figure.suptitle("Metrics summary: each model's best configuration (best first; "
                    "RMSE, MAE lower is better, the others higher)")  # fmt: skip
    return figure


def cluster_tradeoff_plot(tradeoff: pl.DataFrame, name: str) -> Figure:
    """Fit seconds per fold (x) against RMSE (y), one point per cluster count, annotated with
    it and joined in cluster order: what clusters cost and buy."""
    figure = _new_figure()
    ax = figure.add_subplot()
    frame = tradeoff.sort("n_clusters")
    seconds = frame["fit_seconds"].cast(pl.Float64).to_numpy()
    rmse = frame["rmse"].cast(pl.Float64).to_numpy()
    ax.plot(seconds, rmse, color="tab:grey", linewidth=0.8, zorder=1)
    ax.scatter(seconds, rmse, color="tab:blue", zorder=2)
    for k, x, y in zip(frame["n_clusters"].to_list(), seconds, rmse, strict=True):
        ax.annotate(f"k={k}", (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.set_xlabel("fit seconds per fold (mean)")
    ax.set_ylabel("RMSE (best over neighbour counts)")
    ax.set_title(f"{name}: fit time against RMSE per cluster count k")
    ax.margins(0.15)
    return figure


def cold_start_plot(starts: pl.DataFrame, names: dict[str, str]) -> Figure:
    """NDCG@10 of new users against the number of ratings k they gave, one line per method
    (``names``: method -> label)."""
    figure = _new_figure()
    ax = figure.add_subplot()
    for method, label in names.items():
        rows = starts.filter(pl.col("method") == method).sort("k")
        if rows.is_empty():
            continue
        ax.plot(rows["k"].to_list(), rows["ndcg_at_10"].to_list(), marker="o", label=label)
    ax.set_xticks(sorted(starts["k"].unique().to_list()))
    ax.set_xlabel("ratings the new user gave (k, first by time)")
    ax.set_ylabel("NDCG@10 (mean over folds)")
    ax.set_title("Cold start: new users folded in from their first k ratings")
    ax.legend()
    return figure


def feature_importance_plot(importances: list[tuple[str, float]], top: int = 20) -> Figure:
    """The ``top`` largest importances as horizontal bars, largest on top."""
    ranked = sorted(importances, key=lambda pair: pair[1], reverse=True)[:top]
    figure = _new_figure(7.0, 1.0 + 0.3 * max(len(ranked), 4))
    ax = figure.add_subplot()
    ax.barh(range(len(ranked)), [value for _, value in ranked], color="tab:green")
    ax.set_yticks(range(len(ranked)), [name for name, _ in ranked])
    ax.invert_yaxis()
    ax.set_xlabel("importance")
    ax.set_ylabel("feature")
    ax.set_title(f"Top {len(ranked)} feature importances")
    return figure


def rating_distribution_plot(ratings: pl.DataFrame) -> Figure:
    """One bar per distinct rating value (ascending) with its count."""
    counts = ratings.group_by("rating").agg(pl.len().alias("count")).sort("rating")
    figure = _new_figure()
    ax = figure.add_subplot()
    positions = range(counts.height)
    bars = ax.bar(positions, counts["count"].to_list(), color="tab:blue")
    ax.bar_label(bars, fmt="{:,.0f}", padding=2, fontsize=8)
    ax.set_xticks(positions, [f"{value:g}" for value in counts["rating"].to_list()])
    ax.set_xlabel("rating")
    ax.set_ylabel("number of ratings")
    ax.set_title("Rating distribution")
    return figure


def long_tail_plot(ratings: pl.DataFrame) -> Figure:
    """Ratings per user and per item, each sorted descending against rank, log-scaled y."""
    figure = _new_figure(11.0, 4.5)
    for ax, key, noun in zip(
        figure.subplots(1, 2), ("user_id", "item_id"), ("user", "item"), strict=True
    ):
        counts = ratings.group_by(key).len().sort("len", descending=True)["len"].to_numpy()
        ax.plot(np.arange(1, counts.size + 1), counts, color="tab:blue")
        ax.set_yscale("log")
        ax.set_xlabel(f"{noun} rank")
        ax.set_ylabel("number of ratings")
        ax.set_title(f"Ratings per {noun}")
    figure.suptitle("Long tail of activity and popularity")
    return figure


def genre_popularity_plot(
    ratings: pl.DataFrame, item_genres: pl.DataFrame, genres: pl.DataFrame
) -> Figure:
    """Number of ratings per genre (most popular on top), annotated with the mean rating."""
    per_genre = (
        ratings.select(pl.col("item_id").cast(pl.Int64), pl.col("rating").cast(pl.Float64))
        .join(item_genres.select(pl.col("item_id", "genre_id").cast(pl.Int64)), on="item_id")
        .join(genres.select(pl.col("genre_id").cast(pl.Int64), "name"), on="genre_id")
        .group_by("name")
        .agg(pl.len().alias("count"), pl.col("rating").mean().alias("mean"))
        .sort(["count", "name"], descending=[True, False])
    )
    figure = _new_figure(8.0, 1.0 + 0.35 * max(per_genre.height, 4))
    ax = figure.add_subplot()
    positions = range(per_genre.height)
    bars = ax.barh(positions, per_genre["count"].to_list(), color="tab:purple")
    labels = [
        f"{count:,} (mean {mean:.2f})" for count, mean in per_genre.select("count", "mean").rows()
    ]
    ax.bar_label(bars, labels=labels, padding=3, fontsize=8)
    ax.set_yticks(positions, per_genre["name"].to_list())
    ax.invert_yaxis()
    ax.margins(x=0.25)
    ax.set_xlabel("number of ratings")
    ax.set_ylabel("genre")
    ax.set_title("Genre popularity (mean rating annotated)")
    return figure


def item_mean_vs_count_plot(ratings: pl.DataFrame) -> Figure:
    """One point per item: its number of ratings (log x) against its mean rating."""
    per_item = ratings.group_by("item_id").agg(
        pl.len().alias("count"), pl.col("rating").cast(pl.Float64).mean().alias("mean")
    )
    return _scatter(per_item, "ratings of the item (log scale)", "mean rating of the item",
                    "Items: popularity against mean rating", "tab:purple")  # fmt: skip


def user_activity_vs_mean_plot(ratings: pl.DataFrame) -> Figure:
    """One point per user: the number of ratings they gave (log x) against their mean."""
    per_user = ratings.group_by("user_id").agg(
        pl.len().alias("count"), pl.col("rating").cast(pl.Float64).mean().alias("mean")
    )
    return _scatter(per_user, "ratings the user gave (log scale)", "mean rating the user gave",
                    "Users: activity against mean rating", "tab:green")  # fmt: skip


def _scatter(frame: pl.DataFrame, xlabel: str, ylabel: str, title: str, colour: str) -> Figure:
    figure = _new_figure()
    ax = figure.add_subplot()
    ax.scatter(frame["count"].to_numpy(), frame["mean"].to_numpy(), s=8, alpha=0.4, color=colour)
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(f"{title} ({frame.height:,} points)")
    return figure


def age_group_labels(ages: pl.Expr) -> pl.Expr:
    """The MovieLens 1M age group of each age."""
    bounds = [lower for lower, _ in AGE_GROUPS[1:]]
    return ages.cut([b - 0.5 for b in bounds], labels=[label for _, label in AGE_GROUPS])


def ratings_by_demographics_plot(ratings: pl.DataFrame, users: pl.DataFrame) -> Figure:
    """Mean rating (bars, number of ratings annotated) by the rater's age group, gender and
    occupation."""
    joined = (
        ratings.select(pl.col("user_id").cast(pl.Int64), pl.col("rating").cast(pl.Float64))
        .join(
            users.select(pl.col("user_id").cast(pl.Int64), "age", "gender", "occupation"),
            on="user_id",
        )
        .with_columns(age_group_labels(pl.col("age").cast(pl.Float64)).alias("age group"))
    )
    figure = _new_figure(15.0, 6.5)
    grid = figure.add_gridspec(1, 3, width_ratios=[1, 0.6, 1.6])
    for position, column in enumerate(("age group", "gender", "occupation")):
        ax = figure.add_subplot(grid[0, position])
        groups = (
            joined.filter(pl.col(column).is_not_null())
            .group_by(column)
            .agg(pl.len().alias("count"), pl.col("rating").mean().alias("mean"))
        )
        if column == "age group":
            order = [label for _, label in AGE_GROUPS]
            groups = (
                groups.with_columns(pl.col(column).cast(pl.String))
                .filter(pl.col(column).is_in(order))
                .sort(pl.col(column).replace_strict(order, list(range(len(order)))))
            )
        else:
            groups = groups.sort("mean")
        positions = range(groups.height)
        bars = ax.barh(positions, groups["mean"].to_list(), color="tab:blue")
        ax.bar_label(bars, labels=[f"{m:.2f} (n={n:,})" for m, n in
                                   groups.select("mean", "count").rows()],
                     padding=3, fontsize=7)  # fmt: skip
        ax.set_yticks(positions, [str(v) for v in groups[column].to_list()])
        ax.set_xlim(1, 5.9)
        ax.set_xlabel("mean rating")
        ax.set_ylabel(column)
        ax.set_title(f"by {column}")
    figure.suptitle("Ratings by the rater's age group, gender and occupation")
    return figure


def save_figure(figure: Figure, path: Path) -> Path:
    """Write ``figure`` as PNG (dpi 110, tight bounding box), creating parent folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", dpi=110, bbox_inches="tight")
    return path


def markdown_table(frame: pl.DataFrame, digits: int = 4) -> list[str]:
    """``frame`` as Markdown table lines; floats rounded to ``digits``, nulls blank."""

    def cell(value: Any) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return ""
        return f"{value:.{digits}f}" if isinstance(value, float) else str(value)

    header = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * frame.width]
    return header + ["| " + " | ".join(map(cell, row)) + " |" for row in frame.iter_rows()]
