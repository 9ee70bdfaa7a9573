"""The analysis notebooks: committed without outputs, and run top to bottom with nbclient on the
project home the pipeline filled (the embedded defaults), checked on what they computed."""

from __future__ import annotations

import json
import math
from pathlib import Path

import nbformat
import pytest

from tests.conftest import free_port
from tests.pipeline_home import PipelineRun

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((REPO / "notebooks").rglob("*.ipynb"))
EXPLORE_AND_MODEL = REPO / "notebooks" / "explore_and_model.ipynb"
EXPECTED_RMSE = (0.85, 0.97)  # fold 1 of ml-100k, held out: the real-data bounds


def leftovers(path: Path) -> list[str]:
    """Where a notebook still holds what running it left: outputs, execution counts."""
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    found = []
    for number, cell in enumerate(notebook.cells, 1):
        if cell.cell_type != "code":
            continue
        if cell.get("outputs"):
            found.append(f"cell {number}: {len(cell.outputs)} outputs")
        if cell.get("execution_count") is not None:
            found.append(f"cell {number}: execution count {cell.execution_count}")
    return found


def test_the_analysis_notebook_is_committed() -> None:
    assert EXPLORE_AND_MODEL in NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: str(p.relative_to(REPO)))
def test_committed_notebooks_hold_no_outputs(path: Path) -> None:
    found = leftovers(path)

    assert found == [], f"{path.name}: clear its outputs before committing ({', '.join(found)})"


def test_a_notebook_with_outputs_is_caught(tmp_path: Path) -> None:
    notebook = nbformat.read(EXPLORE_AND_MODEL, as_version=4)
    cell = next(c for c in notebook.cells if c.cell_type == "code")
    cell.execution_count = 3
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="42\n")]
    nbformat.write(notebook, tmp_path / "ran.ipynb")

    assert len(leftovers(tmp_path / "ran.ipynb")) == 2


@pytest.mark.realdata
@pytest.mark.slow
def test_explore_and_model_runs_on_the_pipelines_home(
    pipeline_run: PipelineRun, tmp_path: Path
) -> None:
    from nbclient import NotebookClient

    assert pipeline_run.done.returncode == 0, pipeline_run.done.stderr[-3000:]
    saved = tmp_path / "results.json"
    # no API on this port: the notebook's request is skipped, not answered by a stray service
    env = pipeline_run.env | {
        "RECSYS_NOTEBOOK_RESULTS": str(saved), "RECSYS_API_PORT": str(free_port()),
    }  # fmt: skip
    notebook = nbformat.read(EXPLORE_AND_MODEL, as_version=4)
    client = NotebookClient(
        notebook, timeout=1200, kernel_name="python3",
        resources={"metadata": {"path": str(pipeline_run.workdir)}},
    )  # fmt: skip

    client.execute(env=env)

    results = json.loads(saved.read_text())
    assert results["dataset"] == "ml-100k"
    assert results["rows"] == {
        "ratings": 100000, "users": 943, "items": 1682, "item_features": 1682,
        "user_features": 943,
    }  # fmt: skip
    fold = results["fold_1"]
    assert fold["test_ratings"] == 20000 and fold["champion_version"] == "1"
    for fitted_on_fold_1 in ("trained", "champion_config"):
        assert EXPECTED_RMSE[0] < fold[fitted_on_fold_1]["rmse"] < EXPECTED_RMSE[1]
        assert 0.3 < fold[fitted_on_fold_1]["ndcg_at_10"] < 1
    # as registered, the champion was refitted on every rating, fold 1's test included
    assert math.isfinite(fold["champion_in_sample"]["rmse"])
    assert fold["champion_in_sample"]["rmse"] < fold["champion_config"]["rmse"]
    clusters = results["clusters"]
    assert clusters["elbow"] in clusters["counts"] and sum(clusters["sizes"]) == 943
    assert results["api"] is None
