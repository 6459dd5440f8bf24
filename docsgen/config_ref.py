"""The configuration reference, rendered from the config's pydantic models.

Every table of the TOML file is a pydantic model in
:mod:`adapters.service.config`; every key is a field.  This module walks the
models from :class:`~adapters.service.config.Config` down, and for each key
renders what the code knows: its type and rules (from the model's JSON
schema: enum, pattern, bounds), its default, the validators that check it
(their docstrings), the environment variables that may supply it
(``SECRET_ENV``, ``PBX_SECRET_KEYS``) and its description (the field's
attribute docstring).  A key added to a model appears in the next build.

:func:`tables` is also what the test comparing code and reference uses to
know which tables exist; :func:`anchor` gives each key a stable HTML id, so
other pages can link to ``reference/configuration.md#api.listen``.
"""

from __future__ import annotations

import inspect
import json
import re
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from adapters.service import config as cfg


@dataclass
class Table:
    """One model, and every place in the file where it is a table."""

    model: type[BaseModel]
    #: TOML headings, e.g. ``[policy]``, ``[[pbx]]``; the first is the main one.
    paths: list[str] = field(default_factory=list)
    #: For a member of a tagged union (``[[pbx]]``): the tag key and its value.
    tag: tuple[str, str] | None = None

    @property
    def heading(self) -> str:
        where = " · ".join(f"`{path}`" for path in self.paths) or "The file"
        if self.tag is not None:
            where += f" with `{self.tag[0]} = {json.dumps(self.tag[1])}`"
        return where

    @property
    def slug(self) -> str:
        if not self.paths:
            return "file"
        main = min(self.paths, key=lambda p: (p.count("."), len(p)))
        slug = re.sub(r"[^A-Za-z0-9_.-]", "", main)  # an HTML id: [rules.<name>] -> rules.name
        return f"{slug}-{self.tag[1]}" if self.tag is not None else slug


def key_of(name: str, info: FieldInfo) -> str:
    """The key as the file writes it (a field ``if_`` is the key ``if``)."""
    return info.alias or name


def anchor(table: Table, key: str) -> str:
    """The HTML id of ``key``'s row in ``table``."""
    return f"{table.slug}.{key}"


def _models_in(annotation: Any) -> Iterator[tuple[type[BaseModel], bool]]:
    """The models an annotation holds, each with whether it is an array of tables."""
    origin = get_origin(annotation)
    if origin is typing.Annotated:
        yield from _models_in(get_args(annotation)[0])
    elif origin in (Union, types.UnionType):
        for arg in get_args(annotation):
            yield from _models_in(arg)
    elif origin in (tuple, list):
        for arg in get_args(annotation):
            if arg is not Ellipsis:
                yield from ((model, True) for model, _ in _models_in(arg))
    elif origin is dict:  # a table of named tables: [x.<name>]
        yield from _models_in(get_args(annotation)[1])
    elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation, False


def _tag_of(model: type[BaseModel]) -> tuple[str, str] | None:
    """A required key whose type is a one-value ``Literal``: the union tag (``kind``)."""
    for name, info in model.model_fields.items():
        args = get_args(info.annotation)
        if info.is_required() and get_origin(info.annotation) is Literal and len(args) == 1:
            return name, str(args[0])
    return None


def tables(root: type[BaseModel] = cfg.Config) -> list[Table]:
    """Every model reachable from ``root``, in the order the file meets them."""
    found: dict[type[BaseModel], Table] = {root: Table(root)}
    queue: list[tuple[type[BaseModel], str]] = [(root, "")]
    while queue:
        model, prefix = queue.pop(0)
        for name, info in model.model_fields.items():
            members = list(_models_in(info.annotation))
            for child, array in members:
                dotted = f"{prefix}.{key_of(name, info)}" if prefix else key_of(name, info)
                table = found.get(child)
                if table is None:
                    table = found[child] = Table(child, tag=_tag_of(child) if len(members) > 1 else None)
                    queue.append((child, dotted))
                if get_origin(info.annotation) is dict:
                    dotted += ".<name>"
                path = f"[[{dotted}]]" if array else f"[{dotted}]"
                if path not in table.paths:
                    table.paths.append(path)
    return list(found.values())


# -- one key ----------------------------------------------------------------------


def _toml(value: Any) -> str:
    if value is None:
        return "not set"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, PurePath):
        value = str(value)
    if isinstance(value, str | int | float):
        return f"`{json.dumps(value)}`"
    if isinstance(value, list | tuple):
        return "`[" + ", ".join(json.dumps(item) for item in value) + "]`"
    if isinstance(value, dict):
        return f"`{json.dumps(value)}`"
    return f"`{value}`"


def _type(prop: dict[str, Any]) -> str:
    """A JSON-schema property as a TOML type with its rules."""
    if "anyOf" in prop:
        kinds = [_type(p) for p in prop["anyOf"] if p.get("type") != "null"]
        return " or ".join(kinds)
    if "const" in prop:
        return f"`{json.dumps(prop['const'])}`"
    if "enum" in prop:
        return "one of " + ", ".join(f"`{json.dumps(v)}`" for v in prop["enum"])
    kind = prop.get("type")
    rules: list[str] = []
    if kind == "string":
        text = {"password": "string, secret", "path": "path"}.get(prop.get("format", ""), "string")
        if prop.get("minLength") == 1:
            rules.append("not empty")
        elif "minLength" in prop:
            rules.append(f"at least {prop['minLength']} characters")
        if "maxLength" in prop:
            rules.append(f"at most {prop['maxLength']} characters")
        if "pattern" in prop:
            rules.append(f"matching `{prop['pattern']}`")
    elif kind in ("number", "integer"):
        text = "integer" if kind == "integer" else "number"
        for key, sign in (
            ("exclusiveMinimum", ">"),
            ("minimum", "≥"),
            ("exclusiveMaximum", "<"),
            ("maximum", "≤"),
        ):
            if key in prop:
                rules.append(f"{sign} {prop[key]}")
    elif kind == "boolean":
        text = "boolean"
    elif kind == "array":
        text = "array of " + _type(prop.get("items", {}))
    elif kind == "object":
        values = prop.get("additionalProperties")
        text = "table" + (f" of {_type(values)}" if isinstance(values, dict) and values else "")
    else:
        text = str(kind or "value")
    return text + (f" ({', '.join(rules)})" if rules else "")


def _validators(model: type[BaseModel]) -> dict[str, list[str]]:
    """Field name → the docstrings of the field validators that check it."""
    checks: dict[str, list[str]] = {}
    for decorator in model.__pydantic_decorators__.field_validators.values():
        doc = inspect.getdoc(decorator.func)
        if doc:
            for name in decorator.info.fields:
                checks.setdefault(name, []).append(doc)
    return checks


def model_checks(model: type[BaseModel]) -> list[str]:
    """The docstrings of a model's cross-key validators (``mode="after"``)."""
    docs = []
    for decorator in model.__pydantic_decorators__.model_validators.values():
        doc = inspect.getdoc(decorator.func)
        if doc and decorator.info.mode == "after":
            docs.append(doc)
    return docs


def env_vars(table: Table, key: str) -> list[str]:
    """The environment variables that supply ``key`` of ``table`` (they win over the file)."""
    tops = {path.strip("[]") for path in table.paths}
    found = [f"`{var}`" for var, (where, name) in cfg.SECRET_ENV.items() if where in tops and name == key]
    if "pbx" in tops and key in cfg.PBX_SECRET_KEYS:
        if found:
            found[-1] += " (when one PBX is configured)"
        example = cfg.pbx_env_name("acme", key)
        found.append(f"`{example.replace('ACME', '<NAME>')}` (e.g. `{example}` for the PBX named `acme`)")
    return found


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _section(table: Table, by_model: dict[type[BaseModel], Table]) -> list[str]:
    model = table.model
    schema = model.model_json_schema()
    props: dict[str, Any] = schema.get("properties", {})
    required = set(schema.get("required", ()))
    checks = _validators(model)
    lines = [f"## {table.heading} {{#{table.slug}}}", ""]
    doc = inspect.getdoc(model) if model.__doc__ else None
    if doc:
        lines += [_cell(doc), ""]
    lines += ["| key | type | default | description |", "|---|---|---|---|"]
    for name, info in model.model_fields.items():
        key = key_of(name, info)
        prop = props.get(key, {})
        nested = [by_model[child] for child, _ in _models_in(info.annotation)]
        if nested:
            kind = " or ".join(f"table: [{t.heading}](#{t.slug})" for t in nested)
            default = "required" if key in required else "see the table"
        else:
            kind = _type(prop)
            default = "required" if key in required else _toml(info.get_default(call_default_factory=True))
        notes = [info.description or ""]
        notes += [f"Checked: {check}" for check in checks.get(name, [])]
        envs = env_vars(table, key)
        if envs:
            notes.append("Environment: " + "; ".join(envs) + ".")
        if prop.get("format") == "password":
            notes.append("Never logged.")
        description = "<br>".join(_cell(note) for note in notes if note)
        cell = f'<span id="{anchor(table, key)}"></span>`{key}`'
        lines.append(f"| {cell} | {_cell(kind)} | {default} | {description} |")
    lines.append("")
    for doc in model_checks(model):
        lines += ["Checked across keys:", "", doc, ""]
    return lines


def render_tables(root: type[BaseModel]) -> list[str]:
    """One section per table reachable from ``root`` (Markdown lines)."""
    found = tables(root)
    by_model = {table.model: table for table in found}
    return [line for table in found for line in _section(table, by_model)]


def render() -> str:
    """The whole configuration reference page (Markdown)."""
    lines = [
        "# Configuration reference",
        "",
        "<!-- Generated from adapters/service/config.py by docsgen/config_ref.py at every build: "
        "edit the models' docstrings, not this page. -->",
        "",
        "`xferd run --config PATH` reads one TOML file. Every key of every table is listed below "
        "with its type, default and rules, as the code checks them. A mistake — an unknown key, a "
        "wrong type, a missing required key, a rule broken — stops the service before it starts "
        "with one line naming the key, and exit code 2:",
        "",
        "```text",
        "xferd: config error in /etc/xferd/xferd.toml: [policy].no_answer_timeout_s: "
        "should be greater than 0",
        "```",
        "",
        "Numbers may be written as TOML integers or floats (`20` or `20.0`) but not as strings. "
        "Secrets may come from environment variables instead of the file; a variable wins over the "
        "file. Relative paths are relative to the config file's folder.",
        "",
    ]
    return "\n".join(lines + render_tables(cfg.Config))


def render_rules() -> str:
    """The rules file reference page (Markdown), from :class:`adapters.service.rules.RulesFile`."""
    from adapters.service.rules import RulesFile

    lines = [
        "# Rules file reference",
        "",
        "<!-- Generated from adapters/service/rules.py by docsgen/config_ref.py at every build. -->",
        "",
        "The routing rules file (`[rules] path` in the config, or `xferd run --rules FILE`) is TOML. "
        "Every key, as the code checks it; a mistake is one line naming the rule, the key and where, "
        "at start (exit 2), at `xferd rules check` and on reload (422, the rules in force stay). "
        "How to write rules: [Routing rules](../guides/rules.md).",
        "",
    ]
    return "\n".join(lines + render_tables(RulesFile))


def documented_keys(page: str) -> set[str]:
    """The key anchors a rendered page holds (for the test comparing code and reference)."""
    return set(re.findall(r'<span id="([^"]+)"></span>`', page))
