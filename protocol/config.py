"""Typed, validated configuration dataclasses shared by every part.

A config is a ``@dataclass`` that inherits :class:`Config`. Each field is declared with
:func:`option`: its default, a help text (what, unit) and its bounds; the help text and the bounds
become the ``--help`` of the matching command-line option, and the bounds are checked on every
construction. Configs load from YAML or dicts with strict checking (unknown keys, wrong types and
values out of bounds are a :class:`ConfigError` that names the key and the source), carry a
``version`` field, and nest (``section.field`` on the command line). A config whose layout changed
lists the moved keys in :attr:`Config.RENAMED`: files and options of older versions still load.

It lives in ``protocol`` because it is the one package every part (robot side included) may
import, and it needs nothing but the standard library and PyYAML.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar, Union, get_args, get_origin

import yaml

C = TypeVar("C", bound="Config")

_MISSING = dataclasses.MISSING


class ConfigError(ValueError):
    """A configuration is malformed; the message names the key, the source and the fix."""


@dataclasses.dataclass(frozen=True)
class Bounds:
    """Numeric bounds of a field: ``ge ≤ x``, ``gt < x``, ``x ≤ le``, ``x < lt`` (None: unbounded)."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def admits(self, x: float) -> bool:
        return (
            math.isfinite(x)
            and (self.ge is None or x >= self.ge)
            and (self.gt is None or x > self.gt)
            and (self.le is None or x <= self.le)
            and (self.lt is None or x < self.lt)
        )

    def __str__(self) -> str:
        low = _side((self.ge, "[", "≥"), (self.gt, "(", ">"))
        high = _side((self.le, "]", "≤"), (self.lt, ")", "<"))
        if low and high:
            return f"in {low[1]}{low[0]:g}, {high[0]:g}{high[1]}"
        if low or high:
            value, _, sign = low or high
            return f"{sign} {value:g}"
        return "finite"


def _side(inclusive: tuple, strict: tuple) -> tuple | None:
    """(value, bracket, sign) of the bound that is set on one side, inclusive first."""
    return inclusive if inclusive[0] is not None else strict if strict[0] is not None else None


def option(
    default: Any = _MISSING,
    help: str = "",
    *,
    default_factory: Any = _MISSING,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
) -> Any:
    """A config field: its default, a help text (what it is, its unit) and its numeric bounds.

    Bounds apply to numbers only (a None value of an optional field is not checked).
    """
    bounds = Bounds(ge, gt, le, lt) if any(b is not None for b in (ge, gt, le, lt)) else None
    metadata = {"help": help, "bounds": bounds}
    if default_factory is not _MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass
class Config:
    """Base of every config. Subclasses are dataclasses; override :meth:`validate` for checks
    that span fields, and bump ``VERSION`` when a field changes meaning."""

    VERSION: ClassVar[int] = 1
    #: keys of older versions → their dotted place now (applied to data of a version below VERSION)
    RENAMED: ClassVar[dict[str, str]] = {}

    version: int = option(1, "Config schema version; files written for a newer version are refused.")

    def __post_init__(self) -> None:
        if self.version > self.VERSION:
            raise ConfigError(
                f"{type(self).__name__}: config version {self.version} is newer than this program "
                f"understands ({self.VERSION}); upgrade reachsafe or rewrite the file for version {self.VERSION}"
            )
        self._check_bounds()
        self.validate()

    def _check_bounds(self) -> None:
        for f in dataclasses.fields(self):
            bounds, value = f.metadata.get("bounds"), getattr(self, f.name)
            if bounds is None or value is None or isinstance(value, bool):
                continue
            if not isinstance(value, (int, float)) or not bounds.admits(float(value)):
                raise ConfigError(f"{f.name} must be {bounds}, got {value!r}")

    def validate(self) -> None:
        """Cross-field checks; raise :class:`ConfigError`."""

    # ----- construction ---------------------------------------------------------------
    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any] | None, source: str = "<dict>") -> C:
        """Build from a mapping, checking every key and value type."""
        if data is not None and not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a mapping for {cls.__name__}, got {type(data).__name__}")
        data = cls.upgrade(dict(data or {}))
        hints = typing.get_type_hints(cls)
        known = {f.name: f for f in dataclasses.fields(cls) if f.init}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ConfigError(
                f"{source}: unknown key(s) {unknown} for {cls.__name__}; valid keys: {sorted(known)}"
            )
        kwargs = {name: _coerce(hints[name], value, f"{source}:{name}") for name, value in data.items()}
        try:
            return cls(**kwargs)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None

    @classmethod
    def upgrade(cls, data: dict[str, Any]) -> dict[str, Any]:
        """``data`` of an older version (``version`` below :attr:`VERSION`, or absent with old flat keys)
        with each key of :attr:`RENAMED` moved to its place now; current data unchanged."""
        version = data.get("version")
        flat = any(k in data and not isinstance(data[k], dict) for k in cls.RENAMED)
        if not cls.RENAMED or not (
            version is None and flat or isinstance(version, int) and version < cls.VERSION
        ):
            return data
        data = dict(data)
        for old, new in cls.RENAMED.items():
            if old not in data:
                continue
            value, node = data.pop(old), data
            *sections, leaf = new.split(".")
            for section in sections:
                node[section] = node = dict(node.get(section) or {})
            node[leaf] = value
        data["version"] = cls.VERSION
        return data

    @classmethod
    def from_recorded(cls: type[C], data: dict[str, Any] | None, source: str = "<recorded>") -> C:
        """Leniently, a config that a run recorded (a checkpoint's): upgraded, and keys this version no
        longer knows dropped (fields it lacks take their defaults)."""
        return cls.from_dict(_known_keys(cls, cls.upgrade(dict(data or {}))), source=source)

    @classmethod
    def from_yaml(cls: type[C], path: str | Path) -> C:
        """Load from a YAML file (a missing or unparsable file is a :class:`ConfigError`)."""
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of keys to values")
        data.pop("kind", None)
        return cls.from_dict(data, source=str(path))

    def to_dict(self) -> dict[str, Any]:
        """Plain data (YAML-safe: paths as strings, tuples as lists)."""
        return _plain(dataclasses.asdict(self))

    def replace(self: C, **changes: Any) -> C:
        return dataclasses.replace(self, **changes)


def _known_keys(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls) if f.init}
    out = {}
    for key, value in data.items():
        if key not in known:
            continue
        tp = hints[key]
        if isinstance(tp, type) and issubclass(tp, Config) and isinstance(value, dict):
            value = _known_keys(tp, tp.upgrade(value))
        out[key] = value
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(tp: Any, value: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and convert the lossless cases."""
    origin = get_origin(tp)
    args = get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{where}: {value!r} does not match {_type_name(tp)}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}")
            return tuple(
                _coerce(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True))
            )
        inner = args[0] if args else Any
        items = [_coerce(inner, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        kt, vt = args or (Any, Any)
        return {_coerce(kt, k, where): _coerce(vt, v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(tp, type) and dataclasses.is_dataclass(tp) and issubclass(tp, Config):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping for {tp.__name__}, got {value!r}")
        return tp.from_dict(value, source=where)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    if tp is Path:
        if isinstance(value, (str, Path)):
            return Path(value)
        raise ConfigError(f"{where}: expected a path, got {value!r}")
    if isinstance(value, tp):
        return value
    raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")


# ----- command line ----------------------------------------------------------------------


def _parse_cli_value(tp: Any, text: str, where: str) -> Any:
    """Command-line text → typed value: YAML scalars/lists (so ``true``, ``1e-3``, ``[1, 2]`` work)."""
    base = (
        [a for a in get_args(tp) if a is not type(None)]
        if get_origin(tp) in (Union, types.UnionType)
        else [tp]
    )
    textual = all(a in (str, Path) or (get_origin(a) is Literal and text in get_args(a)) for a in base)
    if textual:
        return _coerce(tp, text, where)
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError:
        raw = text
    return _coerce(tp, raw, where)


def add_config_arguments(parser: argparse.ArgumentParser, cls: type[Config], prefix: str = "") -> None:
    """Add one ``--name`` option per field of ``cls`` (``--section.name`` for nested configs).

    Options default to ``None`` so that :func:`apply_overrides` changes only what was given.
    """
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(f"{cls.__name__} options") if not prefix else parser
    for f in dataclasses.fields(cls):
        if not f.init or f.name == "version":
            continue
        tp = hints[f.name]
        name = f"{prefix}{f.name}"
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            add_config_arguments(group, tp, prefix=f"{name}.")
            continue
        default = f.default if f.default is not _MISSING else "(see config)"
        bounds = f.metadata.get("bounds")
        limits = f"; {bounds}" if bounds is not None else ""
        helptext = f"{f.metadata.get('help', '')} [default: {default}{limits}]"
        choices = list(get_args(tp)) if get_origin(tp) is Literal else None
        group.add_argument(
            f"--{name.replace('_', '-')}",
            dest=f"cfg__{name}",
            default=None,
            metavar=_type_name(tp).upper() if choices is None else None,
            choices=[str(c) for c in choices] if choices else None,
            help=helptext.replace("%", "%%"),
        )
    for old, new in cls.RENAMED.items():  # the options of older versions keep working
        if not prefix:
            group.add_argument(
                f"--{old.replace('_', '-')}", dest=f"cfg__{new}", default=None, help=argparse.SUPPRESS
            )


def apply_overrides(cfg: C, args: argparse.Namespace) -> C:
    """Return a copy of ``cfg`` with every ``--option`` that was given on the command line applied."""
    overrides = {
        k[len("cfg__") :]: v for k, v in vars(args).items() if k.startswith("cfg__") and v is not None
    }
    if not overrides:
        return cfg
    data = cfg.to_dict()
    hints_cache: dict[type, dict[str, Any]] = {}
    for dotted, text in overrides.items():
        node_cls: type = type(cfg)
        node = data
        parts = dotted.split(".")
        for part in parts[:-1]:
            hints = hints_cache.setdefault(node_cls, typing.get_type_hints(node_cls))
            node_cls = hints[part]
            node = node[part]
        hints = hints_cache.setdefault(node_cls, typing.get_type_hints(node_cls))
        node[parts[-1]] = _plain(_parse_cli_value(hints[parts[-1]], text, f"--{dotted.replace('_', '-')}"))
    return type(cfg).from_dict(data, source="command line")


def load_config(cls: type[C], path: str | Path | None, args: argparse.Namespace | None = None) -> C:
    """Defaults ← YAML file (if given) ← command-line overrides (if given)."""
    cfg = cls.from_yaml(path) if path else cls()
    return apply_overrides(cfg, args) if args is not None else cfg
