"""Reaching the warehouse: the configured PostgreSQL, or an embedded one under the project home."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

if TYPE_CHECKING:
    from tasks.config import Settings

logger = logging.getLogger(__name__)


class WarehouseError(RuntimeError):
    pass


# --- connecting -------------------------------------------------------------------------------
def database_url(settings: Settings) -> str:
    """The configured server, or an embedded PostgreSQL kept under the project home."""
    if settings.database_url is not None:
        return settings.database_url.get_secret_value()
    return str(embedded_server(settings.home / "postgres").get_uri())


# The embedded server serves this project alone and streams WAL to no replica, so it keeps the
# least WAL: a load's COPY into the partition it created in the same transaction then writes
# none (PostgreSQL syncs the new files at commit), a fifth of a 10M-rating load. Crash safety
# is unchanged; only archiving and replication need more.
EMBEDDED_SETTINGS = {"wal_level": "minimal", "max_wal_senders": "0"}


def import_pgserver() -> Any:
    """pgserver, imported only for the embedded default (a bundled PostgreSQL, started on
    demand). On import it picks the user's runtime folder for its lock file; where
    ``XDG_RUNTIME_DIR`` is not set (root shells, containers, CI) platformdirs then warns in the
    middle of a run and falls back to ``/tmp/runtime-<uid>``, which serves: that one warning is
    kept quiet."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
        import pgserver
        import pgserver.postgres_server  # noqa: F401  # what the warning comes from
    return pgserver


def embedded_server(folder: Path, cleanup_mode: str | None = "stop") -> Any:
    """pgserver's bundled PostgreSQL in ``folder`` (created on first use) with
    ``EMBEDDED_SETTINGS``. A server that lacks them gets them, and is restarted when this process
    is its only user; otherwise they take effect when it next starts."""
    pgserver = import_pgserver()
    folder.parent.mkdir(parents=True, exist_ok=True)  # a fresh home: the service may come first
    server = pgserver.get_server(folder, cleanup_mode=cleanup_mode)
    with server._lock:  # pgserver's inter-process lock: one process at a time sets and restarts
        forget_dead_users(server)
        with psycopg.connect(server.get_uri(), autocommit=True) as conn:
            stale = {
                name: value
                for name, value in EMBEDDED_SETTINGS.items()
                if conn.execute(sql.SQL("SHOW {}").format(sql.Identifier(name))).fetchone()
                != (value,)
            }
            for name, value in stale.items():
                conn.execute(
                    sql.SQL("ALTER SYSTEM SET {} = {}").format(
                        sql.Identifier(name), sql.Literal(value)
                    )
                )
        if not stale:
            return server
        if server.global_process_id_list.get() != [os.getpid()]:
            logger.info("the embedded PostgreSQL gets %s when it next starts", stale)
            return server
        logger.info("restarting the embedded PostgreSQL in %s to apply %s", folder, stale)
        pgserver.pg_ctl(  # type: ignore[attr-defined]  # made by a factory
            ["-w", "-m", "fast", "-l", str(server.log), "restart"],
            pgdata=server.pgdata,
            user=server.system_user,
        )
        server.ensure_postgres_running()  # its handle now follows the restarted postmaster
    return server


def release_embedded_server(settings: Settings) -> bool:
    """Give back this process's hold on the embedded PostgreSQL now, not at exit: the server
    stops when its last user lets go. For processes that may never reach their exit handlers:
    uvicorn re-raises SIGTERM once its graceful shutdown is done, and the signal's default
    action ends the process without them, leaving the server up. Returns whether this process
    held it (then a later ``database_url`` in this process would no longer be served)."""
    if settings.database_url is not None:
        return False
    PostgresServer = import_pgserver().postgres_server.PostgresServer  # noqa: N806

    folder = (settings.home / "postgres").expanduser().resolve()
    server = PostgresServer._instances.get(folder)
    if server is None:
        return False
    server.cleanup()  # pgserver's own exit handler: drops this pid, stops when it was the last
    # forgotten here too, so a later use in this process registers it as a user again
    PostgresServer._instances.pop(folder, None)
    return True


def forget_dead_users(server: Any) -> list[int]:
    """Drop the processes that died without saying so (SIGKILL) from pgserver's list of the
    server's users: the server stops when its last user exits, and a dead one listed would keep
    it running for ever. Returns the pids dropped. Call it holding ``server._lock``."""
    import psutil  # pgserver's own dependency

    users = server.global_process_id_list
    listed = users.get()
    dead = [pid for pid in listed if not psutil.pid_exists(pid)]
    if dead:
        users.put([pid for pid in listed if pid not in dead])
        logger.info("the embedded PostgreSQL's users %s are gone: forgotten", dead)
    return dead


@contextmanager
def connect(url: str, autocommit: bool = False) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(url, autocommit=autocommit) as conn:
        yield conn


@contextmanager
def advisory_lock(url: str, key: int) -> Iterator[None]:
    """Hold PostgreSQL's session advisory lock ``key`` for the block: every process of the
    project that asks for it on the same warehouse waits its turn (released if this one dies)."""
    with connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (key,))
        try:
            yield
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (key,))
