"""The code version in the content cache keys follows the code each kind of task runs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tasks import caching
from tasks.caching import DATA_CODE, MODEL_CODE

FILES = (
    "recommender/knn.py", "tasks/train/units.py", "tasks/movielens/formats.py", "tasks/config.py",
    "tasks/report/summary.py", "deployments/sql/V001.sql", "README.md",
)  # fmt: skip


@pytest.fixture
def source_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    for name in FILES:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(f"# {name}\n")
    monkeypatch.setattr(caching, "ROOT", tmp_path)
    caching.code_version.cache_clear()
    yield tmp_path
    caching.code_version.cache_clear()


def changes(tree: Path, name: str, patterns: tuple[str, ...]) -> bool:
    """Whether editing ``name`` changes the code version over ``patterns``."""
    before = caching.code_version(patterns)
    (tree / name).write_text("changed = True\n")
    caching.code_version.cache_clear()
    return caching.code_version(patterns) != before


@pytest.mark.parametrize(
    ("name", "model", "data"),
    [
        ("recommender/knn.py", True, False),  # a model default: the sweep recomputes
        ("recommender/new_model.py", True, False),
        ("tasks/train/units.py", True, False),
        ("tasks/movielens/formats.py", False, True),  # parsing: ingest and curation recompute
        ("deployments/sql/V001.sql", False, True),
        ("tasks/config.py", True, True),
        ("tasks/report/summary.py", False, False),  # the report reads results, keeps every cache
        ("README.md", False, False),
    ],
)
def test_each_kind_of_task_follows_its_own_code(
    source_tree: Path, name: str, model: bool, data: bool
) -> None:
    assert changes(source_tree, name, MODEL_CODE) is model
    (source_tree / name).write_text(f"# {name}\n")  # back to the original
    caching.code_version.cache_clear()
    assert changes(source_tree, name, DATA_CODE) is data


def test_the_version_names_the_package(source_tree: Path) -> None:
    assert caching.code_version(MODEL_CODE).startswith(caching.package_version() + "+")


def test_the_policies_key_on_their_own_code() -> None:
    [data] = [p for p in caching.DATA_CONTENT.policies if isinstance(p, caching.CodeVersion)]
    [model] = [p for p in caching.CONTENT.policies if isinstance(p, caching.CodeVersion)]

    assert data.patterns == DATA_CODE and model.patterns == MODEL_CODE
    assert data.key_storage is None and model.key_storage is None


def test_results_written_to_a_store_are_keyed_to_that_store(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Pointing MLflow or the warehouse elsewhere computes anew: a cached sweep would otherwise
    name runs and versions that the new store does not hold."""
    from tasks.train.sweep import promote_champion, record_sweep, write_recommendations
    from tasks.warehouse.loads import load_warehouse

    monkeypatch.setenv("RECSYS_HOME", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RECSYS_DATABASE_URL", raising=False)
    policy = caching.Destinations()

    def key() -> str | None:
        return policy.compute_key(None, {}, {})  # type: ignore[arg-type]

    embedded = key()
    assert key() == embedded
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    tracking = key()
    monkeypatch.setenv("RECSYS_DATABASE_URL", "postgresql://recsys:secret@db.example/recsys")
    database = key()
    assert len({embedded, tracking, database}) == 3
    assert "secret" not in str(database)

    for task in (record_sweep, promote_champion, write_recommendations, load_warehouse):
        assert any(isinstance(p, caching.Destinations) for p in task.cache_policy.policies)  # type: ignore[union-attr]
