"""Reading sweep files: YAML as users mean it, and nothing a hostile file could do.

The loader (`read_yaml`, `load_yaml_text`) is PyYAML's pure-Python `SafeLoader` subclassed,
because PyYAML is already a dependency and its stages can be hooked one by one (no other YAML
library is installed; ruamel.yaml would bring YAML 1.2 but still no expansion budget):
  - input: bytes, at most `MAX_BYTES`; UTF-8 only (a UTF-16/32 byte-order mark, a NUL byte or
    an invalid UTF-8 sequence is refused with a message, not a traceback);
  - resolvers: the YAML 1.2 core schema instead of PyYAML's YAML 1.1 ones, so `45:00` and
    `1:30:00` stay strings (not base-60 integers), only true/false are booleans (`no`, `off`,
    `on`, `yes`, `y`, `n` are strings, also as keys), `3e-4` is a float, `010` is 10, dates
    stay strings;
  - constructors: only null, bool, int, float, str, list and mapping (and `<<` merge keys);
    any other tag (`!!python/...`, `!!binary`, `!!set`, ...) is refused;
  - composition: nesting deeper than `MAX_DEPTH` is refused while composing, before Python's
    recursion limit is near;
  - before anything is constructed, one pass over the composed node graph with memoised
    subtree sizes (linear in the file, however the aliases multiply) refuses documents that
    would expand to more than `MAX_NODES` values or deeper than `MAX_DEPTH` through aliases
    (an anchor bomb is refused in milliseconds and nothing is expanded), recursive aliases,
    non-scalar keys, and duplicate keys (naming the key path and both lines; PyYAML would
    silently keep the last value).
Every problem is an `s2l.config.ConfigError` (CLI exit 2).
"""
from __future__ import annotations

import codecs
import re
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, ScalarNode, SequenceNode

from s2l.config import ConfigError, key_path

MAX_BYTES = 256 << 10  # a sweep file is a few kB; pure-Python PyYAML reads 256 KiB in 1-3 s
MAX_NODES = 100_000  # values after alias expansion: 100x a large grid's sweep file
MAX_DEPTH = 50  # nesting levels; sweep files use 4

_BOMS = ((codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"),
         (codecs.BOM_UTF16_LE, "UTF-16"), (codecs.BOM_UTF16_BE, "UTF-16"))

_BOOL = {"true": True, "True": True, "TRUE": True, "false": False, "False": False, "FALSE": False}
_NULL = ("", "~", "null", "Null", "NULL")
_INT_RE = re.compile(r"[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+")
_FLOAT_RE = re.compile(r"[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
                       r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN)")
_MERGE = "tag:yaml.org,2002:merge"


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 core-schema resolvers, core-only constructors and a depth cap
    while composing (see the module docstring)."""

    yaml_implicit_resolvers: dict = {}  # own dict: add_implicit_resolver fills it below
    yaml_constructors: dict = {}

    def __init__(self, text: str, source: str):
        super().__init__(text)
        self.name = source  # marks (line, column) in messages name the file
        self.source = source
        self._depth = 0

    def compose_node(self, parent, index):
        # the composer recurses once per level: refuse deep nesting long before RecursionError
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise ConfigError("", f"{self.source}: line {mark.line + 1}: nested deeper than "
                                      f"{MAX_DEPTH} levels")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def _scalar(self, node) -> str:
        return self.construct_scalar(node)

    def construct_core_null(self, node):
        if self._scalar(node) not in _NULL:
            raise yaml.constructor.ConstructorError(None, None, "not a null", node.start_mark)
        return None

    def construct_core_bool(self, node):
        value = self._scalar(node)
        if value not in _BOOL:
            raise yaml.constructor.ConstructorError(
                None, None, f"{value[:40]!r} is not a boolean (only true/false are)",
                node.start_mark)
        return _BOOL[value]

    def construct_core_int(self, node):
        value = self._scalar(node)
        if not _INT_RE.fullmatch(value):
            raise yaml.constructor.ConstructorError(None, None, f"{value[:40]!r} is not an integer",
                                                    node.start_mark)
        try:
            if value.startswith(("0o", "0x")):
                return int(value[2:], 8 if value[1] == "o" else 16)
            return int(value)
        except ValueError:  # more digits than Python converts (sys.get_int_max_str_digits)
            raise yaml.constructor.ConstructorError(None, None, f"integer of {len(value)} digits",
                                                    node.start_mark) from None

    def construct_core_float(self, node):
        value = self._scalar(node)
        if _INT_RE.fullmatch(value) and not value.startswith(("0o", "0x")):
            return float(int(value))  # !!float 3
        if not _FLOAT_RE.fullmatch(value):
            raise yaml.constructor.ConstructorError(None, None, f"{value[:40]!r} is not a number",
                                                    node.start_mark)
        return float(value.lower().replace(".inf", "inf").replace(".nan", "nan"))

    def check_graph(self, root) -> None:
        """Refuse, before constructing anything, what the composed graph would expand to."""
        sizes: dict[int, tuple[int, int]] = {}  # id(node) -> (expanded values, height)
        open_nodes: set[int] = set()

        def visit(node, path: str, depth: int) -> tuple[int, int]:
            if depth > MAX_DEPTH:
                raise ConfigError(path, f"nested deeper than {MAX_DEPTH} levels (through aliases)")
            if id(node) in sizes:  # an alias to a node already checked: reuse its numbers
                n, height = sizes[id(node)]
                if depth + height > MAX_DEPTH:
                    raise ConfigError(path, f"nested deeper than {MAX_DEPTH} levels (through aliases)")
                return n, height
            if id(node) in open_nodes:
                raise ConfigError(path, "an alias refers to a node that contains it (a recursive "
                                        "structure)")
            open_nodes.add(id(node))
            n, height = 1, 0
            children: list[tuple[Any, str]] = []
            if isinstance(node, SequenceNode):
                children = [(child, key_path(path, i)) for i, child in enumerate(node.value)]
            elif isinstance(node, MappingNode):
                seen: dict[Any, int] = {}
                for key, value in node.value:
                    if key.tag == _MERGE:  # `<<: *base`: the merged mapping's keys count here
                        children.append((value, path))
                        continue
                    if not isinstance(key, ScalarNode):
                        raise ConfigError(path, f"line {key.start_mark.line + 1}: a key must be a "
                                                "plain value, not a list or mapping")
                    name = self.construct_object(key)
                    where = key_path(path, name)
                    line = key.start_mark.line + 1
                    if name in seen:
                        raise ConfigError(where, f"duplicate key (lines {seen[name]} and {line}); "
                                                 "YAML would silently keep only the last one")
                    seen[name] = line
                    n += 1
                    children.append((value, where))
            for child, where in children:
                cn, ch = visit(child, where, depth + 1)
                n, height = n + cn, max(height, ch + 1)
                if n > MAX_NODES:
                    raise ConfigError(path, f"holds more than {MAX_NODES} values once anchors "
                                            "and aliases are expanded; a sweep file needs far fewer")
            open_nodes.discard(id(node))
            sizes[id(node)] = (n, height)
            return n, height

        visit(root, "", 0)


for _tag, _regex, _first in (
        ("bool", "true|True|TRUE|false|False|FALSE", "tTfF"),
        ("null", "~|null|Null|NULL|", ["~", "n", "N", ""]),
        ("int", _INT_RE.pattern, "-+0123456789"),  # before float: "1" is an int
        ("float", _FLOAT_RE.pattern, "-+0123456789."),
        ("merge", "<<", "<")):
    _Loader.add_implicit_resolver(f"tag:yaml.org,2002:{_tag}", re.compile(rf"^(?:{_regex})\Z"),
                                  list(_first))
for _tag, _fn in (("null", _Loader.construct_core_null), ("bool", _Loader.construct_core_bool),
                  ("int", _Loader.construct_core_int), ("float", _Loader.construct_core_float),
                  ("str", yaml.SafeLoader.construct_yaml_str),
                  ("seq", yaml.SafeLoader.construct_yaml_seq),
                  ("map", yaml.SafeLoader.construct_yaml_map)):
    _Loader.add_constructor(f"tag:yaml.org,2002:{_tag}", _fn)
_Loader.add_constructor(None, yaml.SafeLoader.construct_undefined)  # any other tag: refused


def load_yaml_text(text: str, source: str = "<string>") -> Any:
    """Parse one YAML document (see the module docstring for what is refused).

    Raises ConfigError; `source` names the input in messages."""
    if "\x00" in text:
        raise ConfigError("", f"{source} is binary (it holds NUL bytes), not YAML text")
    loader = _Loader(text.removeprefix("\ufeff"), source)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        loader.check_graph(node)
        return loader.construct_document(node)
    except yaml.YAMLError as e:
        raise ConfigError("", f"{source} is not valid YAML: {e}") from None
    finally:
        loader.dispose()


def read_yaml(path: str | Path) -> dict:
    """The mapping at the top of the YAML file `path`, read with `load_yaml_text`'s rules."""
    path = Path(path)
    if not path.exists():
        raise ConfigError("", f"sweep file {str(path)!r} does not exist")
    if not path.is_file():
        raise ConfigError("", f"sweep file {str(path)!r} is not a regular file")
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_BYTES + 1)
    except OSError as e:
        raise ConfigError("", f"cannot read sweep file {str(path)!r}: {e.strerror}") from None
    if len(data) > MAX_BYTES:
        raise ConfigError("", f"{path} is larger than {MAX_BYTES // 1024} KiB; a sweep file "
                              "needs a few kB")
    for bom, name in _BOMS:
        if data.startswith(bom):
            raise ConfigError("", f"{path} is {name} text (byte-order mark); save it as UTF-8")
    if b"\x00" in data:  # also UTF-16/32 without a byte-order mark
        raise ConfigError("", f"{path} is binary (it holds NUL bytes), not YAML text")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError("", f"{path} is not UTF-8 text (byte {e.start}: "
                              f"{data[e.start:e.start + 4]!r})") from None
    doc = load_yaml_text(text, str(path))
    if not isinstance(doc, dict):
        raise ConfigError("", f"{path} must hold a mapping at top level, got {type(doc).__name__}")
    return doc
