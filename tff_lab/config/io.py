"""Loading, overriding and writing experiment configs (YAML <-> typed dataclasses)."""

from __future__ import annotations

import copy
import dataclasses
import datetime
import hashlib
import json
import os
import re
import typing
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping, Optional, Union

import yaml

from tff_lab.config.schema import ExperimentConfig
from tff_lab.errors import ConfigError

_MISSING = object()
_NUMBER = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin is Union:
        return " or ".join(_type_name(a) for a in typing.get_args(tp) if a is not type(None))
    if origin is tuple:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if dataclasses.is_dataclass(tp) or tp is dict:
        return "a mapping"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(tp, str(tp))


def _yaml_hint(value: Any) -> str:
    """Why an unquoted YAML value arrived as this type (YAML 1.1, as PyYAML reads it)."""
    if isinstance(value, (datetime.date, datetime.datetime)):
        return " (YAML reads an unquoted date as a date; quote it)"
    if isinstance(value, bool):
        return " (YAML reads unquoted yes/no/on/off/true/false as a boolean; quote it)"
    if value is None:
        return " (YAML reads ~, null and an empty value as null)"
    return ""


def _coerce(value: Any, tp: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if origin is Union:
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        for alt in inner[:-1]:  # e.g. Union[None, int, Literal["all"]]: the first kind that fits
            try:
                return _coerce(value, alt, path)
            except ConfigError:
                pass
        return _coerce(value, inner[-1], path)
    if origin is Literal:
        choices = typing.get_args(tp)
        if not any(value == c and type(value) is type(c) for c in choices):
            raise ConfigError(
                path, f"unknown value {value!r}; expected one of: {', '.join(map(str, choices))}" + _yaml_hint(value)
            )
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(path, f"expected {_type_name(tp)}, got {value!r}{_yaml_hint(value)}")
        elem = typing.get_args(tp)[0]
        return tuple(_coerce(v, elem, f"{path}[{i}]") for i, v in enumerate(value))
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(path, f"expected a mapping, got {value!r}{_yaml_hint(value)}")
        return _build(tp, value, path)
    if tp is dict:
        if value is None:
            return {}
        if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
            raise ConfigError(path, f"expected a mapping of keyword arguments, got {value!r}")
        return {k: _plain(v, f"{path}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(path, f"expected true or false, got {value!r}{_yaml_hint(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(path, f"expected an integer, got {value!r}{_yaml_hint(value)}")
        return value
    if tp is float:
        if isinstance(value, str):
            # YAML 1.1 (PyYAML) reads `1e-5` (no dot) as a string; accept any plain number.
            try:
                value = float(value) if _NUMBER.match(value.strip()) else value
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(path, f"expected a number, got {value!r}{_yaml_hint(value)}")
        try:
            value = float(value)
        except OverflowError:  # an int beyond float's range
            raise ConfigError(path, f"expected a finite number, got {value!r}") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise ConfigError(path, f"expected a finite number, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            hint = _yaml_hint(value) or " (quote it)"
            raise ConfigError(path, f"expected a string, got {type(value).__name__} {value!r}{hint}")
        return value
    raise TypeError(f"unsupported config type {tp} at {path}")


def _plain(value: Any, path: str) -> Any:
    """Keyword-argument values: YAML's plain data only (numbers, strings, booleans, null, lists,
    mappings with string keys); a date or other tagged value is refused, not passed on."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{path}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, Mapping) and all(isinstance(k, str) for k in value):
        return {k: _plain(v, f"{path}.{k}") for k, v in value.items()}
    raise ConfigError(
        path,
        f"expected plain data (number, string, boolean, list or mapping), got "
        f"{type(value).__name__} {value!r}; quote it",
    )


def _build(cls: type, data: Mapping[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if not isinstance(key, str) or key not in names:
            where = f"{prefix}.{key}" if prefix else str(key)
            raise ConfigError(where, f"unknown key; valid keys here: {', '.join(names)}")
    kwargs = {}
    for name in names:
        if name in data:
            kwargs[name] = _coerce(data[name], hints[name], f"{prefix}.{name}" if prefix else name)
    return cls(**kwargs)


def from_dict(data: Mapping[str, Any], *, validate: bool = True) -> ExperimentConfig:
    """Builds a validated :class:`ExperimentConfig` from plain data (as loaded from YAML)."""
    if not isinstance(data, Mapping):
        raise ConfigError("", f"an experiment must be a mapping of sections, got {type(data).__name__}")
    cfg = _build(ExperimentConfig, data, "")
    if validate:
        cfg.validate()
    return cfg


def to_dict(cfg: ExperimentConfig) -> dict:
    def conv(v):
        if isinstance(v, tuple):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        return v

    return conv(dataclasses.asdict(cfg))


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError("--set", f"expected key.sub=value, got {item!r}")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError("--set", f"expected key.sub=value, got {item!r}")
    try:
        value = _load_limited(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw  # not YAML: the text itself (the schema says whether a string fits)
    except _YAML_FAILURES as e:  # over a limit, a duplicate key: refused, never kept as text
        raise _yaml_error(e, f"--set {key}") from None
    return key.split("."), value


def apply_overrides(data: dict, overrides: Iterable[str]) -> dict:
    """Applies ``key.sub=value`` overrides (values parsed as YAML scalars) to plain data."""
    out = copy.deepcopy(data)  # YAML data may hold dates: refused by the schema, not by a JSON round trip
    for item in overrides:
        parts, value = _parse_override(item)
        node = out
        for i, part in enumerate(parts[:-1]):
            nxt = node.get(part, _MISSING)
            if nxt is _MISSING or nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(".".join(parts[: i + 1]), f"is a value, not a section (in --set {item})")
            node = nxt
        node[parts[-1]] = value
    return out


# Limits of every YAML document tff_lab reads (experiments, sweep grids, --set values): an experiment
# is a few KiB; these bounds refuse what only an attack or an accident produces (an alias "billion
# laughs" bomb, 100,000 nested brackets, a multi-GiB file) before it costs memory or a RecursionError.
MAX_YAML_BYTES = 1 << 20  # 1 MiB
MAX_YAML_DEPTH = 64  # nesting of sequences/mappings, aliases expanded
MAX_YAML_NODES = 100_000  # nodes of the document with every alias expanded
MAX_YAML_ALIASES = 1_000
MAX_YAML_INT_BITS = 1024


class YamlLimitError(Exception):
    """A YAML document over one of the limits (the message says which)."""


class _DuplicateKey(Exception):
    pass


class _LimitedLoader(yaml.SafeLoader):
    """A SafeLoader (plain data, never Python objects) that refuses duplicate keys (PyYAML keeps the
    last of two equal keys silently), nesting deeper than MAX_YAML_DEPTH while composing (before
    PyYAML's own recursion can fail), more than MAX_YAML_ALIASES aliases, and documents whose
    alias-expanded tree exceeds MAX_YAML_NODES nodes or MAX_YAML_DEPTH levels, or is recursive
    (checked on the node graph, before anything is constructed)."""

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0
        self._aliases = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_YAML_ALIASES:
                m = self.peek_event().start_mark
                raise YamlLimitError(
                    f"more than {MAX_YAML_ALIASES} aliases (*name) (line {m.line + 1}); expand them in the file"
                )
            return super().compose_node(parent, index)
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                m = self.peek_event().start_mark
                raise YamlLimitError(
                    f"nested deeper than {MAX_YAML_DEPTH} levels (line {m.line + 1}, column {m.column + 1})"
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_yaml_int(self, node):
        value = super().construct_yaml_int(node)
        if abs(value).bit_length() > MAX_YAML_INT_BITS:  # e.g. 0xfff... of 5000 digits: printing it fails
            m = node.start_mark
            raise YamlLimitError(
                f"an integer of more than {MAX_YAML_INT_BITS} bits (line {m.line + 1}); no field takes one"
            )
        return value

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:  # an unhashable key (a list): let PyYAML refuse it
                continue
            if duplicate:
                m = key_node.start_mark
                raise _DuplicateKey(f"duplicate key {key!r} (line {m.line + 1}, column {m.column + 1})")
        return super().construct_mapping(node, deep=deep)


_LimitedLoader.add_constructor("tag:yaml.org,2002:int", _LimitedLoader.construct_yaml_int)


def _check_node_graph(root) -> None:
    """Size and depth of the document with aliases expanded, on the composed node graph (shared
    nodes are visited once: linear time however many times an alias repeats them)."""
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    on_path: set[int] = set()
    stack = [(root, False)]
    while stack:
        node, done = stack.pop()
        nid = id(node)
        if isinstance(node, yaml.ScalarNode):
            size[nid], depth[nid] = 1, 0
            continue
        children = [c for pair in node.value for c in pair] if isinstance(node, yaml.MappingNode) else list(node.value)
        if done:
            on_path.discard(nid)
            size[nid] = 1 + sum(size[id(c)] for c in children)
            depth[nid] = 1 + max((depth[id(c)] for c in children), default=0)
            if size[nid] > MAX_YAML_NODES:
                m = node.start_mark
                raise YamlLimitError(
                    f"expands to more than {MAX_YAML_NODES:,} values (aliases expanded; line "
                    f"{m.line + 1}); an experiment is far smaller"
                )
            if depth[nid] > MAX_YAML_DEPTH:
                m = node.start_mark
                raise YamlLimitError(
                    f"nested deeper than {MAX_YAML_DEPTH} levels with aliases expanded (line {m.line + 1})"
                )
            continue
        if nid in size:
            continue
        if nid in on_path:
            m = node.start_mark
            raise YamlLimitError(f"a recursive alias (an anchor used inside itself, line {m.line + 1})")
        on_path.add(nid)
        stack.append((node, True))
        for c in children:
            cid = id(c)
            if cid in on_path:
                m = c.start_mark
                raise YamlLimitError(f"a recursive alias (an anchor used inside itself, line {m.line + 1})")
            if cid not in size:
                stack.append((c, False))


def _load_limited(text: str) -> Any:
    if len(text) > MAX_YAML_BYTES or len(text.encode("utf-8", "surrogatepass")) > MAX_YAML_BYTES:
        raise YamlLimitError(f"YAML larger than {MAX_YAML_BYTES // 1024} KiB; an experiment is far smaller")
    loader = _LimitedLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_node_graph(node)
        return loader.construct_document(node)
    except RecursionError:
        raise YamlLimitError(f"nested too deeply (at most {MAX_YAML_DEPTH} levels)") from None
    finally:
        loader.dispose()


def _yaml_error(e: BaseException, where: str) -> ConfigError:
    if isinstance(e, (_DuplicateKey, YamlLimitError)):
        return ConfigError(where, str(e))
    if isinstance(e, yaml.YAMLError):
        mark = getattr(e, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(e, "problem", None) or "invalid YAML"
        return ConfigError(where, f"malformed YAML{at}: {problem}")
    # e.g. ValueError of an integer of more than 4300 digits
    return ConfigError(where, f"malformed YAML value: {' '.join(str(e).split())[:200]}")


_YAML_FAILURES = (_DuplicateKey, YamlLimitError, yaml.YAMLError, ValueError, OverflowError, TypeError)


def parse_yaml(text: str, where: str) -> Any:
    """Plain data from YAML text, within the limits above; every failure a ConfigError naming
    ``where`` (and the line). The one YAML parser of tff_lab (files, sweep grids, --set values)."""
    try:
        return _load_limited(text)
    except _YAML_FAILURES as e:
        raise _yaml_error(e, where) from None


def read_yaml(path: Union[str, os.PathLike]) -> dict:
    """A YAML file of sections (an experiment, a sweep grid) as plain data: a regular file (not a
    directory, FIFO or device), at most MAX_YAML_BYTES, UTF-8, parsed by :func:`parse_yaml`."""
    from tff_lab.inputs import read_text_file

    p = Path(path)
    text = read_text_file(p, str(p), MAX_YAML_BYTES, what="YAML file", error=ConfigError)
    data = parse_yaml(text, str(p))
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(str(p), f"expected a mapping of sections at the top level, got {type(data).__name__}")
    return data


def load_config(path: Optional[Union[str, os.PathLike]] = None, overrides: Iterable[str] = ()) -> ExperimentConfig:
    """Loads an experiment YAML (or the defaults when ``path`` is None) and applies overrides."""
    data = read_yaml(path) if path is not None else {}
    data = apply_overrides(data, overrides)
    try:
        return from_dict(data)
    except ConfigError as e:
        if path is not None and e.where:
            raise ConfigError(f"{path}: {e.where}", e.message) from None
        raise


def dump_yaml(cfg: ExperimentConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def config_hash(cfg: ExperimentConfig) -> str:
    """A stable hash of everything that determines the experiment's results."""
    blob = json.dumps(to_dict(cfg), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
