"""Report: the latest sweep and champion as plots, report.md and a Prefect artifact, and the
run's metrics as ThingsBoard telemetry (through the outbox, when ThingsBoard is configured)."""

from __future__ import annotations

import tasks.process_env  # noqa: F401  (first: the environment, before Prefect and MLflow)

# isort: split

import sys

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from tasks.caching import unless_gone
from tasks.report.summary import (
    ReportRecord,
    find_sweep,
    note_outbox,
    post_telemetry,
    report_written,
    write_report,
)


@flow(name="report", log_prints=True)
def report(sweep_run_id: str | None = None) -> ReportRecord:
    """Report the given sweep (an MLflow run id), or the dataset's latest finished one."""
    # a rerun of the same sweep, champion and data is cached, unless its folder lost a file
    written = unless_gone(write_report, report_written, find_sweep(sweep_run_id))
    post_telemetry(written)
    record = note_outbox(written)  # the outbox after this run's delivery ends report.md
    create_markdown_artifact(record.markdown, key="report",
                             description=f"Report of sweep {record.sweep_run_id}")  # fmt: skip
    return record


if __name__ == "__main__":
    from cli.main import flow_script  # the same options and messages as `recsys report`

    sys.exit(flow_script("report"))
