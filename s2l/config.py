"""Reading sweep files: a hardened YAML loader, typed config blocks, errors naming the key path.

Any problem with a sweep file is a `ConfigError` naming the dotted key path of the offending
value, e.g. `mixtures.code-heavy.weights.code: must be >= 0, got -1`; the CLI turns it into
exit code 2 before anything is created or submitted.

Sweep files are read by `s2l.yamlfile` (a hardened YAML loader).

Config blocks are typed: `ConfigModel` (a pydantic model) or a frozen dataclass validated by
pydantic (`config_dataclass`, for blocks that other code handles as dataclasses: `asdict`,
`replace`), both strict (no "5" for 5, no true for 1; an integer is fine where a number is
asked), finite numbers only, unknown keys refused, and read with `parse_model`, which turns
pydantic's error location into the dotted key path. `Section` is the older field-by-field
reader, kept for the blocks whose fields depend on each other (data sources, test sets,
`slurm:`); it applies the same rules (finite numbers, 64-bit integers, printable strings).

The blocks shared by all kinds live here: `train`, `tracking`. The LM-specific blocks are in
`s2l.lm.config`, the data blocks in `s2l.data.config`; the `slurm:` block belongs to
`hpc/resources.py`: the library knows no scheduler.
"""
from __future__ import annotations

import math
import re
import urllib.parse
from pathlib import Path
from typing import Annotated, Any, Callable, Literal

import pydantic

_MISSING = object()

MAX_SHOWN = 100  # characters of a user's value quoted in an error message
MAX_PATH_SHOWN = 160  # characters of a key path in an error message
MAX_MESSAGE = 1000  # characters of an error message
MAX_TEXT = 4096  # characters of a string value (paths included)
INT64_MAX = 2 ** 63 - 1  # seeds and counts land in int64 arrays and Slurm's integers


class ConfigError(ValueError):
    """Invalid sweep file. `path` is the dotted key path of the offending value."""

    def __init__(self, path: str, message: str):
        self.path = path
        self.message = message
        # a user's 100 kB key must not become a 100 kB error line, nor a newline in it a
        # fake second line
        where = _cut(path.encode("unicode_escape").decode("ascii"), MAX_PATH_SHOWN)
        text = _cut(message, MAX_MESSAGE)
        super().__init__(f"{where}: {text}" if path else text)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


def shown(value: Any) -> str:
    """repr of a user's value for an error message, cut to MAX_SHOWN characters."""
    if isinstance(value, (dict, list, tuple)) and len(value) > 20:
        # repr of a huge (alias-expanded) container would be built only to be cut
        return f"a {type(value).__name__} of {len(value)} items"
    return _cut(repr(value), MAX_SHOWN)


def key_path(path: str, key: Any) -> str:
    """`path.key` (or `path[i]` for a list index): the dotted key path of an error."""
    if isinstance(key, int) and not isinstance(key, bool):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


# ------------------------------------------------------------------------------ typed blocks

_STRICT = pydantic.ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class ConfigModel(pydantic.BaseModel):
    """Base of every typed config block: frozen, strict types (no "5" for 5, no true for 1;
    an integer is fine where a number is asked), finite numbers only, unknown keys refused."""

    model_config = pydantic.ConfigDict(frozen=True, **_STRICT)


def config_dataclass(cls):
    """A frozen dataclass validated by pydantic with `ConfigModel`'s rules, for blocks that
    other code handles as dataclasses (`dataclasses.asdict`, `dataclasses.replace`)."""
    return pydantic.dataclasses.dataclass(frozen=True, config=_STRICT)(cls)


_MESSAGES = {
    "int_type": "must be an integer", "int_parsing": "must be an integer",
    "int_from_float": "must be an integer", "float_type": "must be a number",
    "float_parsing": "must be a number", "finite_number": "must be a finite number",
    "bool_type": "must be true or false", "string_type": "must be a string",
    "dict_type": "must be a mapping", "model_type": "must be a mapping",
    "model_attributes_type": "must be a mapping", "dataclass_type": "must be a mapping",
    "list_type": "must be a list", "tuple_type": "must be a list",
}
_BOUNDS = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<",
           "less_than_equal": "<="}


def parse_model(cls: Any, data: Any, path: str = ""):
    """Validate `data` (None reads as {} for a block) as `cls`: a `ConfigModel`, a
    `config_dataclass`, or any type pydantic knows (e.g. `Seeds`). The first problem is raised
    as a `ConfigError` naming the full key path, e.g. `train.lr: must be > 0, got -1`."""
    fields = getattr(cls, "__pydantic_fields__", None)
    is_block = isinstance(cls, type) and fields is not None
    try:
        if is_block and issubclass(cls, pydantic.BaseModel):
            return cls.model_validate({} if data is None else data)
        if is_block:  # a pydantic dataclass: strict mode takes keyword arguments, not a dict
            data = {} if data is None else data
            if not isinstance(data, dict):
                raise ConfigError(path, f"must be a mapping, got {shown(data)}")
            for key in data:
                if not isinstance(key, str):
                    raise ConfigError(key_path(path, key), "unknown key; expected one of "
                                                           f"{sorted(fields)}")
            return cls(**data)
        return pydantic.TypeAdapter(cls, config=_STRICT).validate_python(data)
    except pydantic.ValidationError as e:
        raise _config_error(e.errors()[0], path, fields) from None


def _config_error(err: dict, path: str, fields) -> ConfigError:
    where = path
    for part in err["loc"]:
        if part != "[key]":
            where = key_path(where, part)
    kind, ctx = err["type"], err.get("ctx") or {}
    if kind in ("extra_forbidden", "unexpected_keyword_argument"):
        known = f"; expected one of {sorted(fields)}" if fields and len(err["loc"]) == 1 else ""
        return ConfigError(where, f"unknown key{known}")
    if kind in ("missing", "missing_keyword_argument", "missing_argument"):
        return ConfigError(where, "is required")
    if kind in ("value_error", "assertion_error"):
        return ConfigError(where, str(ctx.get("error", err["msg"])))
    if kind in _BOUNDS:
        bound = next(iter(ctx.values()))
        msg = f"must be {_BOUNDS[kind]} {bound}"
    elif kind == "literal_error":
        msg = f"must be one of {ctx['expected']}"
    elif kind == "string_too_long":
        msg = f"must be at most {ctx['max_length']} characters"
    elif kind == "too_short":
        msg = "must not be empty"
    else:
        msg = _MESSAGES.get(kind) or err["msg"][:1].lower() + err["msg"][1:]
    return ConfigError(where, f"{msg}, got {shown(err.get('input'))}")


def _printable(value: str) -> str:
    if not value.isprintable():
        raise ValueError(f"must not contain control characters (newline, tab, ...), got "
                         f"{shown(value)}")
    return value


NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")  # matched whole (fullmatch)
MAX_NAME = 64


def _name(value: str) -> str:
    if len(value) > MAX_NAME or not NAME_RE.fullmatch(value):
        raise ValueError(f"name {shown(value)} must be at most {MAX_NAME} letters, digits, '-', "
                         "'_' or '.', starting with a letter or digit (it becomes a coordinate, "
                         "a run name and a path)")
    return value


def _distinct(values: list) -> tuple:
    if len(set(values)) != len(values):
        raise ValueError(f"has duplicates: {shown(values)}")
    return tuple(values)


#: a string value: printable (no newline, tab or other control character), bounded
Text = Annotated[str, pydantic.Field(max_length=MAX_TEXT), pydantic.AfterValidator(_printable)]
#: a user-chosen name (scale, mixture, domain, test set, sweep): it becomes a path
Name = Annotated[str, pydantic.AfterValidator(_name)]
#: a positive integer count that fits the int32 arrays and Slurm's fields it may reach
Count = Annotated[int, pydantic.Field(gt=0, le=2 ** 31 - 1)]
PositiveNumber = Annotated[float, pydantic.Field(gt=0)]
NonNegative = Annotated[float, pydantic.Field(ge=0)]
Seed = Annotated[int, pydantic.Field(ge=0, le=INT64_MAX)]
#: the top-level `seeds:` list: distinct non-negative 64-bit integers, at least one
Seeds = Annotated[list[Seed], pydantic.Field(min_length=1), pydantic.AfterValidator(_distinct)]


def check_name(where: str, name: Any) -> str:
    """`name` if it is a valid user-chosen name, else a ConfigError at `where`."""
    if not isinstance(name, str):
        raise ConfigError(where, f"name {shown(name)} must be a string of letters, digits, "
                                 "'-', '_' or '.'")
    try:
        return _name(name)
    except ValueError as e:
        raise ConfigError(where, str(e)) from None


def check_tracking_uri(value: str) -> str:
    """`value` if it is a tracking URI MLflow can use: `http(s)://host[:port][/path]`,
    `sqlite:///path`, a `file:` URI or a plain directory path; else ValueError."""
    _printable(value)
    if not value.strip() or len(value) > MAX_TEXT:
        raise ValueError(f"must be a non-empty URI, got {shown(value)}")
    try:
        url = urllib.parse.urlsplit(value)
        url.port  # noqa: B018 (raises ValueError for a port that is not a number in range)
    except ValueError:
        raise ValueError(f"is not a valid URI: {shown(value)}") from None
    scheme = url.scheme.lower()
    if scheme in ("http", "https"):
        if not url.hostname or " " in url.netloc:
            raise ValueError(f"names no host: {shown(value)}; expected http(s)://host[:port]")
    elif scheme == "sqlite":
        if not value.startswith("sqlite:///") or len(value) <= len("sqlite:///"):
            raise ValueError(f"must be sqlite:///relative/path.db or sqlite:////abs/path.db, got "
                             f"{shown(value)}")
    elif scheme == "file":
        if not url.path:
            raise ValueError(f"names no path: {shown(value)}")
    elif scheme:
        raise ValueError(f"unsupported scheme {shown(url.scheme)} in {shown(value)}; use "
                         "http(s)://host:port, sqlite:///path.db, file:/dir or a directory path")
    return value


def tracking_uri(value: Any, where: str = "--tracking-uri") -> str:
    """A tracking URI given outside the sweep file (the CLI), checked like `tracking.uri`."""
    if not isinstance(value, str):
        raise ConfigError(where, f"must be a string, got {shown(value)}")
    try:
        return check_tracking_uri(value)
    except ValueError as e:
        raise ConfigError(where, str(e)) from None


# ------------------------------------------------------------------ field-by-field reading

class Section:
    """A YAML mapping plus its key path. Read keys with `get`; `finish` rejects unknown keys.

    >>> s = Section({"lr": 0.1}, "train")
    >>> s.get("lr", float, check=positive)
    0.1
    """

    def __init__(self, data: Any, path: str = ""):
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(path, f"must be a mapping, got {type(data).__name__} {shown(data)}")
        self.data = data
        self.path = path
        self._seen: set = set()

    def key(self, key: Any) -> str:
        return f"{self.path}.{key}" if self.path else str(key)

    def has(self, key: str) -> bool:
        return key in self.data

    def get(self, key: str, typ: type | tuple = object, default: Any = _MISSING,
            check: Callable[[Any], str | None] | None = None) -> Any:
        """The value at `key`, converted to `typ` (int->float allowed), checked by `check`
        (which returns an error message or None). Missing and no default: an error."""
        self._seen.add(key)
        where = self.key(key)
        if key not in self.data or self.data[key] is None and default is not _MISSING:
            if default is _MISSING:
                raise ConfigError(where, "is required")
            return default
        value = _coerce(self.data[key], typ, where)
        if check is not None:
            problem = check(value)
            if problem:
                raise ConfigError(where, f"{problem}, got {shown(value)}")
        return value

    def section(self, key: str, required: bool = False) -> "Section":
        self._seen.add(key)
        if required and key not in self.data:
            raise ConfigError(self.key(key), "is required")
        return Section(self.data.get(key), self.key(key))

    def items(self):
        """(key, value) pairs of a mapping whose keys are names chosen by the user."""
        self._seen.update(self.data)
        return list(self.data.items())

    def finish(self) -> None:
        unknown = sorted(set(map(str, self.data)) - set(map(str, self._seen)))
        if unknown:
            raise ConfigError(self.key(unknown[0]),
                              f"unknown key; expected one of {sorted(map(str, self._seen))}")


def _coerce(value: Any, typ: type | tuple, where: str) -> Any:
    if typ is object:
        return value
    types = typ if isinstance(typ, tuple) else (typ,)
    if isinstance(value, bool) and bool not in types:
        raise ConfigError(where, f"must be {_names(types)}, got a boolean {value!r}")
    if float in types and isinstance(value, (int, str)) and not isinstance(value, bool) \
            and int not in types:
        try:  # an integer where a number is asked; "3e-4" quoted
            value = float(value)
        except OverflowError:
            raise ConfigError(where, f"must be a finite number, got {shown(value)}") from None
        except ValueError:
            pass
    if not isinstance(value, types):
        raise ConfigError(where, f"must be {_names(types)}, got {type(value).__name__} "
                                 f"{shown(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(where, f"must be a finite number, got {value!r}")
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > INT64_MAX:
        raise ConfigError(where, f"must fit in 64 bits, got {shown(value)}")
    if isinstance(value, str):
        if len(value) > MAX_TEXT:
            raise ConfigError(where, f"must be at most {MAX_TEXT} characters, got {shown(value)}")
        if not value.isprintable():
            raise ConfigError(where, "must not contain control characters (newline, tab, ...), "
                                     f"got {shown(value)}")
    return value


def _names(types) -> str:
    return " or ".join({"int": "an integer", "float": "a number", "str": "a string",
                        "bool": "true/false", "list": "a list", "dict": "a mapping"}
                       .get(t.__name__, t.__name__) for t in types)


# Checks: each returns an error message or None.
def positive(v):
    return None if v > 0 else "must be > 0"


def non_negative(v):
    return None if v >= 0 else "must be >= 0"


def fraction(v):
    return None if 0 <= v < 1 else "must be in [0, 1)"


def seed(v):
    return None if 0 <= v <= INT64_MAX else "must be a non-negative 64-bit integer"


def one_of(*options):
    return lambda v: None if v in options else f"must be one of {list(options)}"


def parse_seeds(s: "Section", default: list[int]) -> tuple[int, ...]:
    """The top-level `seeds:` list: distinct non-negative 64-bit integers, at least one."""
    seeds = s.get("seeds", object, list(default))
    return parse_model(Seeds, seeds, s.key("seeds"))


# ---------------------------------------------------------------------------- shared blocks

@config_dataclass
class TrainConfig:
    """Optimisation recipe shared by every cell of a sweep (AdamW, warmup + cosine)."""

    batch_size: Count = 32
    lr: PositiveNumber = 3e-3
    min_lr_ratio: Annotated[float, pydantic.Field(ge=0, le=1)] = 0.1
    warmup_frac: Annotated[float, pydantic.Field(ge=0, lt=1)] = 0.05
    weight_decay: NonNegative = 0.1
    beta2: Annotated[float, pydantic.Field(ge=0, lt=1)] = 0.95
    grad_clip: NonNegative = 1.0
    # auto: bf16 autocast on CUDA; on a CPU with fast bf16 (AMX) from 4M params for training,
    # ~50k for evaluation, else fp32 (s2l.train.resolve_precision, docs/performance.md)
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    compile: bool = False
    eval_batch_size: Count = 64  # rows per forward; sorted by length and cut to the longest
    checkpoint_every: Count = 200  # optimizer steps; also on SIGUSR2 / timeout
    log_every: Count = 25
    threads: Count = 1  # torch threads per local process (selection and attribution studies)
    # Divergence guards (s2l.train): a log window above diverge_factor x the best window (and
    # above ln V) fails the run; so does a final mean eval loss above ln V + max_eval_excess.
    diverge_factor: Annotated[float, pydantic.Field(gt=1)] = 3.0
    max_eval_excess: NonNegative = 1.0

    @classmethod
    def from_section(cls, s: Section) -> "TrainConfig":
        """The block of `s` (e.g. `top.section("train")`), unknown keys refused."""
        return parse_model(cls, s.data, s.path)


@config_dataclass
class TrackingConfig:
    uri: Annotated[Text, pydantic.AfterValidator(check_tracking_uri)] | None = None  # None: sqlite in <out>
    experiment: Text | None = None  # None: the sweep name

    @classmethod
    def from_section(cls, s: Section) -> "TrackingConfig":
        return parse_model(cls, s.data, s.path)
