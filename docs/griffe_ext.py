"""A griffe extension for the API pages: reads this project's docstrings as they are written.

mkdocstrings loads it from ``mkdocs.yml`` (``handlers.python.options.extensions``). It changes
what is rendered, never the source:

* Sphinx roles (``:func:`softplus```, ``:class:`Activation```) become links to the API pages.
  Left alone they render as the literal text ":func:", and in a ``Returns:`` section
  ("An :class:`Activation`: call it ...") griffe reads "An" as the returned value's name.
* A singular ``Example:`` heading becomes ``Examples:``, the Google section griffe knows, so
  the doctests render as code; griffe reads ``Example:`` as an admonition of Markdown text,
  where each ``>>>`` line becomes a nested block quote.
* Equinox modules are dataclasses without a written ``__init__``; griffe's static analysis
  finds their constructor only for ``@dataclass``-decorated classes. For a class of
  ``stable_layers.equinox`` without ``__init__`` this builds one from the annotated fields
  (``eqx.field(default=...)``, ``dataclasses.KW_ONLY``), so its signature renders and its
  ``Args:`` section matches it.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:func|class|meth|attr|mod|data|obj):`~?([\w.]+)`")
_EXAMPLE = re.compile(r"^(\s*)Example:[ \t]*$", re.M)


def _link(match: re.Match[str]) -> str:
    name = match.group(1)
    target = name if name.startswith("stable_layers.") else f"stable_layers.{name}"
    return f"[`{name}`][{target}]"


def _field_default(value: Any) -> Any:
    """The ``default=`` of an ``eqx.field(...)`` call, else the value itself."""
    if isinstance(value, griffe.ExprCall):
        for arg in value.arguments:
            if isinstance(arg, griffe.ExprKeyword) and arg.name == "default":
                return arg.value
        return None
    return value


def _dataclass_init(cls: griffe.Class) -> griffe.Function:
    params = [griffe.Parameter("self", kind=griffe.ParameterKind.positional_or_keyword)]
    kw_only = False
    for member in cls.members.values():
        if member.is_alias or not member.is_attribute or member.annotation is None:
            continue
        annotation = member.annotation
        if isinstance(annotation, griffe.Expr) and annotation.canonical_path in (
            "dataclasses.KW_ONLY",
            "typing.ClassVar",
        ):
            kw_only = kw_only or annotation.canonical_path == "dataclasses.KW_ONLY"
            continue
        if "class-attribute" in member.labels and "instance-attribute" not in member.labels:
            continue  # a ClassVar
        kind = (
            griffe.ParameterKind.keyword_only
            if kw_only
            else griffe.ParameterKind.positional_or_keyword
        )
        params.append(
            griffe.Parameter(
                member.name, annotation=annotation, kind=kind, default=_field_default(member.value)
            )
        )
    return griffe.Function(
        "__init__", parent=cls, parameters=griffe.Parameters(*params), returns="None"
    )


class StableLayersDocstrings(griffe.Extension):
    """Rewrites Sphinx roles and ``Example:`` headings; gives Equinox modules a constructor."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        docstring = obj.docstring
        if docstring is not None:
            docstring.value = _EXAMPLE.sub(r"\1Examples:", _ROLE.sub(_link, docstring.value))

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        if pkg.path != "stable_layers" or "equinox" not in pkg.members:
            return
        for member in pkg["equinox"].members.values():
            if not member.is_alias and member.is_class and "__init__" not in member.members:
                member.set_member("__init__", _dataclass_init(member))
