"""Base class of the validated per-model configs: hyper-parameters only, flat params for MLflow."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict

Param = str | int | float | bool


class ModelConfig(BaseModel):
    """Hyper-parameters of one model kind; frozen, unknown fields rejected.

    ``kind`` names the model; :meth:`as_params` flattens nested configs as ``"ranking.x"``.
    The model a config describes is built by :func:`recommender.registry.build_model`
    (the registry knows the model classes; a config knows none, so no import circle).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: str

    def as_params(self) -> dict[str, Param]:
        """Flat ``{name: scalar}`` dict (MLflow params, sweep-grid rows)."""
        return _flatten(self.model_dump())


def _flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Param]:
    flat: dict[str, Param] = {}
    for name, value in values.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{name}."))
        elif isinstance(value, list | tuple):
            flat[f"{prefix}{name}"] = ",".join(str(v) for v in value)
        elif value is None:
            flat[f"{prefix}{name}"] = "None"
        else:
            flat[f"{prefix}{name}"] = value
    return flat


def unflatten(params: Mapping[str, Any]) -> dict[str, Any]:
    """Nest ``"a.b"`` keys again and turn ``"None"`` back into None (MLflow gives strings)."""
    nested: dict[str, Any] = {}
    for name, value in params.items():
        *parents, leaf = name.split(".")
        node = nested
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = None if value == "None" else value
    return nested
