"""Protocol constants and the step record table (the single source of truth for step columns).

Public API: `PROTOCOL_VERSION`, the `DEFAULT_*` and `MAX_*` limits, `INT64_MIN` / `INT64_MAX`,
`ARRAY_EXT_TYPE`, `WIRE_DTYPES`, `STEP_COLUMNS` (name -> `StepColumn`), `validate_step_columns`
(structure: names, dtypes, shapes) and `check_step_values` (values: finite, ranges, enums).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NoReturn

import numpy as np

from reachsafe.protocol.errors import ContractError, FieldError

PROTOCOL_VERSION = 1

MiB = 1 << 20
#: Largest encoded message accepted (also the ZMQ_MAXMSGSIZE of every socket).
DEFAULT_MAX_MESSAGE_BYTES = 64 * MiB
#: Largest raw payload of one array inside a message.
DEFAULT_MAX_ARRAY_BYTES = 32 * MiB
#: Largest msgpack str (ids, reasons, error texts); longer ones are a DecodeError.
MAX_STR_BYTES = 1 * MiB
#: Largest msgpack array / map length (shapes, column dicts, metrics, bundle file lists).
MAX_CONTAINER_LEN = 4096
#: Deepest container nesting; the message's own map is level 1 (messages use 2: a map of maps or lists).
MAX_DEPTH = 16
#: Most msgpack objects (every value, map key and container counts one) in one message.
MAX_OBJECTS = 16384
#: Every protocol int is an int64.
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
#: Longest robot_id / stream_id / sender_id, in characters (they key the trainer's state and store index).
MAX_ID_CHARS = 128


def is_valid_id(value: object) -> bool:
    """A robot, stream or sender id on the wire: 1 to MAX_ID_CHARS printable characters."""
    return isinstance(value, str) and 0 < len(value) <= MAX_ID_CHARS and value.isprintable()


#: A new `steps` batch may be at most this many seqs beyond its stream's acknowledged prefix (a robot
#: keeps a few in flight; it also bounds what a trainer keeps per stream about batches beyond a gap).
MAX_AHEAD_SEQS = 1024
#: Largest number of array dimensions.
MAX_NDIM = 8
#: ZMQ_LINGER of every socket: pending messages are dropped this long after close().
DEFAULT_LINGER_MS = 500

#: Faults a bridge injects on one simulated robot when asked with `hw_fault` (docs/protocol.md §4.3):
#: frames stop refreshing (`camera_stall`), `hw_drive` / `hw_stop` go unanswered (`drive_timeout`),
#: every request of the robot goes unanswered (`partition`), the robot is put before a hazard, facing
#: it (`hazard`); `clear` ends every fault of the robot.
FAULT_KINDS = ("camera_stall", "drive_timeout", "partition", "hazard", "clear")
#: Longest fault a bridge accepts, in seconds.
MAX_FAULT_S = 600.0

#: msgpack extension type code that carries an ndarray.
ARRAY_EXT_TYPE = 1

#: dtype names allowed on the wire -> numpy dtype (always little-endian on the wire).
WIRE_DTYPES: dict[str, np.dtype] = {
    name: np.dtype(name).newbyteorder("<")
    for name in ("uint8", "int8", "int32", "int64", "float32", "float64", "bool")
}


@dataclass(frozen=True)
class StepColumn:
    """One column of a `steps` batch: dtype and the shape of one step's entry.

    `kind` says what the per-step shape is: "obs" -> (H, W, 3) from the robot's HELLO,
    "action" -> (A,), "scalar" -> ().
    """

    name: str
    dtype: str
    kind: str
    meaning: str
    #: Value rules (float columns must also be finite): inclusive bounds.
    low: float | None = None
    high: float | None = None


#: Every action on the wire is normalised to this box (the bundle manifest's `action.low` / `high`).
ACTION_LOW, ACTION_HIGH = -1.0, 1.0
#: The `policy` column's values (an enum: a uint8 in 0..2).
POLICY_ONLINE, POLICY_OFFLINE, POLICY_FALLBACK = 0, 1, 2

STEP_COLUMNS: dict[str, StepColumn] = {
    c.name: c
    for c in (
        StepColumn("obs", "uint8", "obs", "frame the action was computed from, (N, H, W, 3)"),
        StepColumn(
            "action", "float32", "action", "action executed on the drive, (N, A)", ACTION_LOW, ACTION_HIGH
        ),
        StepColumn(
            "proposed",
            "float32",
            "action",
            "action the selected policy proposed before the shield",
            ACTION_LOW,
            ACTION_HIGH,
        ),
        StepColumn("reward", "float32", "scalar", "reward read after the action"),
        StepColumn("cost", "float32", "scalar", "cost (>= 0) read after the action", low=0.0),
        StepColumn("terminated", "bool", "scalar", "episode terminated after the action"),
        StepColumn("truncated", "bool", "scalar", "episode truncated (time limit) after the action"),
        StepColumn(
            "policy",
            "uint8",
            "scalar",
            "0 = online policy, 1 = offline policy, 2 = fallback/brake",
            high=POLICY_FALLBACK,
        ),
        StepColumn("shielded", "bool", "scalar", "the shield replaced the proposed action"),
        StepColumn("bundle_version", "int64", "scalar", "bundle that produced the action (-1: none)", low=-1),
        StepColumn("episode", "int64", "scalar", "robot-local episode counter (>= 0)", low=0),
        StepColumn("t_obs", "float64", "scalar", "robot monotonic time of the frame, seconds"),
        StepColumn("t_act", "float64", "scalar", "robot monotonic time of the drive command, seconds"),
    )
}


def validate_step_columns(
    columns: Mapping[str, np.ndarray],
    obs_shape: Sequence[int] | None = None,
    action_dim: int | None = None,
) -> int:
    """Check a `steps` batch against `STEP_COLUMNS`; return the number of steps N.

    Every column must be present (and no other), be an ndarray of the listed dtype and have
    the same leading length N >= 1. With `obs_shape` / `action_dim` given (from the robot's
    HELLO) the per-step shapes are checked exactly; without them only the number of dimensions
    is. Raises `FieldError` naming the column.
    """
    if columns.keys() != STEP_COLUMNS.keys():
        missing = sorted(STEP_COLUMNS.keys() - columns.keys())
        extra = sorted(columns.keys() - STEP_COLUMNS.keys())
        raise FieldError(
            f"steps columns: missing {missing}, unexpected {extra}; a batch must carry exactly "
            f"{sorted(STEP_COLUMNS)} (see docs/protocol.md, Step record)",
            msg_type="steps",
        )
    n: int | None = None
    for name, spec in STEP_COLUMNS.items():
        arr = columns[name]
        if not isinstance(arr, np.ndarray):
            raise FieldError(
                f"steps column {name!r} is {type(arr).__name__}, expected ndarray", msg_type="steps"
            )
        if arr.dtype != WIRE_DTYPES[spec.dtype]:
            raise FieldError(
                f"steps column {name!r} has dtype {arr.dtype}, expected {spec.dtype}; convert it before sending",
                msg_type="steps",
            )
        if spec.kind == "obs":
            tail = tuple(obs_shape) if obs_shape is not None else None
            ndim = 4
        elif spec.kind == "action":
            tail = (action_dim,) if action_dim is not None else None
            ndim = 2
        else:
            tail, ndim = (), 1
        if arr.ndim != ndim or (tail is not None and arr.shape[1:] != tail):
            want = f"(N{''.join(f', {d}' for d in tail)})" if tail is not None else f"{ndim} dimensions"
            raise FieldError(
                f"steps column {name!r} has shape {arr.shape}, expected {want}", msg_type="steps"
            )
        if n is None:
            n = arr.shape[0]
        elif arr.shape[0] != n:
            raise FieldError(
                f"steps column {name!r} has {arr.shape[0]} rows but 'obs' has {n}; all columns need the same N",
                msg_type="steps",
            )
    assert n is not None
    if n < 1:
        raise FieldError("steps batch is empty; send at least one step per batch", msg_type="steps")
    return n


def check_step_values(columns: Mapping[str, np.ndarray], first_step: int = 0) -> None:
    """Check a structurally valid batch's values against `STEP_COLUMNS`' rules; ContractError if one breaks.

    Float columns must be finite; `low` / `high` bound the rest (for `policy` that is its enum).
    Whole columns at a time, at most one min and one max reduction per column: on a batch of a few
    dozen steps numpy's per-call overhead, not the values, is the cost (~20 us for a 16-step batch,
    against ~30 us for an isfinite + all + min + max per column). NaN propagates through both reductions and
    ±inf is an extreme, so a float column is finite exactly when its min and max are; the
    element-wise masks are built only for a column that breaks a rule, to name its first offending
    step (numbered from ``first_step``).
    """
    for name, finite, low, high in _VALUE_RULES:
        col = columns[name]
        lo = np.minimum.reduce(col, axis=None) if finite or low is not None else None
        hi = np.maximum.reduce(col, axis=None) if finite or high is not None else None
        if finite and not (math.isfinite(lo) and math.isfinite(hi)):
            _reject(np.isfinite(col), name, "nonfinite", "must be finite (no NaN or inf)", col, first_step)
        if low is not None and lo < low:
            _reject(col >= low, name, "below_range", f"must be >= {low:g}", col, first_step)
        if high is not None and hi > high:
            _reject(col <= high, name, "above_range", f"must be <= {high:g}", col, first_step)


_VALUE_RULES = [
    (c.name, c.dtype.startswith("float"), c.low, c.high)
    for c in STEP_COLUMNS.values()
    if c.dtype.startswith("float") or c.low is not None or c.high is not None
]


def _reject(ok: np.ndarray, name: str, check: str, rule: str, col: np.ndarray, first_step: int) -> NoReturn:
    row = int(np.flatnonzero(~ok.reshape(len(col), -1).all(axis=1))[0])
    raise ContractError(
        f"steps column {name!r} {rule}, but step {first_step + row} (row {row} of the batch) has "
        f"{col[row].tolist()}; the batch is not stored and its stream cannot advance past it: fix the sender "
        "(docs/protocol.md, Step record) and start a new stream",
        column=name,
        check=check,
    )
