"""A flow's typed parameters as command-line options, read from the flow function's signature.

``list[int] | None`` takes several values (``--n-clusters 1 8``), a ``Literal`` its choices,
``bool`` an ``--x/--no-x`` pair; parameters of other types (a ``RawDataset`` passed between
flows) are not options. Only the options given reach the flow: the rest keep its defaults.
"""

from __future__ import annotations

import argparse
import inspect
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

SCALARS: dict[type, str] = {int: "N", float: "X", str: "TEXT"}


@dataclass(frozen=True)
class OptionSpec:
    """How one parameter reads from the command line."""

    name: str
    scalar: type
    many: bool = False
    choices: tuple[Any, ...] | None = None
    flag: bool = False

    @property
    def option(self) -> str:
        return "--" + self.name.replace("_", "-")


def option_specs(fn: Callable[..., Any]) -> list[tuple[OptionSpec, Any]]:
    """Each command-line parameter of ``fn`` with its default (``inspect.Parameter.empty``
    when it has none)."""
    hints = typing.get_type_hints(fn)
    specs = []
    for name, parameter in inspect.signature(fn).parameters.items():
        spec = option_spec(name, hints.get(name, str))
        if spec is not None:
            specs.append((spec, parameter.default))
    return specs


def option_spec(name: str, hint: Any) -> OptionSpec | None:
    """The option for a type hint, or None when the type has no command-line form."""
    hint = _without_none(hint)
    many = typing.get_origin(hint) in (list, tuple, set)
    if many:
        (hint,) = typing.get_args(hint)[:1]
        hint = _without_none(hint)
    if typing.get_origin(hint) is Literal:
        choices = typing.get_args(hint)
        return OptionSpec(name, type(choices[0]), many=many, choices=choices)
    if hint is bool and not many:
        return OptionSpec(name, bool, flag=True)
    if hint in SCALARS:
        return OptionSpec(name, hint, many=many)
    return None


def _without_none(hint: Any) -> Any:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        rest = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return hint


def add_flow_options(parser: argparse.ArgumentParser, fn: Callable[..., Any]) -> None:
    """Add an option per parameter of ``fn``; the parsed namespace holds only those given."""
    group = parser.add_argument_group("flow parameters (unset: the flow's own default)")
    for spec, default in option_specs(fn):
        shown = "unset" if default in (None, inspect.Parameter.empty) else _shown(default)
        if spec.flag:
            group.add_argument(
                spec.option, dest=spec.name, action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS, help=f"(default: {shown})",
            )  # fmt: skip
            continue
        choices = ", ".join(str(c) for c in spec.choices) if spec.choices is not None else ""
        help_text = "one or more" if spec.many else ""
        if spec.many and choices:
            help_text += f" of {choices}"
        group.add_argument(
            spec.option,
            dest=spec.name,
            type=spec.scalar,
            nargs="+" if spec.many else None,
            choices=spec.choices,
            metavar=_metavar(spec),
            default=argparse.SUPPRESS,
            help=f"{help_text} (default: {shown})".strip(),
        )


def _metavar(spec: OptionSpec) -> str:
    if spec.many and spec.choices is not None:
        return spec.name.rstrip("s").upper()
    if spec.choices is not None:
        return "{" + ",".join(str(choice) for choice in spec.choices) + "}"
    return SCALARS.get(spec.scalar, "VALUE")


def _shown(default: Any) -> str:
    if isinstance(default, list | tuple):
        return " ".join(str(value) for value in default)
    return str(default)


def flow_kwargs(namespace: argparse.Namespace, fn: Callable[..., Any]) -> dict[str, Any]:
    """The keyword arguments of ``fn`` that the command line gave."""
    given = vars(namespace)
    return {spec.name: given[spec.name] for spec, _ in option_specs(fn) if spec.name in given}
