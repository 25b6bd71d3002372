"""Wire message types: one frozen dataclass per message `type` (see docs/protocol.md).

Every message class has `TYPE: ClassVar[str]` (the wire `type` string) and validates its fields
when constructed, so a message that exists is a valid message: ints are int64 ints (not bools),
floats accept ints and are stored as float, ids (`robot_id`, `stream_id`, `sender_id`) are 1 to
`MAX_ID_CHARS` printable characters, `tuple[int, ...]` fields accept lists, arrays must be
ndarrays of the expected dtype / rank where the field says so; numpy scalars are converted to
Python ones. A bad field raises `FieldError` (an int outside int64: `IntRangeError`).
Arrays inside decoded messages are read-only views of the received frame; copy before writing.

`MESSAGE_TYPES` maps wire type -> class. Messages holding arrays do not support `==`.

Trainer link: `Hello`, `Steps`, `Ack`, `BundleMessage`, `BundleStatus`, `Heartbeat`, `ErrorMessage`.
Hardware link: `HwHello`, `HwSpec`, `HwReadFrame`, `HwFrame`, `HwDrive`, `HwOk`, `HwStop`,
`HwReadSignals`, `HwSignals`; the bridge's test control `HwFault`.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np

from reachsafe.protocol.constants import (
    FAULT_KINDS,
    INT64_MAX,
    INT64_MIN,
    MAX_ID_CHARS,
    is_valid_id,
    validate_step_columns,
)
from reachsafe.protocol.errors import FieldError, IntRangeError, ProtocolError, brief

MESSAGE_TYPES: dict[str, type[Message]] = {}

_Validator = Callable[[str, str, Any, dict], Any]


#: Longest `message` of an `error` reply, in characters (a reply stays small whatever it is about).
MAX_ERROR_TEXT = 2000


def _fail(msg_type: str, name: str, value: Any, want: str) -> typing.NoReturn:
    raise FieldError(
        f"{msg_type}.{name}: got {type(value).__name__} {brief(value)}, expected {want}", msg_type=msg_type
    )


def _check_int(t: str, name: str, v: Any, meta: dict) -> int:
    if not isinstance(v, (int, np.integer)) or isinstance(v, bool):
        _fail(t, name, v, "int")
    v = int(v)
    if not INT64_MIN <= v <= INT64_MAX:
        raise IntRangeError(f"{t}.{name}: {v} is outside int64; every protocol int is an int64", msg_type=t)
    if "min" in meta and v < meta["min"]:
        _fail(t, name, v, f"int >= {meta['min']}")
    return v


def _check_float(t: str, name: str, v: Any, meta: dict) -> float:
    if not isinstance(v, (int, float, np.integer, np.floating)) or isinstance(v, bool):
        _fail(t, name, v, "float")
    return float(v)


def _check_str(t: str, name: str, v: Any, meta: dict) -> str:
    if not isinstance(v, str):
        _fail(t, name, v, "str")
    if "choices" in meta and v not in meta["choices"]:
        _fail(t, name, v, f"one of {list(meta['choices'])}")
    if meta.get("id") and not is_valid_id(v):
        _fail(t, name, v, f"an id of 1 to {MAX_ID_CHARS} printable characters")
    return v


def _check_bytes(t: str, name: str, v: Any, meta: dict) -> bytes:
    if not isinstance(v, bytes):
        _fail(t, name, v, "bytes")
    return v


def _check_bool(t: str, name: str, v: Any, meta: dict) -> bool:
    if not isinstance(v, (bool, np.bool_)):
        _fail(t, name, v, "bool")
    return bool(v)


def _check_array(t: str, name: str, v: Any, meta: dict) -> np.ndarray:
    if not isinstance(v, np.ndarray):
        _fail(t, name, v, "ndarray")
    if "dtype" in meta and v.dtype != np.dtype(meta["dtype"]):
        _fail(t, name, v, f"ndarray of dtype {meta['dtype']} (got {v.dtype})")
    if "ndim" in meta and v.ndim != meta["ndim"]:
        _fail(t, name, v, f"ndarray with {meta['ndim']} dimensions (got shape {v.shape})")
    return v


def _check_shape(t: str, name: str, v: Any, meta: dict) -> tuple[int, ...]:
    ok = isinstance(v, (list, tuple)) and all(
        isinstance(d, (int, np.integer)) and not isinstance(d, bool) for d in v
    )
    if not ok or ("len" in meta and len(v) != meta["len"]) or any(d < 1 for d in v):
        _fail(t, name, v, f"list of {meta.get('len', 'any number of')} positive ints")
    return tuple(int(d) for d in v)


def _dict_of(value_check: _Validator, what: str) -> _Validator:
    def check(t: str, name: str, v: Any, meta: dict) -> dict:
        if not isinstance(v, dict) or not all(isinstance(k, str) for k in v):
            _fail(t, name, v, f"map str -> {what}")
        return {k: value_check(t, f"{name}[{k!r}]", x, {}) for k, x in v.items()}

    return check


def _optional(check: _Validator) -> _Validator:
    def opt(t: str, name: str, v: Any, meta: dict) -> Any:
        return None if v is None else check(t, name, v, meta)

    return opt


_VALIDATORS: dict[Any, _Validator] = {
    int: _check_int,
    float: _check_float,
    str: _check_str,
    bytes: _check_bytes,
    bool: _check_bool,
    np.ndarray: _check_array,
    tuple[int, ...]: _check_shape,
    dict[str, float]: _dict_of(_check_float, "float"),
    dict[str, np.ndarray]: _dict_of(_check_array, "ndarray"),
    dict[str, bytes]: _dict_of(_check_bytes, "bytes"),
    int | None: _optional(_check_int),
}


def _meta(**kw: Any) -> Any:
    return dataclasses.field(metadata=kw)


def _id() -> Any:
    """A robot / stream / sender id: it keys the trainer's state and its store index."""
    return _meta(id=True)


@dataclasses.dataclass(frozen=True)
class Message:
    """Base of all wire messages; subclasses are registered with `@_message("type")`."""

    TYPE: ClassVar[str] = ""
    _checks: ClassVar[tuple[tuple[str, _Validator, dict], ...]] = ()

    def __post_init__(self) -> None:
        for name, check, meta in self._checks:
            value = getattr(self, name)
            checked = check(self.TYPE, name, value, meta)
            if checked is not value:
                object.__setattr__(self, name, checked)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))


def _message(type_name: str) -> Callable[[type], type]:
    def register(cls: type) -> type:
        cls = dataclasses.dataclass(frozen=True)(cls)
        hints = typing.get_type_hints(cls)
        cls.TYPE = type_name
        cls._checks = tuple(
            (f.name, _VALIDATORS[hints[f.name]], dict(f.metadata)) for f in dataclasses.fields(cls)
        )
        MESSAGE_TYPES[type_name] = cls
        return cls

    return register


# --- trainer link -------------------------------------------------------------------------


@_message("hello")
class Hello(Message):
    """Robot -> trainer, first message on every (re)connection."""

    robot_id: str = _id()
    stream_id: str = _id()
    runtime_version: str
    bundle_version: int = _meta(min=-1)  # -1: no bundle loaded
    obs_shape: tuple[int, ...] = _meta(len=3)  # (H, W, 3)
    action_dim: int = _meta(min=1)
    resume_seq: int = _meta(min=0)  # seq of the first batch the robot sends on this connection


@_message("steps")
class Steps(Message):
    """Robot -> trainer: one batch of N steps of one stream (columns: reachsafe.protocol.constants.STEP_COLUMNS)."""

    robot_id: str = _id()
    stream_id: str = _id()
    seq: int = _meta(min=0)
    first_step: int = _meta(min=0)
    columns: dict[str, np.ndarray] = _meta()

    def __post_init__(self) -> None:
        super().__post_init__()
        validate_step_columns(self.columns)

    @property
    def n_steps(self) -> int:
        return int(self.columns["obs"].shape[0])


@_message("ack")
class Ack(Message):
    """Trainer -> robot: every batch of `stream_id` with seq <= `seq` is durably stored."""

    stream_id: str = _id()
    seq: int = _meta(min=0)


@_message("bundle")
class BundleMessage(Message):
    """Trainer -> robot: a signed policy bundle (see reachsafe.protocol.bundle.Bundle.to_message)."""

    version: int = _meta(min=1)
    parent: int | None = _meta(min=1)
    manifest: bytes = _meta()  # the exact bytes of manifest.json
    signature: bytes = _meta()  # raw 64-byte Ed25519 signature over `manifest`
    files: dict[str, bytes] = _meta()


@_message("bundle_status")
class BundleStatus(Message):
    """Robot -> trainer: what the robot did with a bundle."""

    robot_id: str = _id()
    version: int = _meta(min=1)
    status: str = _meta(choices=("loaded", "rejected", "rolled_back"))
    reason: str = ""


@_message("heartbeat")
class Heartbeat(Message):
    """Either direction: liveness plus a few namespaced metrics (e.g. "edge/tick_ms")."""

    sender_id: str = _id()
    time: float  # sender's time.monotonic(), seconds
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)


@_message("error")
class ErrorMessage(Message):
    """Either direction: the peer's message was rejected; `code` is a ProtocolError.code."""

    code: str
    message: str
    ref_type: str = ""  # type of the rejected message, "" if unknown

    @classmethod
    def from_exception(cls, exc: ProtocolError) -> ErrorMessage:
        """The reply to a rejected message; its text cut to `MAX_ERROR_TEXT` characters."""
        text = str(exc)
        if len(text) > MAX_ERROR_TEXT:
            text = text[: MAX_ERROR_TEXT - 3] + "..."
        return cls(code=exc.code, message=text, ref_type=exc.msg_type[:MAX_ID_CHARS])


# --- hardware link (request -> reply) -------------------------------------------------------


@_message("hw_hello")
class HwHello(Message):
    robot: str


@_message("hw_spec")
class HwSpec(Message):
    robot: str
    obs_shape: tuple[int, ...] = _meta(len=3)
    action_dim: int = _meta(min=1)
    rate_hz: float = _meta()


@_message("hw_read_frame")
class HwReadFrame(Message):
    robot: str


@_message("hw_frame")
class HwFrame(Message):
    """Server clock: the client computes the frame's age as t_now - t_capture. ``resetting``: the
    server is resetting the episode (the robot brakes and records no step until it ends)."""

    image: np.ndarray = _meta(dtype="uint8", ndim=3)  # (H, W, 3)
    t_capture: float = _meta()
    t_now: float = _meta()
    frame_id: int = _meta(min=0)
    resetting: bool = _meta()


@_message("hw_drive")
class HwDrive(Message):
    robot: str
    action: np.ndarray = _meta(dtype="float32", ndim=1)  # (A,) in [-1, 1]


@_message("hw_ok")
class HwOk(Message):
    pass


@_message("hw_stop")
class HwStop(Message):
    robot: str


@_message("hw_read_signals")
class HwReadSignals(Message):
    """Read ``read_id`` (the client's count of answered reads: it repeats an id until it gets the
    answer); ``confirmed``: id of the last answer the client received (-1: none yet), which the
    server may then forget. See docs/protocol.md, the hardware link's signal reads."""

    robot: str
    read_id: int = _meta(min=0)
    confirmed: int = _meta(min=-1)


@_message("hw_signals")
class HwSignals(Message):
    """The answer to read ``read_id``: reward and cost summed over every step no earlier answer
    carried (an unconfirmed answer is repeated or merged, never dropped); terminated/truncated: an
    episode ended in those steps; ``resetting``: the server is resetting the episode."""

    read_id: int = _meta(min=0)
    reward: float
    cost: float
    terminated: bool
    truncated: bool
    episode: int = _meta(min=0)
    step: int = _meta(min=0)
    resetting: bool = _meta()


@_message("hw_fault")
class HwFault(Message):
    """Test control for a bridge started with faults allowed (``sim serve --faults``): inject ``fault``
    (one of ``FAULT_KINDS``) on ``robot`` for ``duration_s`` seconds. ``rate``: the share of the robot's
    requests a dropping fault leaves unanswered (1: all); ``seed`` seeds which ones, and where a hazard
    is placed, so a fault means the same on every run. Answered ``hw_ok`` (docs/protocol.md §4.3)."""

    robot: str
    fault: str = _meta(choices=FAULT_KINDS)
    duration_s: float = _meta()
    rate: float = _meta()
    seed: int = _meta(min=0)
