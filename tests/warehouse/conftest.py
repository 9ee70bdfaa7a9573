"""A migrated warehouse on the session's PostgreSQL."""

from __future__ import annotations

import pytest

from tasks.warehouse.schema import migrate


@pytest.fixture
def warehouse(database_url: str) -> str:
    migrate(database_url)
    return database_url
