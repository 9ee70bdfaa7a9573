"""Health: probe every configured part of the stack, print a table, fail when any part is down."""

from __future__ import annotations

import tasks.process_env  # noqa: F401  (first: the environment, before Prefect and MLflow)

# isort: split

import sys

from prefect import flow

from tasks.health import (
    PartHealth,
    UnhealthyStackError,
    check_configured_stack,
    failed_parts,
    health_table,
)


@flow(name="health", log_prints=True)
def health() -> list[PartHealth]:
    """Lake read/write, PostgreSQL, MLflow tracking and registry, the Prefect API and work pool,
    ThingsBoard: ok, failed or not configured, with latency and reason. Fails if any part failed.
    """
    results = check_configured_stack()
    print(f"Stack health:\n{health_table(results)}")
    down = failed_parts(results)
    if down:
        raise UnhealthyStackError(f"{len(down)} part(s) down: {', '.join(down)}")
    return results


if __name__ == "__main__":
    from cli.main import flow_script  # the same options and messages as `recsys health`

    sys.exit(flow_script("health"))
