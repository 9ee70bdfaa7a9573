"""Session fixtures: the real MovieLens files, and (below) real services started once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ML100K = REPO_ROOT.parent / "shared" / "data" / "ml-100k"


def ml100k_path() -> Path:
    """Where the real ml-100k files are: $RECSYS_TEST_ML100K or ../shared/data/ml-100k."""
    return Path(os.environ.get("RECSYS_TEST_ML100K", str(DEFAULT_ML100K))).resolve()


@pytest.fixture(scope="session")
def ml100k_dir() -> Path:
    """The real ml-100k folder; skip on a user's machine without it, fail under CI=true."""
    path = ml100k_path()
    if not (path / "u.data").is_file():
        message = (
            f"MovieLens 100K not found at {path} (set RECSYS_TEST_ML100K to the extracted folder)"
        )
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail(message + ": CI must not pass by skipping real-data tests")
        pytest.skip(message)
    return path
