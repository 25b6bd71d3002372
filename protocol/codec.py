"""msgpack codec for wire messages: `encode(msg) -> bytes`, `decode(data) -> Message`.

A message is a msgpack map `{"v": PROTOCOL_VERSION, "type": msg.TYPE, <field>: <value>, ...}`.
ndarrays travel as msgpack ext type `ARRAY_EXT_TYPE` (1) whose payload is

    u8 ndim | u8 L | L bytes dtype name (ASCII) | ndim x u64 LE dims | zero padding to a
    multiple of 8 | raw little-endian C-order data (prod(dims) * itemsize bytes)

with dtype names from `WIRE_DTYPES` only. Decoding never executes anything from the data (no
pickle), uses `raw=False` and `strict_map_key=True`, bounds every msgpack container, and raises
a `ProtocolError` subclass for anything that is not a valid message: `DecodeError`,
`VersionError`, `UnknownTypeError`, `FieldError`, `OversizeError`. Decoded arrays are read-only
views of the received bytes (zero copy).
"""

from __future__ import annotations

import dataclasses
import struct
from typing import Any

import msgpack
import numpy as np

from protocol.constants import (
    ARRAY_EXT_TYPE,
    DEFAULT_MAX_ARRAY_BYTES,
    DEFAULT_MAX_MESSAGE_BYTES,
    MAX_CONTAINER_LEN,
    MAX_NDIM,
    MAX_STR_BYTES,
    PROTOCOL_VERSION,
    WIRE_DTYPES,
)
from protocol.errors import (
    DecodeError,
    FieldError,
    OversizeError,
    ProtocolError,
    UnknownTypeError,
    VersionError,
)
from protocol.messages import MESSAGE_TYPES, Message

_RESERVED = ("v", "type")


def _pad8(n: int) -> int:
    return (n + 7) & ~7


def _dtype_name(dtype: np.dtype) -> str | None:
    name = dtype.name
    return name if name in WIRE_DTYPES and dtype.kind in "uifb" else None


def pack_array(arr: np.ndarray) -> bytes:
    """The ext payload for `arr` (see module docstring). Raises FieldError for other dtypes."""
    name = _dtype_name(arr.dtype)
    if name is None:
        raise FieldError(
            f"array dtype {arr.dtype} is not allowed on the wire; use one of {sorted(WIRE_DTYPES)}"
        )
    if arr.ndim > MAX_NDIM:
        raise FieldError(f"array has {arr.ndim} dimensions; at most {MAX_NDIM} are allowed")
    data = np.ascontiguousarray(arr, dtype=WIRE_DTYPES[name])
    head = struct.pack(f"<BB{len(name)}s{arr.ndim}Q", arr.ndim, len(name), name.encode("ascii"), *arr.shape)
    # join, not +: "+" onto a fresh 400 KB bytes object measured 360 us vs 13 us for join
    return b"".join((head, bytes(_pad8(len(head)) - len(head)), data.reshape(-1).view(np.uint8)))


def unpack_array(payload: bytes, max_array_bytes: int = DEFAULT_MAX_ARRAY_BYTES) -> np.ndarray:
    """Parse an ext payload into a read-only ndarray; DecodeError / OversizeError if invalid."""
    if len(payload) < 2:
        raise DecodeError("array extension shorter than its 2-byte header; the sender's encoder is broken")
    ndim, name_len = payload[0], payload[1]
    if ndim > MAX_NDIM:
        raise DecodeError(f"array extension claims {ndim} dimensions; at most {MAX_NDIM} are allowed")
    head_len = 2 + name_len + 8 * ndim
    offset = _pad8(head_len)
    if len(payload) < offset:
        raise DecodeError("array extension truncated inside its header")
    name = payload[2 : 2 + name_len].decode("ascii", errors="replace")
    dtype = WIRE_DTYPES.get(name)
    if dtype is None:
        raise DecodeError(f"array dtype {name!r} is not allowed on the wire; allowed: {sorted(WIRE_DTYPES)}")
    if any(payload[head_len:offset]):
        raise DecodeError("array extension header padding is not zero")
    shape = struct.unpack_from(f"<{ndim}Q", payload, 2 + name_len)
    count = 1
    for d in shape:
        count *= d
    nbytes = count * dtype.itemsize
    if nbytes > max_array_bytes:
        raise OversizeError(
            f"array of shape {shape} {name} needs {nbytes} bytes, over the limit of {max_array_bytes}; "
            "send smaller batches or raise max_array_bytes on both sides"
        )
    if len(payload) - offset != nbytes:
        raise DecodeError(
            f"array of shape {shape} {name} needs {nbytes} data bytes but the extension carries "
            f"{len(payload) - offset}"
        )
    arr = np.frombuffer(payload, dtype=dtype, count=count, offset=offset).reshape(shape)
    if dtype.kind == "b" and count and arr.view(np.uint8).max() > 1:
        raise DecodeError("bool array contains bytes other than 0 and 1")
    return arr


def _default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return msgpack.ExtType(ARRAY_EXT_TYPE, pack_array(obj))
    raise FieldError(f"cannot encode a {type(obj).__name__}; only msgpack types and ndarrays go on the wire")


def encode(msg: Message, *, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> bytes:
    """Encode a message into one frame. Raises OversizeError if it exceeds max_message_bytes."""
    if not isinstance(msg, Message) or msg.TYPE not in MESSAGE_TYPES:
        raise TypeError(f"encode() needs a protocol message, got {type(msg).__name__}")
    body: dict[str, Any] = {"v": PROTOCOL_VERSION, "type": msg.TYPE}
    for f in dataclasses.fields(msg):
        body[f.name] = getattr(msg, f.name)
    try:
        data = msgpack.packb(body, default=_default, use_bin_type=True, strict_types=False)
    except ProtocolError as exc:
        exc.msg_type = msg.TYPE
        raise
    if len(data) > max_message_bytes:
        raise OversizeError(
            f"encoded {msg.TYPE} is {len(data)} bytes, over the limit of {max_message_bytes}; "
            "send smaller batches or raise the limit on both sides",
            msg_type=msg.TYPE,
        )
    return data


def decode(
    data: bytes | bytearray | memoryview,
    *,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    max_array_bytes: int = DEFAULT_MAX_ARRAY_BYTES,
) -> Message:
    """Decode and validate one frame. Raises a ProtocolError subclass for anything invalid."""
    if len(data) > max_message_bytes:
        raise OversizeError(
            f"message of {len(data)} bytes is over the limit of {max_message_bytes}; "
            "the sender must send smaller messages"
        )

    def ext_hook(code: int, payload: bytes) -> np.ndarray:
        if code != ARRAY_EXT_TYPE:
            raise DecodeError(
                f"unknown msgpack extension type {code}; only {ARRAY_EXT_TYPE} (ndarray) exists"
            )
        return unpack_array(payload, max_array_bytes)

    try:
        body = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            use_list=True,
            ext_hook=ext_hook,
            max_str_len=MAX_STR_BYTES,
            max_bin_len=max_message_bytes,
            max_ext_len=max_message_bytes,
            max_array_len=MAX_CONTAINER_LEN,
            max_map_len=MAX_CONTAINER_LEN,
        )
    except ProtocolError:
        raise
    except Exception as exc:  # msgpack raises ValueError, TypeError, UnicodeDecodeError, StackError...
        detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        raise DecodeError(f"not a valid msgpack message ({detail}); check the sender's encoder") from exc

    if not isinstance(body, dict):
        raise DecodeError(f"message is a msgpack {type(body).__name__}, expected a map with 'v' and 'type'")
    if not all(isinstance(k, str) for k in body):
        raise DecodeError("message map has a non-str (bin) key; keys must be msgpack str")
    version = body.get("v")
    if type(version) is not int or version != PROTOCOL_VERSION:
        raise VersionError(
            f"protocol version {version!r} is not supported (this side speaks v{PROTOCOL_VERSION}); "
            "upgrade the older side so both speak the same version",
            msg_type=str(body.get("type", "")),
        )
    type_name = body.get("type")
    if not isinstance(type_name, str):
        raise FieldError(f"message 'type' is {type(type_name).__name__}, expected str")
    cls = MESSAGE_TYPES.get(type_name)
    if cls is None:
        raise UnknownTypeError(
            f"unknown message type {type_name!r}; known: {sorted(MESSAGE_TYPES)}", msg_type=type_name
        )
    fields = {k: v for k, v in body.items() if k not in _RESERVED}
    expected = set(cls.field_names())
    missing = sorted(expected - set(fields))
    extra = sorted(set(fields) - expected)
    if missing or extra:
        raise FieldError(
            f"{type_name}: missing fields {missing}, unexpected fields {extra}; every field is required on the wire",
            msg_type=type_name,
        )
    return cls(**fields)
