"""Protocol constants and the step record table (the single source of truth for step columns).

Public API: `PROTOCOL_VERSION`, the `DEFAULT_*` limits, `ARRAY_EXT_TYPE`, `WIRE_DTYPES`,
`STEP_COLUMNS` (name -> `StepColumn`) and `validate_step_columns`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from reachsafe.protocol.errors import FieldError

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
#: Largest number of array dimensions.
MAX_NDIM = 8
#: ZMQ_LINGER of every socket: pending messages are dropped this long after close().
DEFAULT_LINGER_MS = 500

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


STEP_COLUMNS: dict[str, StepColumn] = {
    c.name: c
    for c in (
        StepColumn("obs", "uint8", "obs", "frame the action was computed from, (N, H, W, 3)"),
        StepColumn("action", "float32", "action", "action executed on the drive, (N, A)"),
        StepColumn("proposed", "float32", "action", "action the selected policy proposed before the shield"),
        StepColumn("reward", "float32", "scalar", "reward read after the action"),
        StepColumn("cost", "float32", "scalar", "cost (>= 0) read after the action"),
        StepColumn("terminated", "bool", "scalar", "episode terminated after the action"),
        StepColumn("truncated", "bool", "scalar", "episode truncated (time limit) after the action"),
        StepColumn("policy", "uint8", "scalar", "0 = online policy, 1 = offline policy, 2 = fallback/brake"),
        StepColumn("shielded", "bool", "scalar", "the shield replaced the proposed action"),
        StepColumn("bundle_version", "int64", "scalar", "bundle that produced the action (-1: none)"),
        StepColumn("episode", "int64", "scalar", "robot-local episode counter"),
        StepColumn("t_obs", "float64", "scalar", "robot monotonic time of the frame, seconds"),
        StepColumn("t_act", "float64", "scalar", "robot monotonic time of the drive command, seconds"),
    )
}

POLICY_ONLINE, POLICY_OFFLINE, POLICY_FALLBACK = 0, 1, 2


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
    missing = sorted(set(STEP_COLUMNS) - set(columns))
    extra = sorted(set(columns) - set(STEP_COLUMNS))
    if missing or extra:
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
        if arr.dtype != np.dtype(spec.dtype):
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
