"""The notebooks run against a project home the pipeline filled (one run per session)."""

from tests.pipeline_home import pipeline_run

__all__ = ["pipeline_run"]
