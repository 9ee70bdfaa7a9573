"""``python -m api``: serve the API with uvicorn on RECSYS_API_HOST:RECSYS_API_PORT."""

from __future__ import annotations

import tasks.process_env  # noqa: F401  (first: the environment, before Prefect and MLflow)

# isort: split

import uvicorn

from tasks.config import load_settings


def main() -> None:
    settings = load_settings()
    uvicorn.run(
        "api.app:create_app",
        factory=True,
        host=settings.api_host,
        port=settings.api_port,
        workers=settings.api_workers,
        access_log=False,  # every answer is a row of serving.predictions already
        timeout_graceful_shutdown=30,
    )


if __name__ == "__main__":
    main()
