"""The README's main command on a fresh home: ``python flows/pipeline.py`` on the embedded
defaults (embedded PostgreSQL, SQLite MLflow, local lake, Prefect's ephemeral API) with no
environment beyond ``RECSYS_HOME`` and the data source."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from flows.pipeline import PipelineResult, where_to_look
from tasks.config import load_settings
from tasks.report.summary import ReportRecord
from tasks.train.sweep import ChampionRecord
from tests.conftest import loopback_http, server_url
from tests.pipeline_home import PipelineRun


@pytest.mark.realdata
def test_pipeline_main_runs_every_stage_on_the_embedded_defaults(pipeline_run: PipelineRun) -> None:
    done, home = pipeline_run.done, pipeline_run.home  # tests/pipeline_home.py: the one run

    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()[-6:]
    assert lines[0].startswith("Report: ") and lines[0].endswith("report.md (plots beside it)")
    assert lines[1].startswith("Champion: movielens-recommender version 1")
    report_md = Path(lines[0].removeprefix("Report: ").split(" ")[0])
    assert report_md.is_file() and report_md.is_relative_to(home / "reports")
    text = report_md.read_text()
    assert "| ratings | 100000 |" in text and "| users | 943 |" in text
    assert "| items | 1682 |" in text and "| K-Means KNN (tuned) |" in text
    for name in ("rating_distribution", "long_tail", "genre_popularity", "heatmap_rmse"):
        assert (report_md.parent / f"{name}.png").is_file()
    for part in ("lake", "postgres", "mlflow", "prefect"):
        assert (home / part).is_dir()
    sweep = pl.read_csv(report_md.parent / "sweep.csv")
    # the default grid: 6 cluster counts x 4 neighbour counts of the hybrid, and every model
    assert sweep.filter(pl.col("kind") == "kmeans_knn").height == 24
    assert set(sweep["kind"]) == {"kmeans_knn", "paper", "forest", "bias", "global_mean",
                                  "popularity"}  # fmt: skip
    assert (sweep["folds"] == 5).all()
    assert "ThingsBoard is not configured" in done.stderr + done.stdout


def test_where_to_look_names_the_servers_when_configured(
    recsys_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    champion = ChampionRecord(
        version="3", alias="challenger", champion_version="2", run_id="r", metric="rmse",
        value=0.9, lake_uri="file:///lake/models/v3", outcome="Registered v3 as challenger.",
    )  # fmt: skip
    reported = ReportRecord(
        folder="/reports/x", files=[], markdown="", sweep_run_id="s", ts_ms=0,
        champion_version="2", values={}, attributes={},
    )  # fmt: skip
    result = PipelineResult(champion=champion, report=reported)

    local = where_to_look(load_settings(), result)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    monkeypatch.setenv("PREFECT_API_URL", "http://prefect:4200/api")
    served = where_to_look(load_settings(), result)

    assert "Report: /reports/x/report.md" in local
    assert "version 2. Registered v3 as challenger." in local
    assert f"mlflow ui --backend-store-uri sqlite:///{recsys_env}" in local
    assert "recsys server start" in local and "recsys serve " in local
    assert "MLflow UI: http://mlflow:5000" in served
    assert "Prefect UI: http://prefect:4200" in served


def test_where_to_look_names_the_running_local_server(
    recsys_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run against the project's server (``recsys server start``) points at its UI, not at
    how to start one."""
    import http.server
    import json
    import os

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
            self.send_response(200 if self.path == "/api/health" else 404)
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    with loopback_http(Health) as server:
        url = server_url(server)
        settings = load_settings()
        settings.resolved_prefect_home.mkdir(parents=True, exist_ok=True)
        (settings.resolved_prefect_home / "server.json").write_text(
            json.dumps({"pid": os.getpid(), "url": url})
        )
        result = PipelineResult(
            champion=ChampionRecord(
                version=None,
                alias=None,
                champion_version="1",
                run_id=None,
                metric="rmse",
                value=0.9,
                lake_uri=None,
            ),  # fmt: skip
            report=ReportRecord(
                folder="/reports/x",
                files=[],
                markdown="",
                sweep_run_id="s",
                ts_ms=0,
                champion_version="1",
                values={},
                attributes={},
            ),  # fmt: skip
        )
        told = where_to_look(settings, result)

    assert f"Prefect UI: {url} (the project's server" in told
    assert "recsys server start (then" not in told
