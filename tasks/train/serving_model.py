"""The registered MLflow model: top-N movies for user ids, loaded from code by ``mlflow.pyfunc``.

Logged as a "model from code" with ``recommender/`` in its code paths, so a served model needs
neither this project's ``tasks`` nor its settings: only MLflow, the library and its artifacts.
"""

from __future__ import annotations

import pickle
from typing import Any

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel, PythonModelContext

DEFAULT_N = 10


class MovieRecommender(PythonModel):
    """Input: a frame with ``user_id`` and optional ``n``; output: one row per recommendation."""

    def load_context(self, context: PythonModelContext) -> None:
        with open(context.artifacts["model"], "rb") as handle:
            self.model = pickle.load(handle)  # noqa: S301 (our own artifact)
        titles = pd.read_parquet(context.artifacts["titles"])
        self.titles = dict(zip(titles["item_id"], titles["title"], strict=True))

    def predict(
        self,
        context: PythonModelContext,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> pd.DataFrame:
        rows = []
        sizes = model_input["n"] if "n" in model_input else [DEFAULT_N] * len(model_input)
        for user_id, n in zip(model_input["user_id"], sizes, strict=True):
            count = DEFAULT_N if pd.isna(n) else int(n)
            for rank, (item_id, score) in enumerate(self.model.recommend(int(user_id), count), 1):
                rows.append(
                    {
                        "user_id": int(user_id),
                        "rank": rank,
                        "item_id": int(item_id),
                        "title": self.titles.get(int(item_id), ""),
                        "score": float(score),
                    }
                )
        return pd.DataFrame(rows, columns=["user_id", "rank", "item_id", "title", "score"])


mlflow.models.set_model(MovieRecommender())
