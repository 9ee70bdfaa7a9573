"""The report: the latest sweep and champion from MLflow, dataset statistics from the
warehouse, written as a local folder of plots and ``report.md``, and sent to ThingsBoard."""

from __future__ import annotations

import json
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
from mlflow import MlflowClient
from prefect import task
from prefect.logging import get_run_logger
from pydantic import BaseModel, ConfigDict

from recommender import PAPER_RMSE
from tasks import plots
from tasks.config import Settings, load_settings
from tasks.plots import markdown_table
from tasks.report.thingsboard import (
    DeliveryReport,
    ThingsBoardDevice,
    ThingsBoardUnavailable,
    deliver_pending,
    enqueue_all,
    provision,
    telemetry_messages,
    telemetry_values,
)
from tasks.train.tracking import (
    CHAMPION,
    EXPERIMENT,
    REGISTERED_MODEL,
    alias_for,
    champion_model_version,
    configure_mlflow,
)
from tasks.train.units import LOWER_IS_BETTER, METRICS
from tasks.warehouse.connection import database_url
from tasks.warehouse.queries import export_frame, table_counts
from tasks.warehouse.schema import migrate

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
SWEEP_COLUMNS = ("kind", "n_clusters", "n_neighbors", *METRICS, "fit_seconds")


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
                f" ({client.tracking_uri}): run flows/train.py first"
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


def family_metrics(sweep: pl.DataFrame, metric: str) -> dict[str, dict[str, float | None]]:
    """Per model family, the metrics of its best configuration by ``metric`` (by NDCG@10 for
    a ranking-only family such as popularity, which predicts no ratings)."""
    families: dict[str, dict[str, float | None]] = {}
    for (kind,), rows in sweep.group_by("kind", maintain_order=True):
        by = metric if rows[metric].is_not_null().any() else "ndcg_at_10"
        ranked = rows.filter(pl.col(by).is_not_null())
        if ranked.is_empty():
            continue
        best = ranked.sort(by, descending=by not in LOWER_IS_BETTER).row(0, named=True)
        families[FAMILIES.get(str(kind), str(kind))] = {m: best.get(m) for m in METRICS}
    return families


def dataset_frames(url: str, dataset: str) -> dict[str, pl.DataFrame]:
    """The ratings (user, item, stars), item genres and genre names of ``dataset``."""
    queries = {
        "ratings": "SELECT user_id, item_id, rating FROM movielens.ratings WHERE dataset = %s",
        "item_genres": "SELECT item_id, genre_id FROM movielens.item_genres WHERE dataset = %s",
        "genres": "SELECT genre_id, name FROM movielens.genres WHERE dataset = %s",
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
    by_family: dict[str, dict[str, float | None]],
    top: int = 10,
) -> str:
    """The report's tables: dataset, models by family (``family_metrics``), best
    configurations, champion."""
    table = sweep.table()
    metric = sweep.selection_metric
    families = pl.DataFrame(
        [{"model": family, **metrics} for family, metrics in by_family.items()]
        + [{"model": "paper (reported)", "rmse": PAPER_RMSE}],
        infer_schema_length=None,
    )
    best = table.filter(pl.col(metric).is_not_null()).sort(
        metric, descending=metric not in LOWER_IS_BETTER
    )
    shown = [c for c in SWEEP_COLUMNS if c in best.columns]
    ended = datetime.fromtimestamp(sweep.ended_ms / 1000, tz=UTC)
    lines = [
        f"# movielens-recommender: {sweep.dataset} report",
        "",
        f"Sweep MLflow run `{sweep.run_id}`, finished {ended:%Y-%m-%d %H:%M} UTC, "
        f"dataset version `{sweep.dataset_version}`, selection metric `{metric}`.",
        "",
        "## Dataset",
        "",
        *markdown_table(pl.DataFrame({"table": list(counts), "rows": list(counts.values())})),
        "",
        *markdown_table(
            pl.DataFrame({"stars": [f"{s:g}" for s in stars], "ratings": list(stars.values())})
        ),
        "",
        f"## Models: the best configuration of each family by {metric}",
        "",
        *markdown_table(families),
        "",
        f"## Sweep: the {top} best configurations",
        "",
        *markdown_table(best.select(shown).head(top)),
        "",
        "## Champion",
        "",
    ]
    if champion is None:
        alias = alias_for(CHAMPION, sweep.dataset)
        lines.append(f"No version of `{REGISTERED_MODEL}` holds the alias `{alias}` yet.")
    else:
        lines += [
            f"`{REGISTERED_MODEL}` version {champion.version} "
            f"(dataset version `{champion.dataset_version}`, run `{champion.run_id}`).",
            "",
            *markdown_table(
                pl.DataFrame(
                    {
                        "name": [*champion.params, *champion.metrics],
                        "value": [
                            *champion.params.values(),
                            *(f"{v:.4f}" for v in champion.metrics.values()),
                        ],
                    }
                )
            ),
        ]
    if images:
        lines += ["", "## Plots", ""] + [f"![{Path(i).stem}]({i})" for i in images]
    return "\n".join(lines) + "\n"


def eda_figures(frames: dict[str, pl.DataFrame]) -> dict[str, Any]:
    ratings = frames["ratings"]
    return {
        "rating_distribution": plots.rating_distribution_plot(ratings),
        "long_tail": plots.long_tail_plot(ratings),
        "genre_popularity": plots.genre_popularity_plot(
            ratings, frames["item_genres"], frames["genres"]
        ),
    }


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
    settings: Settings, client: MlflowClient, sweep: SweepSummary
) -> ReportRecord:
    """``reports/<run>/``: EDA and sweep plots and ``report.md``; rewritten on a rerun."""
    url = database_url(settings)
    migrate(url)
    frames = dataset_frames(url, sweep.dataset)
    if frames["ratings"].is_empty():
        raise ReportError(f"the warehouse holds no ratings of {sweep.dataset}: run the transform")
    counts = {
        table.split(".")[-1]: n
        for table, n in table_counts(url, sweep.dataset).items()
        if table != "movielens.folds"
    }
    stars = rating_counts(frames["ratings"])
    champion = champion_summary(client, sweep.dataset)
    folder = settings.resolved_reports_dir / sweep.folder_name
    folder.mkdir(parents=True, exist_ok=True)
    images = [
        plots.save_figure(figure, folder / f"{name}.png").name
        for name, figure in eda_figures(frames).items()
    ] + copy_sweep_plots(client, sweep.run_id, folder)
    by_family = family_metrics(sweep.table(), sweep.selection_metric)
    markdown = report_markdown(sweep, champion, counts, stars, images, by_family)
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
@task(name="write-report")
def write_report(sweep_run_id: str | None = None) -> ReportRecord:
    """Find the sweep (given, or the latest of the dataset) and write its report folder."""
    settings = load_settings()
    client = configure_mlflow(settings)
    sweep = latest_sweep(client, settings.dataset, sweep_run_id)
    record = write_report_folder(settings, client, sweep)
    get_run_logger().info("Report of sweep %s written to %s", sweep.run_id, record.folder)
    return record


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
