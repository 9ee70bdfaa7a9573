"""The code version in every content cache key follows the library and task sources."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tasks import caching


@pytest.fixture
def source_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    for name in ("recommender/knn.py", "tasks/training.py", "deployments/sql/V001.sql"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(f"# {name}\n")
    (tmp_path / "README.md").write_text("docs\n")
    monkeypatch.setattr(caching, "ROOT", tmp_path)
    caching.code_version.cache_clear()
    yield tmp_path
    caching.code_version.cache_clear()


def versions_after(tree: Path, name: str, text: str) -> tuple[str, str]:
    before = caching.code_version()
    (tree / name).write_text(text)
    caching.code_version.cache_clear()
    return before, caching.code_version()


@pytest.mark.parametrize(
    "name", ["recommender/knn.py", "tasks/training.py", "deployments/sql/V001.sql"]
)
def test_a_changed_source_changes_the_code_version(source_tree: Path, name: str) -> None:
    before, after = versions_after(source_tree, name, "n_estimators = 40\n")

    assert before != after
    assert after.startswith(caching.package_version() + "+")


def test_docs_do_not_change_the_code_version(source_tree: Path) -> None:
    before, after = versions_after(source_tree, "README.md", "other docs\n")

    assert before == after


def test_a_new_library_module_changes_the_code_version(source_tree: Path) -> None:
    before, after = versions_after(source_tree, "recommender/new_model.py", "x = 1\n")

    assert before != after
