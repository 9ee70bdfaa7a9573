"""The warehouse schema: versioned SQL migrations (deployments/sql) and its partitioned tables."""

from __future__ import annotations

from pathlib import Path

from psycopg import sql

from tasks.warehouse.connection import connect

MIGRATIONS = Path(__file__).resolve().parents[2] / "deployments" / "sql"


MIGRATION_LOCK = 0x5EC5_5C11


# Partitioned tables in parent-to-child order: attached in this order, detached in reverse.
TABLES: tuple[str, ...] = (
    "movielens.genres",
    "movielens.occupations",
    "movielens.users",
    "movielens.items",
    "movielens.item_genres",
    "movielens.ratings",
    "features.item_features",
    "features.user_features",
)


def migrate(url: str) -> list[str]:
    """Apply the repository's versioned SQL files not yet applied; returns the applied ones."""
    applied: list[str] = []
    with connect(url) as conn, conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        conn.execute("CREATE SCHEMA IF NOT EXISTS ops")
        conn.execute(
            "CREATE TABLE IF NOT EXISTS ops.schema_migrations ("
            " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {row[0] for row in conn.execute("SELECT version FROM ops.schema_migrations")}
        for path in sorted(MIGRATIONS.glob("V*.sql")):
            version = path.stem
            if version in done:
                continue
            conn.execute(path.read_text())  # type: ignore[call-overload]
            conn.execute("INSERT INTO ops.schema_migrations (version) VALUES (%s)", (version,))
            applied.append(version)
    return applied


def qualified_name(table: str) -> sql.Composed:
    schema, name = table.split(".")
    return sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(name))
