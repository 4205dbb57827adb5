"""The checks behind core.descriptor.parse_descriptor: TOML that does not parse, the JSON
Schema's errors put in the descriptor's words (key path, line, what is allowed), and the
few rules JSON Schema cannot express.

Those rules: a cron expression in info.scheduling, metric patterns that compile as Python
regexes with at most one group, unique metric names, alerts that name a metric, the [server]
an inference benchmark needs, pip requirement strings, sources the fetcher can fetch and
verify, the size of the [ranges] cross product and the `{name}` placeholders that ranges
fill; and no inf or nan anywhere.
"""

from __future__ import annotations

import copy
import functools
import importlib.resources
import json
import math
import re
import tomllib
from collections.abc import Iterator
from typing import Any

import jsonschema
from croniter import croniter
from packaging.requirements import InvalidRequirement, Requirement
from pydantic import BaseModel, ConfigDict, ValidationError

from core.errors import WeighbridgeError
from core.fetcher import SourceSpec
from core.tomlpositions import KeyPath, format_path, key_lines, line_of

MAX_RANGE_CHILDREN = 256
# `{name}` fills in a range's value; `${NAME}` (the shell's) and `{{...}}` are left alone.
PLACEHOLDER = re.compile(r"(?<![$\{])\{([A-Za-z_][A-Za-z0-9_]*)\}(?!\})")
TOML_POSITION = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")

Found = tuple[KeyPath, str, str]


# Problems.


class Problem(BaseModel):
    """One thing wrong with a descriptor: where (key path and line) and what is allowed."""

    model_config = ConfigDict(frozen=True)

    path: str
    line: int | None = None
    column: int | None = None
    message: str
    hint: str = ""

    def __str__(self) -> str:
        where = f"line {self.line}" if self.line else "top level"
        if self.column:
            where += f", column {self.column}"
        head = f"{where}: {self.path}: " if self.path else f"{where}: "
        return head + self.message + (f" ({self.hint})" if self.hint else "")


class DescriptorError(WeighbridgeError):
    """A descriptor that cannot be used, with every problem found in it."""

    status = 422
    code = "invalid_descriptor"

    def __init__(self, filename: str, problems: list[Problem]) -> None:
        self.filename = filename
        self.problems = problems
        count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
        lines = "\n".join(f"  {p}" for p in problems)
        super().__init__(
            f"{filename} is not a valid benchmark descriptor ({count}):\n{lines}",
            field=problems[0].path if problems else None,
            extra={"file": filename, "problems": [p.model_dump() for p in problems]},
        )


# The schema.


@functools.cache
def _schema_bytes() -> bytes:
    return importlib.resources.files("core").joinpath("schemas/descriptor.json").read_bytes()


def descriptor_schema_bytes() -> bytes:
    """The JSON Schema document as shipped, for serving unchanged."""
    return _schema_bytes()


def descriptor_schema() -> dict[str, Any]:
    """The JSON Schema document (a copy the caller may change)."""
    return copy.deepcopy(_validator().schema)


@functools.cache
def _validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(_schema_bytes())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def read_toml(source: bytes | str, *, filename: str) -> tuple[dict[str, Any], str]:
    """The document and its text; DescriptorError for bytes that are not UTF-8 or text that
    is not TOML, with the line (and column) where reading stopped."""
    text = _decode(source, filename)
    try:
        return tomllib.loads(text), text
    except tomllib.TOMLDecodeError as exc:
        raise DescriptorError(filename, [_syntax_problem(exc)]) from None


def check_document(data: dict[str, Any], *, text: str = "") -> list[Problem]:
    """Every problem of a parsed document, in line order (`text`, when given, supplies the
    lines)."""
    lines = key_lines(text) if text else {}
    problems = [p for e in _validator().iter_errors(data) for p in _schema_problem(e, lines)]
    problems += [located(p, lines) for p in _semantic_problems(data)]
    return sorted(problems, key=lambda p: (p.line or 0, p.path))


def _decode(source: bytes | str, filename: str) -> str:
    if isinstance(source, str):
        return source
    try:
        return source.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = source.count(b"\n", 0, exc.start) + 1
        raise DescriptorError(
            filename,
            [
                Problem(
                    path="",
                    line=line,
                    message=f"byte {exc.start} is not UTF-8 text",
                    hint="save the descriptor as UTF-8",
                )
            ],
        ) from None


_SYNTAX_HINTS = {
    "Invalid value": 'strings need quotes (name = "value"), booleans are true or false, '
    "arrays are [a, b]",
    "Invalid statement": "each line is a key = value pair, a [table] header or a comment",
    "Expected '=' after a key": "each line is key = value",
    "Cannot overwrite a value": "each key may be set once; for several tables of the same "
    "name use [[name]]",
    "Cannot declare": "each [table] may be declared once; for several use [[name]]",
    "Unterminated string": "close the string with the quote that opened it",
    "Unclosed array": "close the array with ]",
}


def _syntax_problem(exc: tomllib.TOMLDecodeError) -> Problem:
    message = str(exc)
    line = column = None
    found = TOML_POSITION.search(message)
    if found:
        line, column = int(found.group(1)), int(found.group(2))
        message = message[: found.start()]
    hint = next(
        (h for start, h in _SYNTAX_HINTS.items() if message.startswith(start)),
        "see https://toml.io/en/v1.0.0 for TOML's syntax",
    )
    return Problem(
        path="", line=line, column=column, message=f"not valid TOML: {message}", hint=hint
    )


def located(found: Found, lines: dict[KeyPath, int]) -> Problem:
    """A (key path, message, hint) found in the document, placed on its line."""
    path, message, hint = found
    return Problem(path=format_path(path), line=line_of(lines, path), message=message, hint=hint)


# JSON Schema errors in the descriptor's words.

_TOML_TYPES = {
    "object": "a table",
    "array": "an array",
    "string": 'a string (in quotes: "...")',
    "integer": "an integer",
    "number": "a number",
    "boolean": "true or false",
}


def _toml_type(value: Any) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a float", str: "a string"}
    names |= {dict: "a table", list: "an array"}
    return names.get(type(value), "a date or time")


def _resolve(schema: dict[str, Any]) -> dict[str, Any]:
    """A property's schema with its local `$ref` followed (the property's own keywords,
    such as a more specific description, win)."""
    ref = schema.get("$ref")
    if not ref:
        return schema
    target: Any = _validator().schema
    for part in ref.removeprefix("#/").split("/"):
        target = target[part]
    return {**_resolve(target), **{k: v for k, v in schema.items() if k != "$ref"}}


def _table_name(path: KeyPath) -> str:
    return f"[{format_path(path)}]" if path else "the top level"


def _schema_problem(error: jsonschema.ValidationError, lines: dict[KeyPath, int]) -> list[Problem]:
    path: KeyPath = tuple(error.absolute_path)
    schema = error.schema if isinstance(error.schema, dict) else {}
    hint = schema.get("description", "")
    kind = error.validator
    found: list[tuple[KeyPath, str, str]]
    if kind == "required":
        found = [
            _missing(path, name, schema)
            for name in error.validator_value
            if isinstance(error.instance, dict) and name not in error.instance
        ]
    elif kind == "additionalProperties":
        known = list(schema.get("properties", {}))
        found = [
            (
                (*path, key),
                f"unknown key {key!r}",
                f"allowed in {_table_name(path)}: {', '.join(known)}",
            )
            for key in error.instance
            if key not in known
        ]
    elif "propertyNames" in error.schema_path:
        # A key's name failed: the error is the name's, reported at the key.
        found = [((*path, error.instance), f"{error.instance!r} is not an allowed name", hint)]
    elif kind == "type":
        expected = error.validator_value
        wanted = [expected] if isinstance(expected, str) else list(expected)
        words = " or ".join(_TOML_TYPES.get(w, w) for w in wanted)
        found = [(path, f"is {_toml_type(error.instance)}, expected {words}", hint)]
    elif kind == "enum":
        allowed = ", ".join(json.dumps(v) for v in error.validator_value)
        found = [(path, f"{error.instance!r} is not allowed: use one of {allowed}", hint)]
    elif kind == "pattern":
        found = [(path, f"{error.instance!r} is not of the allowed form", hint)]
    elif kind == "minLength" and error.validator_value == 1:
        found = [(path, "must not be empty", hint)]
    elif kind == "maxProperties":
        count = len(error.instance)
        found = [(path, f"has {count} keys; at most {error.validator_value} are allowed", hint)]
    elif kind == "not":
        key = _dependent_key(error)
        found = [((*path, key) if key else path, hint or error.message, "")]
    else:
        found = [(path, error.message, hint)]
    return [located(f, lines) for f in found]


def _missing(path: KeyPath, name: str, schema: dict[str, Any]) -> tuple[KeyPath, str, str]:
    target = _resolve(schema.get("properties", {}).get(name, {}))
    where = f" in {_table_name(path)}" if path else ""
    if target.get("type") == "object":
        message = f"the [{format_path((*path, name))}] table is missing"
    else:
        message = f"required key {name!r} is missing{where}"
    return (*path, name), message, target.get("description", "")


def _dependent_key(error: jsonschema.ValidationError) -> str | None:
    parts = list(error.relative_schema_path)
    if "dependentSchemas" in parts:
        at = parts.index("dependentSchemas") + 1
        return str(parts[at]) if at < len(parts) else None
    return None


# What JSON Schema cannot say.


def _semantic_problems(data: dict[str, Any]) -> Iterator[Found]:
    yield from _non_finite_problems(data, ())
    yield from _scheduling_problems(data)
    yield from _metric_problems(data)
    yield from _server_problems(data)
    yield from _package_problems(data)
    yield from _source_problems(data)
    yield from _range_problems(data)


def _table(data: Any, *keys: str) -> dict[str, Any]:
    """A nested table, or {} where the document has something else (the schema says so)."""
    for key in keys:
        data = data.get(key) if isinstance(data, dict) else None
    return data if isinstance(data, dict) else {}


def _entries(data: Any, *keys: str) -> list[tuple[int, dict[str, Any]]]:
    *parents, last = keys
    items = _table(data, *parents).get(last)
    if not isinstance(items, list):
        return []
    return [(i, item) for i, item in enumerate(items) if isinstance(item, dict)]


def _non_finite_problems(value: Any, at: KeyPath) -> Iterator[Found]:
    """TOML's inf and nan: no setting of a benchmark means them, and NaN slips past every
    bound the schema sets (it compares false with everything)."""
    if isinstance(value, float) and not math.isfinite(value):
        yield at, f"{value} is not a finite number", "write a number such as 2.5"
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _non_finite_problems(item, (*at, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _non_finite_problems(item, (*at, i))


def _scheduling_problems(data: dict[str, Any]) -> Iterator[Found]:
    scheduling = _table(data, "info").get("scheduling")
    if not isinstance(scheduling, str) or scheduling == "single_run":
        return
    if len(scheduling.split()) != 5 or not croniter.is_valid(scheduling):
        yield (
            ("info", "scheduling"),
            f"{scheduling!r} is not a 5-field cron expression",
            '"single_run", or minute hour day-of-month month day-of-week such as '
            '"0 3 * * *" (every day at 03:00) or "*/30 * * * 1-5"',
        )


def _metric_problems(data: dict[str, Any]) -> Iterator[Found]:
    for prefix in (("output",), ("server", "output")):
        seen: dict[str, int] = {}
        for i, metric in _entries(data, *prefix, "metrics"):
            at = (*prefix, "metrics", i)
            yield from _pattern_problems(metric.get("pattern"), (*at, "pattern"))
            name = metric.get("name")
            if isinstance(name, str):
                if name in seen:
                    yield (
                        (*at, "name"),
                        f"metric {name!r} is already defined by "
                        f"{format_path((*prefix, 'metrics', seen[name]))}",
                        "give each metric its own name",
                    )
                seen.setdefault(name, i)
        if prefix == ("output",):
            for i, alert in _entries(data, "output", "alerts"):
                named = alert.get("metric")
                if isinstance(named, str) and named not in seen:
                    names = ", ".join(seen) or "none: add an [[output.metrics]] entry"
                    yield (
                        ("output", "alerts", i, "metric"),
                        f"alert names metric {named!r}, which no [[output.metrics]] defines",
                        f"metrics defined: {names}",
                    )


def _pattern_problems(pattern: Any, at: KeyPath) -> Iterator[Found]:
    if not isinstance(pattern, str):
        return
    try:
        groups = re.compile(pattern).groups
    except re.error as exc:
        yield (
            at,
            f"not a Python regular expression: {exc}",
            "write it in single quotes so backslashes stay as written, e.g. 'elapsed: (\\d+)'",
        )
        return
    if groups > 1:
        yield (
            at,
            f"has {groups} capturing groups; at most one (the number) is allowed",
            "make the other groups non-capturing: (?:...)",
        )


def _server_problems(data: dict[str, Any]) -> Iterator[Found]:
    if _table(data, "hardware").get("strategy") != "inference":
        return
    if "server" not in data:
        yield (
            ("hardware", "strategy"),
            'strategy = "inference" needs a [server] table, the server its client talks to',
            "add [server.hardware] instance_type, [server.env] docker_image, ports, "
            "start_command and [server.env.readiness_probe] path",
        )
        return
    env = _table(data, "server", "env")
    if env and "readiness_probe" not in env:
        yield (
            ("server", "env", "readiness_probe"),
            'strategy = "inference" needs a readiness probe for its server',
            'add [server.env.readiness_probe] with path = "/ping" (the path that answers '
            "once the server is ready)",
        )


def _source_problems(data: dict[str, Any]) -> Iterator[Found]:
    """What the fetcher would refuse (a scheme it cannot fetch, an md5 `ALGORITHM:HEX` of an
    algorithm or length it does not know, two sums that disagree), refused now: its
    SourceSpec is the one place these rules live."""
    properties = _validator().schema["$defs"]["source"]["properties"]
    for prefix in (("data", "sources"), ("server", "models")):
        for i, source in _entries(data, *prefix):
            if not isinstance(source.get("src"), str):
                continue
            # Only sums of the schema's form: the schema has already reported the others.
            sums = {
                key: source[key]
                for key in ("md5", "sha256")
                if isinstance(source.get(key), str)
                and re.search(properties[key]["pattern"], source[key])
            }
            try:
                SourceSpec(src=source["src"], **sums)
            except ValidationError as exc:
                for error in exc.errors():
                    key = str(error["loc"][0]) if error["loc"] else None
                    at = (*prefix, i, key) if key else (*prefix, i)
                    message = str(error["msg"]).removeprefix("Value error, ")
                    hint = properties.get(key, {}).get("description", "") if key else ""
                    yield at, message, hint


def _package_problems(data: dict[str, Any]) -> Iterator[Found]:
    packages = _table(data, "environment").get("python_packages")
    if not isinstance(packages, list):
        return
    for i, package in enumerate(packages):
        if not isinstance(package, str) or package.startswith("-"):
            continue  # the schema reports these
        try:
            Requirement(package)
        except InvalidRequirement as exc:
            yield (
                ("environment", "python_packages", i),
                f"{package!r} is not a pip requirement: {str(exc).splitlines()[0]}",
                'write it as pip would take it, e.g. "numpy>=1.26" or "torch==2.3.1"',
            )


def _range_problems(data: dict[str, Any]) -> Iterator[Found]:
    ranges = {k: v for k, v in _table(data, "ranges").items() if isinstance(v, list)}
    if not ranges:
        return
    children = math.prod(len(values) for values in ranges.values())
    if children > MAX_RANGE_CHILDREN:
        sizes = " x ".join(f"{len(v)} ({k})" for k, v in ranges.items())
        yield (
            ("ranges",),
            f"the ranges expand to {sizes} = {children} runs; at most "
            f"{MAX_RANGE_CHILDREN} are allowed",
            "shorten a list, or split the benchmark into several descriptors",
        )
    # Only a descriptor with ranges has placeholders: an Anubis descriptor's braces stay as
    # written.
    for at, value in _placeholder_fields(data):
        for name in PLACEHOLDER.findall(value):
            if name not in ranges:
                yield (
                    at,
                    f"placeholder {{{name}}} names no range",
                    f"ranges defined: {', '.join(ranges)}; write ${{{name}}} for an "
                    "environment variable",
                )


def _placeholder_fields(data: dict[str, Any]) -> Iterator[tuple[KeyPath, str]]:
    """The strings a range's values are put into: ml.benchmark_code, ml.args, env.vars."""
    ml = _table(data, "ml")
    for key in ("benchmark_code", "args"):
        if isinstance(ml.get(key), str):
            yield ("ml", key), ml[key]
    for name, value in _table(data, "env", "vars").items():
        if isinstance(value, str):
            yield ("env", "vars", name), value
