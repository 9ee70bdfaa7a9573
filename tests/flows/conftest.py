"""The pipeline's end-to-end run, shared with tests/notebooks/ (one run per session)."""

from tests.pipeline_home import pipeline_run

__all__ = ["pipeline_run"]
