"""The report: the latest sweep and champion from MLflow, dataset statistics from the
warehouse, written as a local folder of plots and ``report.md``, and sent to ThingsBoard."""

from __future__ import annotations

import json
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl
from prefect import task
from prefect.logging import get_run_logger
from pydantic import BaseModel, ConfigDict

from recommender import PAPER_RMSE
from tasks import plots
from tasks.caching import REPORTED, STORE_READ, while_unchanged
from tasks.config import Settings, load_settings
from tasks.plots import METRIC_LABELS, markdown_table
from tasks.report.thingsboard import (
    DeliveryReport,
    OutboxState,
    ThingsBoardDevice,
    ThingsBoardUnavailable,
    deliver_pending,
    enqueue_all,
    outbox_state,
    provision,
    telemetry_messages,
    telemetry_values,
)
from tasks.train.sweep import COLD_START_NAMES, cluster_tradeoff
from tasks.train.tracking import (
    CHAMPION,
    EXPERIMENT,
    REGISTERED_MODEL,
    alias_for,
    champion_model_version,
    configure_mlflow,
    experiment_url,
    store_stamp,
)
from tasks.train.units import (
    LOWER_IS_BETTER,
    METRICS,
    MODEL_NAMES,
    PAPER_REPORTED,
    display_name,
    model_metrics,
)
from tasks.warehouse.connection import database_url
from tasks.warehouse.loads import current_load
from tasks.warehouse.queries import export_frame, table_counts
from tasks.warehouse.schema import migrate

if TYPE_CHECKING:
    from mlflow import MlflowClient

DASHBOARD = Path(__file__).resolve().parents[2] / "deployments" / "thingsboard" / "dashboard.json"
# model kinds of the sweep -> the model family in telemetry keys (``rmse_knn_tuned``)
FAMILIES: dict[str, str] = {
    "kmeans_knn": "knn_tuned",
    "paper": "knn_paper",
    "forest": "random_forest",
    "bias": "baseline",
    "global_mean": "global_mean",
    "popularity": "popularity",
    "implicit_knn": "knn_implicit",
}
SWEEP_COLUMNS = ("model", "n_clusters", "n_neighbors", *METRICS, "fit_seconds")
# Every figure of the report, defined in a line (the plain names, as in every table).
METRIC_DEFINITIONS = {
    "rmse": "RMSE: root mean squared error of the predicted against the actual test ratings "
    "(stars; lower is better).",
    "mae": "MAE: mean absolute error of the predicted test ratings (stars; lower is better).",
    "precision_at_10": "P@10: the share of a user's top 10 recommendations that are relevant "
    "(a test rating of 4 or more), averaged over users with a relevant test item.",
    "recall_at_10": "R@10: the share of a user's relevant test items found in their top 10, "
    "averaged over those users.",
    "ndcg_at_10": "NDCG@10: the top 10's discounted gain of relevant items (1/log2(rank+1)) "
    "divided by the best possible; 1 puts every relevant item first.",
    "map_at_10": "MAP@10: mean over users of the average precision at each relevant item's "
    "rank within the top 10.",
    "coverage": "coverage: the share of the catalogue that appears in some user's top 10.",
    "fit_seconds": "fit_seconds: seconds to fit the model on one fold's training ratings "
    "(mean over folds).",
    "k": "k (cold start): how many ratings a new user gave, their first by time, when folded "
    "in without a refit.",
}
# What each figure shows, under it in report.md.
PLOT_CAPTIONS = {
    "rating_distribution": "How many ratings of each star value.",
    "long_tail": "Ratings per user and per item, most active first: a few carry most ratings.",
    "genre_popularity": "Ratings per genre, with the genre's mean rating.",
    "item_mean_vs_count": "Each item's mean rating against how often it was rated: rarely "
    "rated items scatter widely, popular ones sit above the average.",
    "user_activity_vs_mean": "Each user's mean rating against how many ratings they gave.",
    "ratings_by_demographics": "Mean rating (and number of ratings) by the rater's age "
    "group, gender and occupation.",
    "heatmap_rmse": "RMSE of the tuned model over cluster and neighbour counts.",
    "heatmap_ndcg_at_10": "NDCG@10 of the tuned model over cluster and neighbour counts.",
    "cluster_tradeoff": "What clusters cost and buy: fit seconds against RMSE per cluster "
    "count, from the sweep's own timings.",
    "elbow": "K-Means of users on their rating rows: inertia and silhouette per cluster count.",
    "cluster_sizes": "Users per cluster for each cluster count of that K-Means.",
    "model_comparison": "Metrics summary: RMSE, MAE, P@10, R@10 and NDCG@10 of each model's "
    "best configuration.",
    "forest_importances": "The Random Forest's largest feature importances.",
    "cold_start": "New users: NDCG@10 against the number of ratings they gave, per method.",
}


class ReportError(RuntimeError):
    """What the report needs is missing (no sweep, no champion, no dataset)."""


class SweepSummary(BaseModel):
    """One finished sweep (an MLflow parent run) and its table of mean metrics."""

    model_config = ConfigDict(frozen=True)

    run_id: str
    dataset: str
    dataset_version: str
    selection_metric: str
    ended_ms: int
    table_csv: str
    experiment_url: str = ""

    def table(self) -> pl.DataFrame:
        return pl.read_csv(self.table_csv.encode())

    @property
    def folder_name(self) -> str:
        ended = datetime.fromtimestamp(self.ended_ms / 1000, tz=UTC)
        return f"{ended:%Y%m%dT%H%M%SZ}-{self.run_id[:8]}"


class ChampionSummary(BaseModel):
    model_config = ConfigDict(frozen=True)

    version: str
    run_id: str
    params: dict[str, str]
    metrics: dict[str, float]
    dataset_version: str | None


class ReportRecord(BaseModel):
    """What the report wrote, and the telemetry it stands for."""

    model_config = ConfigDict(frozen=True)

    folder: str
    files: list[str]
    markdown: str
    sweep_run_id: str
    ts_ms: int
    champion_version: str | None
    values: dict[str, float | int]
    attributes: dict[str, str]


# --- reading MLflow and the warehouse ----------------------------------------------------------
def latest_sweep(client: MlflowClient, dataset: str, run_id: str | None = None) -> SweepSummary:
    """The given sweep run, or the dataset's most recently finished one."""
    if run_id is None:
        experiment = client.get_experiment_by_name(EXPERIMENT)
        runs = (
            client.search_runs(
                [experiment.experiment_id],
                filter_string=(
                    f"tags.run_kind = 'sweep' and tags.dataset = '{dataset}'"
                    " and attributes.status = 'FINISHED'"
                ),
                order_by=["attributes.end_time DESC"],
                max_results=1,
            )
            if experiment is not None
            else []
        )
        if not runs:
            raise ReportError(
                f"no finished sweep of {dataset} in MLflow experiment {EXPERIMENT!r}"
                f" ({client.tracking_uri}): train first (recsys train, or recsys run for the whole"
                " pipeline)"
            )
        run_id = str(runs[0].info.run_id)
    run = client.get_run(run_id)
    with tempfile.TemporaryDirectory() as folder:
        table_csv = Path(client.download_artifacts(run_id, "sweep.csv", folder)).read_text()
    return SweepSummary(
        run_id=run_id,
        dataset=run.data.tags.get("dataset", dataset),
        dataset_version=run.data.tags["dataset_version"],
        selection_metric=json.loads(run.data.params.get("selection_metric", '"rmse"')),
        ended_ms=int(run.info.end_time or run.info.start_time),
        table_csv=table_csv,
        experiment_url=experiment_url(client.tracking_uri, str(run.info.experiment_id)),
    )


def champion_summary(client: MlflowClient, dataset: str) -> ChampionSummary | None:
    """The dataset's champion: its version, parameters and cross-validated metrics."""
    version = champion_model_version(client, dataset)
    if version is None:
        return None
    run = client.get_run(str(version.run_id))
    return ChampionSummary(
        version=str(version.version),
        run_id=str(version.run_id),
        params=dict(run.data.params),
        metrics={k: float(v) for k, v in run.data.metrics.items()},
        dataset_version=version.tags.get("dataset_version"),
    )


def dataset_frames(url: str, dataset: str) -> dict[str, pl.DataFrame]:
    """The ratings (user, item, stars), item genres, genre names and users (age, gender,
    occupation) of ``dataset``."""
    queries = {
        "ratings": "SELECT user_id, item_id, rating FROM movielens.ratings WHERE dataset = %s",
        "item_genres": "SELECT item_id, genre_id FROM movielens.item_genres WHERE dataset = %s",
        "genres": "SELECT genre_id, name FROM movielens.genres WHERE dataset = %s",
        "users": "SELECT user_id, age, gender, occupation FROM movielens.users WHERE dataset = %s",
    }
    return {name: export_frame(url, query, (dataset,)) for name, query in queries.items()}


def rating_counts(ratings: pl.DataFrame) -> dict[float, int]:
    counts = ratings.group_by("rating").len().sort("rating")
    return {float(star): int(n) for star, n in counts.iter_rows()}


# --- writing -----------------------------------------------------------------------------------
def report_markdown(
    sweep: SweepSummary,
    champion: ChampionSummary | None,
    counts: dict[str, int],
    stars: dict[float, int],
    images: list[str],
    by_model: dict[str, dict[str, float | None]],
    cold_start: pl.DataFrame | None = None,
    top: int = 10,
) -> str:
    """The report: what the sweep found in words, the metrics defined, then the tables
    (dataset, models by ``model_metrics``, best configurations, cold start, champion) and the
    plots with a caption each. Models go by one display name everywhere."""
    table = sweep.table()
    metric = sweep.selection_metric
    models = pl.DataFrame(
        [{"model": display_name(kind), **metrics} for kind, metrics in by_model.items()]
        + [{"model": PAPER_REPORTED, "rmse": PAPER_RMSE}],
        infer_schema_length=None,
    ).sort(metric, descending=metric not in LOWER_IS_BETTER, nulls_last=True)
    best = named_models(
        table.filter(pl.col(metric).is_not_null()).sort(
            metric, descending=metric not in LOWER_IS_BETTER
        )
    )
    shown = [c for c in SWEEP_COLUMNS if c in best.columns]
    ended = datetime.fromtimestamp(sweep.ended_ms / 1000, tz=UTC)
    lines = [
        f"# movielens-recommender: {sweep.dataset} report",
        "",
        f"Sweep MLflow run `{sweep.run_id}`, finished {ended:%Y-%m-%d %H:%M} UTC, "
        f"dataset version `{sweep.dataset_version}`, selection metric `{metric}`.",
        *([f"Its runs in the MLflow UI: {sweep.experiment_url}"] if sweep.experiment_url else []),
        "",
        "## What the sweep found",
        "",
        *(f"- {finding}" for finding in findings(table, by_model, metric, cold_start)),
        "",
        "## Metrics",
        "",
        *(f"- {definition}" for definition in METRIC_DEFINITIONS.values()),
        "",
        "## Dataset",
        "",
        *markdown_table(pl.DataFrame({"table": list(counts), "rows": list(counts.values())})),
        "",
        *markdown_table(
            pl.DataFrame({"stars": [f"{s:g}" for s in stars], "ratings": list(stars.values())})
        ),
        "",
        f"## Models: the best configuration of each by {metric}",
        "",
        *markdown_table(labelled(models)),
        "",
        *model_notes(by_model),
        f"## Sweep: the {top} best configurations",
        "",
        *markdown_table(labelled(best.select(shown).head(top))),
        "",
    ]
    if cold_start is not None and not cold_start.is_empty():
        lines += cold_start_section(cold_start)
    lines += ["## Champion", ""]
    if champion is None:
        alias = alias_for(CHAMPION, sweep.dataset)
        lines.append(f"No version of `{REGISTERED_MODEL}` holds the alias `{alias}` yet.")
    else:
        lines += [
            f"`{REGISTERED_MODEL}` version {champion.version}: "
            f"{display_name(champion.params.get('kind', '?'))} "
            f"(dataset version `{champion.dataset_version}`, run `{champion.run_id}`).",
            "",
            *markdown_table(champion_table(champion)),
        ]
    if images:
        lines += ["", "## Plots", ""]
        order = list(PLOT_CAPTIONS)
        ranked = sorted(images, key=lambda i: (order.index(Path(i).stem)
                                                if Path(i).stem in order else len(order), i))  # fmt: skip
        for image in ranked:
            lines += [f"![{Path(image).stem}]({image})", "",
                      PLOT_CAPTIONS.get(Path(image).stem, ""), ""]  # fmt: skip
    return "\n".join(lines).rstrip() + "\n"


def champion_table(champion: ChampionSummary) -> pl.DataFrame:
    """The champion's settings (its kind as the model's display name) and metrics."""
    settings = {k: v for k, v in champion.params.items() if k != "kind"}
    return pl.DataFrame(
        {
            "name": ["model", *settings, *(METRIC_LABELS.get(m, m) for m in champion.metrics)],
            "value": [
                display_name(champion.params.get("kind", "?")), *settings.values(),
                *(f"{v:.4f}" for v in champion.metrics.values()),
            ],
        }
    )  # fmt: skip


def labelled(frame: pl.DataFrame) -> pl.DataFrame:
    """Metric columns under the labels the definitions use (``precision_at_10`` -> P@10)."""
    return frame.rename({c: METRIC_LABELS[c] for c in frame.columns if c in METRIC_LABELS})


def named_models(table: pl.DataFrame) -> pl.DataFrame:
    """The sweep table with its ``kind`` column as the models' display names (``model``)."""
    return table.with_columns(
        pl.col("kind").replace_strict(MODEL_NAMES, default=pl.col("kind")).alias("model")
    ).drop("kind")


def findings(
    table: pl.DataFrame,
    by_model: dict[str, dict[str, float | None]],
    metric: str,
    cold_start: pl.DataFrame | None,
) -> list[str]:
    """What the sweep found, a sentence or two per finding."""
    said = []
    rated = {k: float(v) for k, m in by_model.items() if (v := m.get(metric)) is not None}
    if rated:
        best = (min if metric in LOWER_IS_BETTER else max)(rated, key=rated.__getitem__)
        label = METRIC_LABELS.get(metric, metric)
        said.append(f"The best model by {label} is {display_name(best)} "
                    f"({label} {rated[best]:.4f}).")  # fmt: skip
    said += cluster_findings(table)
    if cold_start is not None and not cold_start.is_empty():
        said.append(cold_start_finding(cold_start))
    return said


def cluster_findings(table: pl.DataFrame) -> list[str]:
    """Clusters in words: what they cost in RMSE and buy in fit time, from the sweep's own
    figures (the tuned model, its best neighbour count per cluster count)."""
    if "kmeans_knn" not in table["kind"].to_list():
        return []
    tradeoff = cluster_tradeoff(table).filter(pl.col("rmse").is_not_null())
    if tradeoff.height < 2:
        return ["The sweep tried one cluster count only: it says nothing about clusters."]
    first, last = tradeoff.row(0, named=True), tradeoff.row(-1, named=True)
    best = tradeoff.sort("rmse").row(0, named=True)
    costs = last["rmse"] - first["rmse"]
    speed = first["fit_seconds"] / max(last["fit_seconds"], 1e-9)
    accuracy = "cost accuracy" if costs > 0 else "gain accuracy"
    pace = "buy speed" if speed > 1 else "buy no speed"
    return [
        f"Clusters {accuracy} on this data and {pace}: from k={first['n_clusters']} to "
        f"k={last['n_clusters']} clusters the tuned model's RMSE goes from "
        f"{first['rmse']:.4f} to {last['rmse']:.4f} ({costs:+.4f}) and a fit per fold from "
        f"{first['fit_seconds']:.2f} s to {last['fit_seconds']:.2f} s ({speed:.1f}x faster). "
        f"The best RMSE is at k={best['n_clusters']} ({best['rmse']:.4f}). (The sweep fits "
        f"k={first['n_clusters']} first on each fold, so its time also holds the components "
        "the other cluster counts reuse from the component cache.)",
    ]


def model_notes(by_model: dict[str, dict[str, float | None]]) -> list[str]:
    """Why a figure of the models table reads as it does."""
    notes = []
    if "paper" in by_model:
        notes.append(
            f"{MODEL_NAMES['paper']} ranks by its predicted rating, which the rating scale "
            "clips at 5: many unseen items tie at 5.0, so its top 10 is an arbitrary draw "
            "among them and its P@10, R@10 and NDCG@10 are near zero. Compare it by RMSE "
            f"and MAE only; {PAPER_REPORTED} is the RMSE the paper published."
        )
    if "popularity" in by_model:
        notes.append(f"{MODEL_NAMES['popularity']} predicts no ratings: it has no RMSE or MAE.")
    return [line for note in notes for line in (note, "")]


def cold_start_section(cold_start: pl.DataFrame) -> list[str]:
    order = list(COLD_START_NAMES)
    named = (
        cold_start.sort(
            pl.col("method").replace_strict(order, list(range(len(order))), default=len(order)), "k"
        )  # fmt: skip
        .with_columns(pl.col("method").replace_strict(COLD_START_NAMES, default=pl.col("method")))
        .pipe(labelled)
    )
    return [
        "## Cold start: new users folded in from their first k ratings",
        "",
        "Test users held out of the fit (a seeded fifth of each fold's), given to the model "
        "with their first k ratings by time; means over the folds the comparison ran on.",
        "",
        *markdown_table(named),
        "",
    ]


def cold_start_finding(cold_start: pl.DataFrame, tie: float = 5e-4) -> str:
    """Whether the K-Means fold-in beats popularity and the item-KNN fold-in at k <= 5 (a
    difference under ``tie`` is a tie), with the NDCG@10 figures."""
    verdicts: dict[str, list[str]] = {"beats both": [], "ties": [], "does not beat": []}
    for k in sorted(cold_start.filter(pl.col("k") <= 5)["k"].unique().to_list()):
        at_k = dict(cold_start.filter(pl.col("k") == k).select("method", "ndcg_at_10").rows())
        if "kmeans" not in at_k or len(at_k) < 2:
            continue
        value, rival = max((v, m) for m, v in at_k.items() if m != "kmeans")
        margin = at_k["kmeans"] - value
        verdict = "ties" if abs(margin) < tie else "beats both" if margin > 0 else "does not beat"
        verdicts[verdict].append(
            f"k={k}: {at_k['kmeans']:.4f} against {COLD_START_NAMES.get(rival, rival)}'s "
            f"{value:.4f}"
        )
    folds = str(cold_start["folds"].max()) if "folds" in cold_start.columns else "?"
    parts = [f"{verdict} the better of the others at " + "; ".join(figures)
             for verdict, figures in verdicts.items() if figures]  # fmt: skip
    parts[0] = parts[0].replace("beats both the better of the others", "beats both")
    return (
        f"Cold start (NDCG@10 on {folds} fold(s), thin margins: read them as indications): the "
        f"K-Means fold-in {'; it '.join(parts)}."
    )


def eda_figures(frames: dict[str, pl.DataFrame]) -> dict[str, Any]:
    ratings = frames["ratings"]
    figures = {
        "rating_distribution": plots.rating_distribution_plot(ratings),
        "long_tail": plots.long_tail_plot(ratings),
        "genre_popularity": plots.genre_popularity_plot(
            ratings, frames["item_genres"], frames["genres"]
        ),
        "item_mean_vs_count": plots.item_mean_vs_count_plot(ratings),
        "user_activity_vs_mean": plots.user_activity_vs_mean_plot(ratings),
    }
    if "users" in frames and not frames["users"].is_empty():
        figures["ratings_by_demographics"] = plots.ratings_by_demographics_plot(
            ratings, frames["users"]
        )
    return figures


def sweep_cold_start(client: MlflowClient, run_id: str) -> pl.DataFrame | None:
    """The sweep's cold-start table (``cold_start.csv``), if it ran one."""
    if not any(a.path == "cold_start.csv" for a in client.list_artifacts(run_id)):
        return None
    with tempfile.TemporaryDirectory() as folder:
        return pl.read_csv(client.download_artifacts(run_id, "cold_start.csv", folder))


def copy_sweep_plots(client: MlflowClient, run_id: str, folder: Path) -> list[str]:
    """The sweep run's PNGs (heatmaps, elbow, clusters, comparison, importances) into
    ``folder``; returns their file names."""
    names = [a.path for a in client.list_artifacts(run_id, "plots") if a.path.endswith(".png")]
    with tempfile.TemporaryDirectory() as scratch:
        for name in names:
            local = Path(client.download_artifacts(run_id, name, scratch))
            (folder / Path(name).name).write_bytes(local.read_bytes())
    return sorted(Path(name).name for name in names)


def champion_attributes(sweep: SweepSummary, champion: ChampionSummary | None) -> dict[str, str]:
    attributes = {"dataset_version": sweep.dataset_version, "sweep_run_id": sweep.run_id}
    if champion is not None:
        attributes["champion_version"] = champion.version
        attributes["champion_params"] = ", ".join(
            f"{k}={v}" for k, v in sorted(champion.params.items())
        )
    return attributes


def write_report_folder(
    settings: Settings, client: MlflowClient, sweep: SweepSummary, champion: ChampionSummary | None
) -> ReportRecord:
    """``reports/<run>/``: EDA and sweep plots and ``report.md`` (the cached ``write-report``
    task calls this; a rerun that is not cached writes the folder anew)."""
    url = database_url(settings)  # migrated by find-sweep, which runs first
    frames = dataset_frames(url, sweep.dataset)
    if frames["ratings"].is_empty():
        raise ReportError(
            f"the warehouse holds no ratings of {sweep.dataset}: load them first (recsys transform)"
        )
    counts = {
        table.split(".")[-1]: n
        for table, n in table_counts(url, sweep.dataset).items()
        if table != "movielens.folds"
    }
    stars = rating_counts(frames["ratings"])
    folder = settings.resolved_reports_dir / sweep.folder_name
    folder.mkdir(parents=True, exist_ok=True)
    images = [
        plots.save_figure(figure, folder / f"{name}.png").name
        for name, figure in eda_figures(frames).items()
    ] + copy_sweep_plots(client, sweep.run_id, folder)
    by_model = model_metrics(sweep.table(), sweep.selection_metric)
    by_family = {FAMILIES.get(kind, kind): m for kind, m in by_model.items()}
    cold_start = sweep_cold_start(client, sweep.run_id)
    markdown = report_markdown(sweep, champion, counts, stars, images, by_model, cold_start)
    (folder / "report.md").write_text(markdown)
    (folder / "sweep.csv").write_text(sweep.table_csv)
    dataset_counts: dict[str, int] = {
        k: counts[k] for k in ("users", "items", "ratings") if k in counts
    }
    return ReportRecord(
        folder=str(folder),
        files=sorted(p.name for p in folder.iterdir()),
        markdown=markdown,
        sweep_run_id=sweep.run_id,
        ts_ms=sweep.ended_ms,
        champion_version=champion.version if champion else None,
        values=telemetry_values(by_family, stars, dataset_counts),
        attributes=champion_attributes(sweep, champion),
    )


def outbox_section(state: OutboxState, configured: bool, max_attempts: int) -> list[str]:
    """The report's last section: what the ThingsBoard outbox holds after this run's delivery,
    with the latest messages ThingsBoard refused until they were given up, and why."""
    lines = ["## ThingsBoard outbox", ""]
    if not configured:
        lines.append("ThingsBoard is not configured (THINGSBOARD_URL and a device token or tenant"
                     " login): this run's telemetry was not queued.")  # fmt: skip
    waiting = f"{state.pending} message(s) waiting for ThingsBoard" if state.pending else ""
    if configured and not state.pending and not state.given_up:
        lines.append("Every message was delivered.")
    elif waiting:
        lines.append(f"{waiting}; the next run or the API's next flush sends them.")
    if state.given_up:
        lines += [
            "",
            f"{state.given_up} message(s) given up after ThingsBoard refused them {max_attempts}"
            " times (RECSYS_OUTBOX_MAX_ATTEMPTS): nothing resends them. The latest:",
            "",
            *markdown_table(
                pl.DataFrame(
                    {
                        "outbox id": [m.outbox_id for m in state.refused],
                        "kind": [m.kind for m in state.refused],
                        "attempts": [m.attempts for m in state.refused],
                        "given up (UTC)": [
                            f"{m.failed_at.astimezone(UTC):%Y-%m-%d %H:%M:%S}"
                            for m in state.refused
                        ],
                        "reason": [
                            (m.reason.splitlines() or [""])[0].replace("|", "\\|")
                            for m in state.refused
                        ],
                    }
                )
            ),
        ]
    return lines


def thingsboard_device(settings: Settings) -> ThingsBoardDevice:
    """The configured device; with a tenant login instead of a token, provision it first."""
    assert settings.thingsboard_url is not None
    if settings.thingsboard_device_token is not None:
        return ThingsBoardDevice(settings.thingsboard_url, settings.thingsboard_device_token)
    assert settings.thingsboard_username and settings.thingsboard_password is not None
    provisioned = provision(
        settings.thingsboard_url,
        settings.thingsboard_username,
        settings.thingsboard_password,
        settings.thingsboard_device,
        DASHBOARD,
    )
    return ThingsBoardDevice(settings.thingsboard_url, provisioned.device_token)


# --- the Prefect tasks -------------------------------------------------------------------------
class ReportSource(BaseModel):
    """What a report shows: the sweep, the champion, the warehouse's loaded version of the
    dataset (its EDA) and where the report goes; the report's cache key."""

    model_config = ConfigDict(frozen=True)

    sweep: SweepSummary
    champion: ChampionSummary | None
    loaded_version: str | None
    reports_dir: str


@task(name="find-sweep")
def find_sweep(sweep_run_id: str | None = None) -> ReportSource:
    """The sweep (given, or the latest of the dataset), the champion and the loaded data."""
    settings = load_settings()
    sweep, champion = while_unchanged(
        read_sweep, store_stamp(settings), sweep_run_id, settings.dataset
    )
    url = database_url(settings)
    migrate(url)  # a warehouse never loaded (or reset) reads as holding nothing, not as an error
    loaded = current_load(url, sweep.dataset)
    return ReportSource(
        sweep=sweep, champion=champion, loaded_version=loaded[0] if loaded else None,
        reports_dir=str(settings.resolved_reports_dir),
    )  # fmt: skip


@task(name="read-sweep", cache_policy=STORE_READ, persist_result=True)
def read_sweep(
    sweep_run_id: str | None, dataset: str, stamp: str | None
) -> tuple[SweepSummary, ChampionSummary | None]:
    """From MLflow: the sweep (given, or the latest of ``dataset``) and its dataset's champion
    (``stamp``: the store's state, see ``while_unchanged``)."""
    client = configure_mlflow(load_settings())
    sweep = latest_sweep(client, dataset, sweep_run_id)
    return sweep, champion_summary(client, sweep.dataset)


# A rerun on the same sweep, champion and data with the same code returns the report already
# written (the EDA figures alone take 2 s), unless its folder lost a file (report_written).
@task(name="write-report", cache_policy=REPORTED, persist_result=True)
def write_report(source: ReportSource) -> ReportRecord:
    """The report folder of ``source``: plots, report.md (without the outbox section)."""
    settings = load_settings()
    client = configure_mlflow(settings)
    record = write_report_folder(settings, client, source.sweep, source.champion)
    get_run_logger().info("Report of sweep %s written to %s", source.sweep.run_id, record.folder)
    return record


def report_written(record: ReportRecord) -> bool:
    """Does the report's folder still hold every file it was written with?"""
    folder = Path(record.folder)
    return all((folder / name).is_file() for name in record.files)


@task(name="post-telemetry")
def post_telemetry(record: ReportRecord) -> DeliveryReport | None:
    """Queue the run's telemetry in the outbox and deliver everything pending; None when
    ThingsBoard is not configured (said once) or cannot be reached (kept for the next run)."""
    logger = get_run_logger()
    settings = load_settings()
    if not settings.thingsboard_configured:
        logger.info(
            "ThingsBoard is not configured (THINGSBOARD_URL and a device token or tenant login):"
            " the report was written locally only"
        )
        return None
    url = database_url(settings)
    # queued before anything talks to ThingsBoard: a login that fails loses nothing either
    enqueue_all(url, telemetry_messages(record.ts_ms, record.values, record.attributes),
                key=record.sweep_run_id)  # fmt: skip
    try:
        delivery = deliver_pending(url, thingsboard_device(settings))
    except ThingsBoardUnavailable as error:
        logger.warning("ThingsBoard unavailable (%s): the outbox keeps this run's telemetry", error)
        return None
    if delivery.pending:
        logger.warning(
            "ThingsBoard: %d message(s) kept in ops.telemetry_outbox, sent on the next run",
            delivery.pending,
        )
    else:
        logger.info("ThingsBoard: %d message(s) delivered", delivery.sent)
    return delivery


@task(name="note-outbox")
def note_outbox(record: ReportRecord) -> ReportRecord:
    """End ``report.md`` with the outbox's state after this run's delivery (``outbox_section``)."""
    settings = load_settings()
    url = database_url(settings)
    section = outbox_section(
        outbox_state(url), settings.thingsboard_configured, settings.outbox_max_attempts
    )
    markdown = record.markdown + "\n" + "\n".join(section) + "\n"
    (Path(record.folder) / "report.md").write_text(markdown)
    return record.model_copy(update={"markdown": markdown})
