"""README.md stays complete: every config key, the quick start, every exported metric.

The YAML keys are derived from the frozen config model (gateway/config.py), with a small
table for the places where a YAML key is not a field name; a second test feeds every
derived key to the parser, so that table cannot drift from what the parser accepts.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
import types
import typing
from collections.abc import Mapping

import yaml
from prometheus_client import CollectorRegistry

from gateway.config import (
    ConfigError,
    GatewayConfig,
    LimitConfig,
    PolicyConfig,
    RouteConfig,
    UpstreamConfig,
    parse_config,
)
from gateway.metrics import Metrics
from tests.support.gateway import ROOT

README = ROOT / "README.md"
MAKEFILE = ROOT / "Makefile"

NAME = "<name>"  # a level keyed by the user's names: upstreams.<name>, rate_limits.<name>
ITEM = "[]"  # a list of mappings: routes[], limits[]
KeyPath = tuple[str, ...]

# Model fields whose YAML key differs: (model, field) -> the YAML key, or None when the field
# is not a key of its own.
YAML_KEY: dict[tuple[type, str], str | None] = {
    (GatewayConfig, "source"): None,  # the file the config came from
    (UpstreamConfig, "name"): None,  # the key under `upstreams:`
    (PolicyConfig, "name"): None,  # the key under `rate_limits:`
    (PolicyConfig, "header"): None,  # part of `key: header:<Name>`
    (RouteConfig, "errors_format"): "errors.format",
    (LimitConfig, "tokens"): "refill",  # `refill: 10/s` is `tokens` per `period`
    (LimitConfig, "period"): "refill",
}
# Fields read from a scalar (or a list of scalars) though their type is a model.
SCALAR_FIELDS = {(UpstreamConfig, "targets")}  # a list of URLs, each split into a TargetConfig


def _model(tp: object) -> tuple[type | None, tuple[str, ...]]:
    """The dataclass inside ``tp`` (``X | None``, ``tuple[X, ...]``, ``Mapping[str, X]``) and
    the levels between it and its key."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        models = [_model(a) for a in args if a is not type(None)]
        return models[0] if len(models) == 1 else (None, ())
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        inner, levels = _model(args[0])
        return inner, (ITEM, *levels)
    if origin is Mapping and len(args) == 2:
        inner, levels = _model(args[1])
        return inner, (NAME, *levels)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return tp, ()
    return None, ()


def yaml_keys(model: type, prefix: KeyPath = ()) -> set[KeyPath]:
    """Every leaf key path the YAML may hold under ``model``."""
    hints = typing.get_type_hints(model)
    out: set[KeyPath] = set()
    for f in dataclasses.fields(model):
        key = YAML_KEY.get((model, f.name), f.name)
        if key is None:
            continue
        path = (*prefix, *key.split("."))
        inner, levels = (None, ()) if (model, f.name) in SCALAR_FIELDS else _model(hints[f.name])
        if inner is None:
            out.add(path)
        else:
            out |= yaml_keys(inner, (*path, *levels))
    return out


def reference_key(path: KeyPath) -> str:
    """How the README's section for ``path[0]`` names the key: ``timeouts.connect``."""
    return ".".join(p for p in path[1:] if p not in (NAME, ITEM))


ALL_KEYS = yaml_keys(GatewayConfig)


# --------------------------------------------------------------------------- README parsing


def section(text: str, heading: str, level: int = 2) -> str:
    """The body of the markdown section ``heading`` up to the next heading of its level."""
    marks = "#" * level
    match = re.search(rf"^{marks} {re.escape(heading)}\s*$(.*?)(?=^{marks} |\Z)", text, re.M | re.S)
    assert match, f"README.md has no `{marks} {heading}` section"
    return match.group(1)


def reference_sections(text: str) -> dict[str, str]:
    """The Configuration reference's subsections by top-level key: ``upstreams`` for the
    heading ``### `upstreams.<name>```."""
    body = section(text, "Configuration reference")
    parts = re.split(r"^### (.+)$", body, flags=re.M)
    out: dict[str, str] = {}
    for heading, content in zip(parts[1::2], parts[2::2], strict=True):
        match = re.match(r"`?([a-z_]+)", heading.strip())
        assert match, f"unexpected heading {heading!r}"
        out[match.group(1)] = content
    return out


def documented_keys(content: str) -> set[str]:
    """Keys a reference table documents in its first column: `a.b` / `.c` is a.b and a.c.
    A `{x: ..., y: ...}` example in the row documents that key's x and y."""
    keys: set[str] = set()
    for line in content.splitlines():
        if not line.startswith("|") or re.match(r"^\|[\s|:-]+\|$", line):
            continue
        cells = re.split(r"(?<!\\)\|", line.strip().strip("|"))
        row: list[str] = []
        for span in re.findall(r"`([^`]+)`", cells[0]):
            if span.startswith(".") and row:
                span = row[-1].rsplit(".", 1)[0] + span
            row.append(span)
        if not row:  # the header row names its columns without backticks
            continue
        keys.update(row)
        for cell in cells[1:]:
            for flow in re.findall(r"`\{([^`]*)\}`", cell):
                keys.update(f"{row[0]}.{k}" for k in re.findall(r"([a-z_]+)\s*:", flow))
    return keys


# --------------------------------------------------------------------------- the key set


def test_key_derivation_table_names_real_fields() -> None:
    for model, name in (*YAML_KEY, *SCALAR_FIELDS):
        assert name in {f.name for f in dataclasses.fields(model)}, f"{model.__name__}.{name}"
    assert len(ALL_KEYS) > 40
    assert ("upstreams", NAME, "timeouts", "connect") in ALL_KEYS
    assert ("routes", ITEM, "errors", "format") in ALL_KEYS
    assert ("rate_limits", NAME, "limits", ITEM, "refill") in ALL_KEYS
    assert not any("errors_format" in p or "header" in p or "tokens" in p for p in ALL_KEYS)


def _document(paths: set[KeyPath]) -> dict[str, object]:
    """A config holding every key path (values null: only the keys are under test)."""
    doc: dict[str, object] = {}
    for path in paths:
        node = doc
        for part, after in itertools.pairwise(path):
            if part == ITEM:
                continue
            child = node.setdefault("x" if part == NAME else part, [{}] if after == ITEM else {})
            node = typing.cast(dict[str, object], child[0] if isinstance(child, list) else child)
        node[path[-1]] = None
    return doc


def unknown_key_errors(doc: dict[str, object]) -> list[str]:
    try:
        parse_config(yaml.safe_dump(doc), "doc.yaml")
    except ConfigError as exc:
        return [e for e in exc.errors if "unknown key" in e]
    return []


def test_parser_accepts_every_derived_key() -> None:
    doc = _document(ALL_KEYS)
    assert unknown_key_errors(doc) == []
    # ... and the check above would see a key the parser refuses.
    server = doc["server"]
    assert isinstance(server, dict)
    server["bogus"] = None
    [error] = unknown_key_errors(doc)
    assert error.endswith(": server.bogus: unknown key")


# --------------------------------------------------------------------------- README


def test_readme_reference_documents_every_config_key() -> None:
    sections = reference_sections(README.read_text())
    missing: list[str] = []
    for path in sorted(ALL_KEYS):
        content = sections.get(path[0])
        if content is None:
            missing.append(f"{path[0]} (no `### {path[0]}` subsection)")
        elif reference_key(path) not in documented_keys(content):
            missing.append(f"{path[0]}: `{reference_key(path)}`")
    assert not missing, "README.md's Configuration reference lacks:\n  " + "\n  ".join(missing)


def test_readme_reference_documents_no_unknown_key() -> None:
    """A key renamed or removed in the model must leave the reference too."""
    sections = reference_sections(README.read_text())
    known = {(p[0], reference_key(p)) for p in ALL_KEYS}
    parents = {(section, key.rsplit(".", 1)[0]) for section, key in known if "." in key}
    stale = [
        f"{name}: `{key}`"
        for name, content in sections.items()
        for key in sorted(documented_keys(content))
        if (name, key) not in known | parents
    ]
    assert not stale, "README.md documents keys the config does not have:\n  " + "\n  ".join(stale)


def test_reference_parsing_reads_continued_and_flow_keys() -> None:
    table = (
        "| key | default | meaning |\n| --- | --- | --- |\n"
        "| `key` | `client_ip` | `header:<Name>` |\n"
        "| `timeouts.connect` / `.read` | `2s` | x |\n"
        "| `limits` | required | `{capacity: N, refill: N/s \\| N/h}` |\n"
    )
    assert documented_keys(table) == {
        "key",
        "timeouts.connect",
        "timeouts.read",
        "limits",
        "limits.capacity",
        "limits.refill",
    }


def test_quick_start_is_make_run_and_make_test() -> None:
    quick = section(README.read_text(), "Quick start")
    block = re.search(r"```(?:sh|bash|console)?\n(.*?)```", quick, re.S)
    assert block, "the Quick start has no code block"
    commands = [line.split("#")[0].strip() for line in block.group(1).splitlines()]
    assert [c for c in commands if c] == ["make run", "make test"]
    targets = set(re.findall(r"^([A-Za-z0-9_.-]+)\s*:(?!=)", MAKEFILE.read_text(), re.M))
    assert {"run", "test"} <= targets


def exported_metric_names() -> set[str]:
    """Names as SPEC section 6 writes them (counters with ``_total``)."""
    registry = CollectorRegistry()
    Metrics(registry)
    return {
        family.name + "_total" if family.type == "counter" else family.name
        for family in registry.collect()
    }


def test_readme_lists_every_metric() -> None:
    names = exported_metric_names()
    assert len(names) >= 13
    text = README.read_text()
    missing = sorted(name for name in names if not re.search(rf"`{name}`", text))
    assert not missing, "README.md does not mention the metrics: " + ", ".join(missing)
