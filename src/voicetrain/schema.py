"""Checking a plain config node against a settings dataclass: every unknown key, missing key, value
of the wrong type and value out of range, each named by its key with the fix, collected at once.

voicetrain.config applies it to every section of a run's configuration; a task's or extractor's own
`Settings` dataclass gets the same checks, and `limits` declares a field's bounds.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import field
from typing import Any, Literal

from voicetrain.trust import import_chosen


# What OmegaConf.to_container(..., throw_on_missing=False) leaves for a YAML `???`.
MISSING_VALUE = "???"


class ConfigError(ValueError):
    """One or more configuration problems, each on its own line."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        listing = "\n".join(f"  - {problem}" for problem in problems)
        super().__init__(f"{len(problems)} configuration problem(s):\n{listing}")


def limits(default: Any = dataclasses.MISSING, **bounds: float) -> Any:
    """A schema field checked against bounds: minimum, minimum_exclusive, maximum."""
    return field(default=default, metadata=bounds)


def describe_type(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return "one of " + ", ".join(repr(choice) for choice in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe_type(arg) for arg in typing.get_args(annotation))
    if origin is list:
        (item,) = typing.get_args(annotation)
        return f"a list of ({describe_type(item)})"
    if annotation is type(None):
        return "null"
    return getattr(annotation, "__name__", str(annotation))


def check_value(key: str, value: Any, annotation: Any) -> tuple[Any, list[str]]:
    """Returns the value converted to `annotation` (ints accepted as floats) and any problems."""
    if isinstance(value, str) and value == MISSING_VALUE:
        # OmegaConf leaves a YAML `???` as this string when it converts with throw_on_missing=False.
        return None, [f"{key}=???: a required value that was not given; pass {key}=... on the command line"]
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None, []
        settings_classes = [option for option in options if dataclasses.is_dataclass(option)]
        if len(settings_classes) == 1 and isinstance(value, dict):
            # A node of settings (logger.mlflow): its own problems name the key, not the union.
            return build_section(key, settings_classes[0], value)
        for option in options:
            if option is type(None):
                continue
            converted, problems = check_value(key, value, option)
            if not problems:
                return converted, []
        return value, [f"{key}={value!r}: expected {describe_type(annotation)}"]
    if origin is Literal:
        choices = typing.get_args(annotation)
        if value in choices:
            return value, []
        return value, [f"{key}={value!r}: expected {describe_type(annotation)}"]
    if origin is list:
        if not isinstance(value, (list, tuple)):
            return value, [f"{key}={value!r}: expected {describe_type(annotation)}"]
        (item_type,) = typing.get_args(annotation)
        converted_items, problems = [], []
        for index, item in enumerate(value):
            converted, item_problems = check_value(f"{key}[{index}]", item, item_type)
            converted_items.append(converted)
            problems += item_problems
        return converted_items, problems
    if origin is dict:
        if not isinstance(value, dict):
            return value, [f"{key}={value!r}: expected a mapping"]
        _, item_type = typing.get_args(annotation)
        converted_items, problems = {}, []
        for name, item in value.items():
            if dataclasses.is_dataclass(item_type):
                converted, item_problems = build_section(f"{key}.{name}", item_type, item)
            else:
                converted, item_problems = check_value(f"{key}.{name}", item, item_type)
            converted_items[name] = converted
            problems += item_problems
        return converted_items, problems
    if annotation is bool:
        if isinstance(value, bool):
            return value, []
        return value, [f"{key}={value!r}: expected true or false"]
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value, []
        return value, [f"{key}={value!r}: expected a whole number"]
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value), []
        return value, [f"{key}={value!r}: expected a number"]
    if annotation is str:
        if isinstance(value, str):
            return value, []
        return value, [f"{key}={value!r}: expected a string (quote it on the command line)"]
    if annotation is Any:
        return value, []
    if dataclasses.is_dataclass(annotation):
        return build_section(key, annotation, value)
    return value, [f"{key}: unsupported schema type {annotation!r} (a bug in the schema)"]


def check_range(key: str, value: Any, metadata: typing.Mapping[str, Any]) -> list[str]:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return []
    if "minimum" in metadata and value < metadata["minimum"]:
        return [f"{key}={value!r}: must be at least {metadata['minimum']}"]
    if "minimum_exclusive" in metadata and value <= metadata["minimum_exclusive"]:
        return [f"{key}={value!r}: must be greater than {metadata['minimum_exclusive']}"]
    if "maximum" in metadata and value > metadata["maximum"]:
        return [f"{key}={value!r}: must be at most {metadata['maximum']}"]
    return []


def build_section(prefix: str, schema: type, node: Any) -> tuple[Any, list[str]]:
    """Builds one dataclass from a plain mapping, collecting every unknown key and bad value."""
    if not isinstance(node, dict):
        return None, [f"{prefix}={node!r}: expected a mapping of settings"]
    hints = typing.get_type_hints(schema)
    fields = {item.name: item for item in dataclasses.fields(schema) if item.init}
    problems = []
    for key in node:
        if key not in fields:
            known = ", ".join(sorted(fields))
            problems.append(
                f"{prefix}.{key}: unknown key (a typo?). Known keys of {prefix}: {known}"
            )
    values = {}
    for name, item in fields.items():
        if name not in node:
            if item.default is dataclasses.MISSING and item.default_factory is dataclasses.MISSING:
                problems.append(f"{prefix}.{name}: missing. Its value comes from the YAML under conf/ (the primary "
                                f"config or the preset that fills {prefix}); restore it there or pass "
                                f"+{prefix}.{name}=VALUE")
            continue
        converted, value_problems = check_value(f"{prefix}.{name}", node[name], hints[name])
        value_problems += [] if value_problems else check_range(f"{prefix}.{name}", converted, item.metadata)
        problems += value_problems
        values[name] = converted
    if problems:
        return None, problems
    try:
        return schema(**values), []
    except (TypeError, ValueError) as error:
        # A schema that checks itself (MelSettings, a task's Settings) names its own class in the
        # message; name the config key the user wrote instead.
        message = str(error).replace(f"{schema.__name__}.", f"{prefix}.")
        return None, [message if message.startswith(f"{prefix}.") else f"{prefix}: {message}"]


def import_target(target: str) -> Any:
    """A class the user's own configuration names. A name read from a file (an export, a checkpoint)
    goes through voicetrain.trust.resolve_class first, never straight here."""
    return import_chosen(target)


def build_targeted(prefix: str, node: Any, example: str) -> tuple[str, Any, list[str]]:
    """A node that names a class with `_target_` and holds the keys of that class's `Settings`
    dataclass (a task, a feature extractor): the target and the validated settings."""
    if not isinstance(node, dict) or "_target_" not in node:
        return "", None, [f"{prefix}: missing {prefix}._target_ (the class, e.g. {example})"]
    target = node["_target_"]
    try:
        target_class = import_target(target)
    except (ImportError, AttributeError) as error:
        return target, None, [f"{prefix}._target_={target!r}: cannot import it ({error}); check the dotted path"]
    schema = getattr(target_class, "Settings", None)
    if schema is None or not dataclasses.is_dataclass(schema):
        return target, None, [f"{prefix}._target_={target!r}: the class has no `Settings` dataclass"]
    body = {key: value for key, value in node.items() if key != "_target_"}
    settings, problems = build_section(prefix, schema, body)
    return target, settings, problems
