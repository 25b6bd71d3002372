"""Codec: round trips of every message type and typed errors for every kind of bad input."""

from __future__ import annotations

import dataclasses
import re
import struct
from pathlib import Path

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from reachsafe.protocol import codec
from reachsafe.protocol import messages as m
from reachsafe.protocol.constants import (
    ARRAY_EXT_TYPE,
    INT64_MAX,
    MAX_CONTAINER_LEN,
    MAX_DEPTH,
    MAX_ID_CHARS,
    MAX_OBJECTS,
    MAX_STR_BYTES,
    PROTOCOL_VERSION,
    STEP_COLUMNS,
    WIRE_DTYPES,
    check_step_values,
    validate_step_columns,
)
from reachsafe.protocol.errors import (
    ContractError,
    DecodeError,
    DepthError,
    FieldError,
    IntRangeError,
    LengthError,
    OversizeError,
    ProtocolError,
    UnknownTypeError,
    VersionError,
)
from tests.fixtures.hostile_frames import deep_heartbeat


def step_columns(
    n: int = 3, obs_shape=(8, 8, 3), action_dim: int = 2, seed: int = 0
) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    cols = {}
    for name, spec in STEP_COLUMNS.items():
        shape = {"obs": (n, *obs_shape), "action": (n, action_dim)}.get(spec.kind, (n,))
        if spec.dtype == "bool":
            cols[name] = rng.random(shape) < 0.5
        elif spec.dtype.startswith("float"):
            cols[name] = rng.standard_normal(shape).astype(spec.dtype)
        else:
            cols[name] = rng.integers(0, 3, shape).astype(spec.dtype)
    return cols


def sample_messages() -> list[m.Message]:
    return [
        m.Hello(
            robot_id="r1", stream_id="s-1", runtime_version="0.1.0", bundle_version=-1,
            obs_shape=(64, 64, 3), action_dim=2, resume_seq=0,
        ),
        m.Steps(robot_id="r1", stream_id="s-1", seq=7, first_step=700, columns=step_columns()),
        m.Ack(stream_id="s-1", seq=7),
        m.BundleMessage(version=2, parent=1, manifest=b"{}", signature=bytes(64), files={"agent.onnx": b"\x00\x01"}),
        m.BundleMessage(version=1, parent=None, manifest=b"{}", signature=bytes(64), files={}),
        m.BundleStatus(robot_id="r1", version=2, status="rejected", reason="bad signature"),
        m.Heartbeat(sender_id="trainer", time=12.5, metrics={"train/steps": 3.0, "edge/tick_ms": 1.25}),
        m.ErrorMessage(code="decode", message="garbage", ref_type=""),
        m.HwHello(robot="r1"),
        m.HwSpec(robot="r1", obs_shape=(64, 64, 3), action_dim=2, rate_hz=20.0),
        m.HwReadFrame(robot="r1"),
        m.HwFrame(image=np.arange(48, dtype=np.uint8).reshape(4, 4, 3), t_capture=1.0, t_now=1.01, frame_id=5,
                  resetting=False),
        m.HwDrive(robot="r1", action=np.array([0.5, -1.0], np.float32)),
        m.HwOk(),
        m.HwStop(robot="r1"),
        m.HwReadSignals(robot="r1", read_id=4, confirmed=3),
        m.HwSignals(read_id=4, reward=0.5, cost=1.0, terminated=False, truncated=True, episode=3, step=99,
                    resetting=False),
        m.HwFault(robot="r1", fault="partition", duration_s=2.0, rate=0.5, seed=7),
    ]  # fmt: skip


def assert_same(a: m.Message, b: m.Message) -> None:
    assert type(a) is type(b)
    for f in dataclasses.fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, np.ndarray):
            assert x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x, y)
        elif f.name == "columns":
            assert x.keys() == y.keys()
            for k in x:
                assert x[k].dtype == y[k].dtype and np.array_equal(x[k], y[k])
        else:
            assert x == y and type(x) is type(y), f.name


def raw(body: dict) -> bytes:
    return msgpack.packb(body, use_bin_type=True)


def valid_body(msg: m.Message) -> dict:
    return msgpack.unpackb(codec.encode(msg), raw=False, ext_hook=lambda c, d: msgpack.ExtType(c, d))


def test_every_message_type_is_covered_and_round_trips():
    samples = sample_messages()
    assert {type(s).TYPE for s in samples} == set(m.MESSAGE_TYPES)
    for msg in samples:
        data = codec.encode(msg)
        body = msgpack.unpackb(data, raw=False, ext_hook=lambda c, d: msgpack.ExtType(c, d))
        assert body["v"] == PROTOCOL_VERSION and body["type"] == msg.TYPE
        assert_same(codec.decode(data), msg)


def test_decoded_arrays_are_readonly_views():
    out = codec.decode(codec.encode(sample_messages()[1]))
    obs = out.columns["obs"]
    assert not obs.flags.writeable and obs.flags.c_contiguous
    assert out.n_steps == 3


def test_numpy_scalars_are_accepted_and_converted():
    msg = m.Ack(stream_id="s", seq=np.int64(4))
    assert type(msg.seq) is int
    assert codec.decode(codec.encode(msg)) == msg


@settings(max_examples=60, deadline=None)
@given(
    hnp.arrays(
        dtype=st.sampled_from(sorted(WIRE_DTYPES)).map(np.dtype),
        shape=hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5),
    )
)
def test_array_ext_round_trip(arr):
    out = codec.unpack_array(codec.pack_array(arr))
    assert out.dtype == arr.dtype and out.shape == arr.shape
    assert np.array_equal(out, arr, equal_nan=arr.dtype.kind == "f")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(1, 6),
    h=st.integers(1, 9),
    action_dim=st.integers(1, 4),
    seed=st.integers(0, 2**16),
    seq=st.integers(0, 2**63 - 1),
)
def test_steps_round_trip_property(n, h, action_dim, seed, seq):
    cols = step_columns(n, (h, h + 1, 3), action_dim, seed)
    msg = m.Steps(robot_id="r", stream_id="s", seq=seq, first_step=seq, columns=cols)
    out = codec.decode(codec.encode(msg))
    assert_same(out, msg)
    assert validate_step_columns(out.columns, (h, h + 1, 3), action_dim) == n


def test_big_endian_input_is_sent_little_endian():
    arr = np.arange(6, dtype=">f4").reshape(2, 3)
    out = codec.unpack_array(codec.pack_array(arr))
    assert out.dtype == np.dtype("<f4") and np.array_equal(out, arr)


def _depth(value: object) -> int:
    if isinstance(value, dict):
        return 1 + max(map(_depth, [*value, *value.values()]), default=0)
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    return 0


def _leaves(value: object) -> list[object]:
    if isinstance(value, dict):
        return [x for kv in value.items() for v in kv for x in _leaves(v)]
    if isinstance(value, list):
        return [x for v in value for x in _leaves(v)]
    return [value]


def _ext_error(ext: msgpack.ExtType) -> type[ProtocolError] | None:
    if ext.code != ARRAY_EXT_TYPE:
        return DecodeError
    try:
        codec.unpack_array(ext.data)
    except ProtocolError as exc:
        return type(exc)
    return None


def expected_errors(data: bytes) -> tuple[type[ProtocolError], ...]:
    """The typed errors ``decode(data)`` may raise, found by a reference parse: plain msgpack with the
    ext payloads kept, then the checks of docs/protocol.md section 2.2 in their order (empty: valid)."""
    try:  # small frames only: the depth of a parsed value is computed recursively here
        body = msgpack.unpackb(
            data, raw=False, strict_map_key=True, ext_hook=msgpack.ExtType, max_str_len=MAX_STR_BYTES
        )
    except Exception:  # not msgpack: a DecodeError, or one of its limit subclasses found on the way, or an
        # OversizeError for an array header before the break that is over the array limit (checked as read)
        return (DecodeError, OversizeError)
    limits = (DepthError,) * (_depth(body) > MAX_DEPTH) + (IntRangeError,) * any(
        type(x) is int and x > INT64_MAX for x in _leaves(body)
    )  # fmt: skip
    if limits:
        return limits
    ext_errors = tuple({e for x in _leaves(body) if isinstance(x, msgpack.ExtType) and (e := _ext_error(x))})
    if ext_errors:
        return ext_errors
    if not isinstance(body, dict) or not all(isinstance(k, str) for k in body):
        return (DecodeError,)
    if type(body.get("v")) is not int or body["v"] != PROTOCOL_VERSION:
        return (VersionError,)
    if not isinstance(body.get("type"), str):
        return (FieldError,)
    if body["type"] not in m.MESSAGE_TYPES:
        return (UnknownTypeError,)
    return (FieldError,)  # or a valid message


def assert_decodes_or_fails_as_expected(data: bytes) -> None:
    expected = expected_errors(data)
    try:
        msg = codec.decode(data)
    except ProtocolError as exc:
        assert isinstance(exc, expected), (type(exc).__name__, expected, str(exc)[:200])
        assert len(m.ErrorMessage.from_exception(exc).message) <= m.MAX_ERROR_TEXT
    else:
        assert expected == (FieldError,) and codec.decode(codec.encode(msg)).TYPE == msg.TYPE


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.binary(max_size=200))
def test_random_bytes_raise_the_typed_error_of_their_first_bad_part(data):
    assert_decodes_or_fails_as_expected(data)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.data())
def test_corrupted_valid_messages_raise_the_typed_error_of_their_first_bad_part(data):
    encoded = bytearray(codec.encode(data.draw(st.sampled_from(sample_messages()))))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(encoded) - 1))
        encoded[i] = data.draw(st.integers(0, 255))
    assert_decodes_or_fails_as_expected(bytes(encoded))


@pytest.mark.parametrize("cut", [1, 5, 20])
def test_truncated_message_is_decode_error(cut):
    data = codec.encode(sample_messages()[0])
    with pytest.raises(DecodeError):
        codec.decode(data[:-cut])


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",
        b"\x91" * 5000 + b"\x00",
        raw([1, 2, 3]),
        raw("hello"),
        raw({1: 2}),
        raw({"v": 1, "type": "ack"}) + b"\x00",
        raw({"v": 1, "type": "ack", b"k": 1, "z": 2}),
    ],
    ids=["empty", "reserved-byte", "deep-nesting", "array", "string", "int-key", "trailing-bytes", "bin-key"],
)
def test_malformed_msgpack_is_decode_error(data):
    with pytest.raises(DecodeError):
        codec.decode(data)


@pytest.mark.parametrize("v", [None, 0, 2, "1", 1.0, True])
def test_wrong_version_is_version_error(v):
    body = valid_body(m.Ack(stream_id="s", seq=1))
    if v is None:
        del body["v"]
    else:
        body["v"] = v
    with pytest.raises(VersionError) as info:
        codec.decode(raw(body))
    assert info.value.code == "version"


def test_unknown_type_is_unknown_type_error():
    with pytest.raises(UnknownTypeError) as info:
        codec.decode(raw({"v": 1, "type": "launch_missiles"}))
    assert info.value.msg_type == "launch_missiles"


def test_non_string_type_is_field_error():
    with pytest.raises(FieldError):
        codec.decode(raw({"v": 1, "type": 3}))


@pytest.mark.parametrize(
    "msg, field, value",
    [
        (m.Ack(stream_id="s", seq=1), "seq", "1"),
        (m.Ack(stream_id="s", seq=1), "seq", -1),
        (m.Ack(stream_id="s", seq=1), "seq", True),
        (m.Ack(stream_id="s", seq=1), "stream_id", b"s"),
        (
            m.HwSignals(
                read_id=0,
                reward=0.0,
                cost=0.0,
                terminated=False,
                truncated=False,
                episode=0,
                step=0,
                resetting=False,
            ),
            "terminated",
            1,
        ),
        (sample_messages()[0], "obs_shape", [64, 64]),
        (sample_messages()[0], "obs_shape", [64, 0, 3]),
        (sample_messages()[5], "status", "exploded"),
        (sample_messages()[6], "metrics", {"a": "x"}),
        (sample_messages()[6], "metrics", [1.0]),
        (sample_messages()[3], "files", {"agent.onnx": "text"}),
        (sample_messages()[3], "parent", 0),
    ],
    ids=lambda x: x if isinstance(x, str) else None,
)
def test_wrong_field_type_is_field_error(msg, field, value):
    body = valid_body(msg)
    body[field] = value
    with pytest.raises(FieldError) as info:
        codec.decode(raw(body))
    assert field in str(info.value) and info.value.msg_type == msg.TYPE


def test_array_where_scalar_expected_is_field_error():
    body = valid_body(m.Ack(stream_id="s", seq=1))
    body["seq"] = msgpack.ExtType(ARRAY_EXT_TYPE, codec.pack_array(np.zeros(3, np.int64)))
    with pytest.raises(FieldError):
        codec.decode(raw(body))


def test_missing_and_extra_fields_are_field_errors():
    body = valid_body(m.Ack(stream_id="s", seq=1))
    del body["seq"]
    with pytest.raises(FieldError, match="missing fields \\['seq'\\]"):
        codec.decode(raw(body))
    body = valid_body(m.Ack(stream_id="s", seq=1))
    body["surprise"] = 1
    with pytest.raises(FieldError, match="unexpected fields \\['surprise'\\]"):
        codec.decode(raw(body))


def test_bad_step_columns_are_field_errors():
    for mutate in (
        lambda c: c.pop("cost"),
        lambda c: c.update(extra=np.zeros(3, np.float32)),
        lambda c: c.update(reward=c["reward"].astype(np.float64)),
        lambda c: c.update(reward=c["reward"][:2]),
        lambda c: c.update(action=c["action"][:, 0]),
    ):
        cols = step_columns()
        mutate(cols)
        body = valid_body(m.Steps(robot_id="r", stream_id="s", seq=0, first_step=0, columns=step_columns()))
        body["columns"] = {k: msgpack.ExtType(ARRAY_EXT_TYPE, codec.pack_array(v)) for k, v in cols.items()}
        with pytest.raises(FieldError):
            codec.decode(raw(body))


def test_validate_step_columns_checks_spec():
    cols = step_columns(4, (8, 8, 3), 2)
    assert validate_step_columns(cols, (8, 8, 3), 2) == 4
    with pytest.raises(FieldError, match="'obs'"):
        validate_step_columns(cols, (64, 64, 3), 2)
    with pytest.raises(FieldError, match="'action'"):
        validate_step_columns(cols, (8, 8, 3), 3)
    with pytest.raises(FieldError, match="empty"):
        validate_step_columns(step_columns(0), None, None)


def _ext_message(payload: bytes) -> bytes:
    body = valid_body(m.HwDrive(robot="r", action=np.zeros(2, np.float32)))
    body["action"] = msgpack.ExtType(ARRAY_EXT_TYPE, payload)
    return raw(body)


_GOOD = codec.pack_array(np.zeros(2, np.float32))  # header: 2 + 7 + 8 = 17 bytes, padded to 24
_F16 = struct.pack("<BB7sQ", 1, 7, b"float16", 2)
BAD_EXTS = {
    "non-whitelisted dtype": _F16 + bytes(8 - len(_F16) % 8) + bytes(4),
    "shape/bytes mismatch (short)": _GOOD[:-1],
    "shape/bytes mismatch (long)": _GOOD + b"\x00",
    "truncated header": _GOOD[:5],
    "too many dims": bytes([9, 5]) + b"uint8",
    "nonzero padding": _GOOD[:20] + b"\x01" + _GOOD[21:],
}


@pytest.mark.parametrize("payload", BAD_EXTS.values(), ids=BAD_EXTS.keys())
def test_bad_array_ext_is_decode_error(payload):
    with pytest.raises(DecodeError):
        codec.decode(_ext_message(payload))


def test_other_ext_types_and_bad_bools_are_decode_errors():
    other_ext = raw({"v": 1, "type": "hw_drive", "robot": "r", "action": msgpack.ExtType(2, _GOOD)})
    with pytest.raises(DecodeError, match="extension type 2"):
        codec.decode(other_ext)
    bad_bool = codec.pack_array(np.zeros(3, np.bool_))[:-1] + b"\x02"
    with pytest.raises(DecodeError, match="bool"):
        codec.unpack_array(bad_bool)


def test_wrong_dtype_for_field_is_field_error():
    body = valid_body(m.HwDrive(robot="r", action=np.zeros(2, np.float32)))
    body["action"] = msgpack.ExtType(ARRAY_EXT_TYPE, codec.pack_array(np.zeros(2, np.float64)))
    with pytest.raises(FieldError, match="float32"):
        codec.decode(raw(body))


def test_encoding_non_whitelisted_dtype_is_field_error():
    with pytest.raises(FieldError, match="float16"):
        codec.pack_array(np.zeros(2, np.float16))
    cols = step_columns()
    cols["extra"] = np.zeros(3, dtype=object)
    with pytest.raises(FieldError):
        m.Steps(robot_id="r", stream_id="s", seq=0, first_step=0, columns=cols)


def test_oversize_message_and_array():
    msg = m.HwFrame(
        image=np.zeros((64, 64, 3), np.uint8), t_capture=0.0, t_now=0.0, frame_id=0, resetting=False
    )
    data = codec.encode(msg)
    with pytest.raises(OversizeError):
        codec.decode(data, max_message_bytes=len(data) - 1)
    with pytest.raises(OversizeError):
        codec.decode(data, max_array_bytes=64 * 64 * 3 - 1)
    assert codec.decode(data, max_message_bytes=len(data), max_array_bytes=64 * 64 * 3).frame_id == 0
    with pytest.raises(OversizeError):
        codec.encode(msg, max_message_bytes=1000)
    # a header claiming a huge array is refused before anything is allocated
    huge = struct.pack("<BB5s2Q", 2, 5, b"uint8", 1 << 30, 1 << 30)
    with pytest.raises(OversizeError):
        codec.decode(_ext_message(huge + bytes(8 - len(huge) % 8)))


def test_error_message_from_exception():
    try:
        codec.decode(raw({"v": 1, "type": "nope"}))
    except ProtocolError as exc:
        reply = m.ErrorMessage.from_exception(exc)
    assert (reply.code, reply.ref_type) == ("unknown_type", "nope")
    assert_same(codec.decode(codec.encode(reply)), reply)


def test_constructing_invalid_message_fails_early():
    with pytest.raises(FieldError):
        m.HwDrive(robot="r", action=[0.0, 1.0])
    with pytest.raises(TypeError):
        codec.encode({"v": 1, "type": "ack"})


DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"


def _hex_dumps(text: str) -> list[bytes]:
    dumps, current = [], []
    for line in text.splitlines():
        match = re.match(r"^[0-9a-f]{4}  ((?:[0-9a-f]{2} )*[0-9a-f]{2})", line)
        if match:
            current.append(bytes.fromhex(match.group(1)))
        elif current:
            dumps.append(b"".join(current))
            current = []
    return dumps


def test_doc_worked_examples_match_the_codec():
    dumps = _hex_dumps(DOC.read_text())
    assert dumps[0] == codec.encode(m.Ack(stream_id="s-1", seq=7))
    assert dumps[1] == codec.encode(m.HwDrive(robot="r1", action=np.array([0.5, -1.0], np.float32)))


def test_doc_lists_every_step_column_and_message_type():
    text = DOC.read_text()
    for name, spec in STEP_COLUMNS.items():
        assert re.search(rf"^\| `{name}` \| {spec.dtype} \|", text, re.M), name
    for type_name in m.MESSAGE_TYPES:
        assert f"`{type_name}`" in text, type_name


_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=8)
    | st.binary(max_size=8)
    | st.builds(msgpack.ExtType, st.sampled_from([ARRAY_EXT_TYPE, 2]), st.binary(max_size=40))
    | st.sampled_from(
        [msgpack.ExtType(ARRAY_EXT_TYPE, codec.pack_array(a)) for a in step_columns(2).values()]
    )
)
_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=6) | st.binary(max_size=3), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(
    st.sampled_from(sample_messages()), st.dictionaries(st.text(max_size=12), _values, max_size=4), st.data()
)
def test_structured_garbage_raises_the_typed_error_of_its_first_bad_part(msg, overlay, data):
    """Valid v/type with fields replaced, added or removed by arbitrary msgpack values."""
    body = valid_body(msg)
    for name in data.draw(st.lists(st.sampled_from(sorted(body)), max_size=2)):
        body.pop(name, None)
    for name, value in overlay.items():
        body[data.draw(st.sampled_from([name, *sorted(valid_body(msg))]))] = value
    assert_decodes_or_fails_as_expected(raw(body))


# --- large messages: arrays of >= 16 KiB are decoded as views of the received buffer --------

_BIG = np.arange(20000, dtype=np.float64).reshape(100, 200)  # 160 kB: over the view threshold
_BIG_EXT = msgpack.ExtType(ARRAY_EXT_TYPE, codec.pack_array(_BIG))


def _plain_unpack(data: bytes) -> object:
    """The reference: the same limit walk, then msgpack decoding every ext payload from its own copy."""
    codec._walk(memoryview(data))

    def hook(code: int, payload: bytes) -> np.ndarray:
        if code != ARRAY_EXT_TYPE:
            raise DecodeError("not an array")
        return codec.unpack_array(payload)

    return msgpack.unpackb(
        data, raw=False, strict_map_key=True, ext_hook=hook, max_str_len=MAX_STR_BYTES,
        max_bin_len=len(data), max_ext_len=len(data), max_array_len=MAX_CONTAINER_LEN, max_map_len=MAX_CONTAINER_LEN,
    )  # fmt: skip


def _canonical(value: object) -> object:
    if isinstance(value, np.ndarray):
        return ("ndarray", value.dtype.str, value.shape, value.tobytes())
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_canonical(v) for v in value]
    if isinstance(value, float):  # NaN equals NaN here
        return ("float", value.hex())
    return value


def _outcome(fn, data: bytes) -> object:  # noqa: ANN001
    try:
        return _canonical(fn(data))
    except Exception as exc:  # the two decoders must fail alike, not with the same text
        return ("error", isinstance(exc, ProtocolError) or type(exc).__name__)


def _viewed(data: bytes) -> object:
    return codec._unpack_body(data, len(data), 1 << 30)


def test_large_steps_arrays_are_readonly_views_of_the_frame():
    msg = m.Steps(robot_id="r", stream_id="s", seq=0, first_step=0, columns=step_columns(16, (64, 64, 3)))
    data = codec.encode(msg)
    out = codec.decode(data)
    assert_same(out, msg)
    obs = out.columns["obs"]
    assert np.shares_memory(obs, np.frombuffer(data, np.uint8)) and not obs.flags.writeable
    writable = bytearray(data)  # even from a writable buffer, decoded arrays are read-only
    assert not codec.decode(writable).columns["obs"].flags.writeable


def test_large_unaligned_array_is_copied_aligned():
    for pad in range(8):  # the ext's data starts at a different offset modulo 8 each time
        data = raw({"k" * (pad + 1): _BIG_EXT})
        arr = _viewed(data)["k" * (pad + 1)]
        assert arr.flags.aligned and not arr.flags.writeable and np.array_equal(arr, _BIG)


def test_large_message_with_every_msgpack_format_decodes_as_msgpack_does():
    body = {
        "ints": [0, 127, -1, -32, -33, 255, 256, 65536, 2**32, 2**63 - 1, -(2**7), -(2**15), -(2**31), -(2**63)],
        "floats": [0.5, 1e30, -2.25],
        "nil/bools": [None, True, False],
        "str8": "s" * 40, "str16": "t" * 300, "str32": "u" * 70000,
        "bin8": b"b" * 3, "bin16": b"c" * 300, "bin32": b"d" * 70000,
        "array16": list(range(20)), "map16": {str(i): i for i in range(20)},
        "fixext/ext8 arrays": [msgpack.ExtType(1, codec.pack_array(np.zeros(0, np.uint8))),
                               msgpack.ExtType(1, codec.pack_array(np.ones(3, np.int32)))],
        "big": [_BIG_EXT, {"again": _BIG_EXT}],
        "frames": msgpack.ExtType(ARRAY_EXT_TYPE, codec.pack_array(np.ones((5, 64, 64, 3), np.uint8))),
    }  # fmt: skip
    for single_float in (False, True):  # float64 and float32 tokens
        data = msgpack.packb(body, use_bin_type=True, use_single_float=single_float)
        assert _outcome(_viewed, data) == _outcome(_plain_unpack, data)
        assert np.shares_memory(_viewed(data)["frames"], np.frombuffer(data, np.uint8))


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_large_messages_decode_and_fail_exactly_as_msgpack(data):
    """Random bodies around a large array, then corrupted or cut: same result or same failure."""
    body = data.draw(st.dictionaries(st.text(max_size=6), _values, max_size=4))
    body[data.draw(st.text(max_size=4))] = data.draw(
        st.sampled_from([_BIG_EXT, [_BIG_EXT, 1], {"x": _BIG_EXT}])
    )
    encoded = bytearray(raw(body))
    head = min(len(encoded) - 1, 400)  # the structure is all in the head, except after the big array
    for _ in range(data.draw(st.integers(0, 3))):
        i = data.draw(st.integers(0, head) | st.integers(len(encoded) - 50, len(encoded) - 1))
        encoded[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.sampled_from([0, 0, 1, 7, 1000]))
    sample = bytes(encoded[: len(encoded) - cut])
    assert _outcome(_viewed, sample) == _outcome(_plain_unpack, sample)
    try:
        codec.decode(sample)
    except ProtocolError:
        pass


def test_large_message_with_a_foreign_ext_type_is_decode_error():
    data = raw({"v": 1, "type": "hw_frame", "image": _BIG_EXT, "x": msgpack.ExtType(2, b"")})
    with pytest.raises(DecodeError, match="extension type 2"):
        codec.decode(data)


# --- decoding limits: checked before msgpack builds anything (issue #24, items 1 and 2) ------


def _steps_body(**fields: object) -> dict:
    body = valid_body(m.Steps(robot_id="r", stream_id="s", seq=0, first_step=0, columns=step_columns()))
    body.update(fields)
    return body


@pytest.mark.parametrize("field", ["seq", "first_step"])
@pytest.mark.parametrize("value", [2**63, 2**64 - 1])
def test_int_outside_int64_is_int_range_error(field, value):
    with pytest.raises(IntRangeError) as info:
        codec.decode(raw(_steps_body(**{field: value})))
    assert info.value.code == "int_range" and m.ErrorMessage.from_exception(info.value).code == "int_range"
    assert getattr(codec.decode(raw(_steps_body(**{field: 2**63 - 1}))), field) == 2**63 - 1
    with pytest.raises(IntRangeError):  # nor can a sender build one
        m.Ack(stream_id="s", seq=value)


def _nested(depth: int) -> object:
    value: object = 1.0
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 1000, 100_000])
def test_deep_nesting_is_depth_error_without_recursion(depth):
    with pytest.raises(DepthError) as info:
        codec.decode(deep_heartbeat(depth))
    assert info.value.code == "depth" and len(str(info.value)) < 200


def test_nesting_at_the_limit_gets_to_the_field_check_and_is_described_briefly():
    with pytest.raises(FieldError, match="metrics") as info:
        codec.decode(deep_heartbeat(MAX_DEPTH))
    assert len(str(info.value)) < 200  # the value is described briefly, never repr'd whole


def test_error_text_never_recurses_over_or_copies_the_payload():
    with pytest.raises(FieldError) as info:
        m.Heartbeat(sender_id="r1", time=0.0, metrics=_nested(5000))  # built locally: no decode limit
    assert len(str(info.value)) < 200
    with pytest.raises(FieldError) as info:
        m.Ack(stream_id=b"x" * (1 << 20), seq=0)
    assert len(str(info.value)) < 200
    reply = m.ErrorMessage.from_exception(FieldError("x" * 10_000, msg_type="y" * 10_000))
    assert len(reply.message) == m.MAX_ERROR_TEXT and len(reply.ref_type) == MAX_ID_CHARS
    assert codec.decode(codec.encode(reply)).message == reply.message


@pytest.mark.parametrize(
    "value",
    [
        "s" * (MAX_STR_BYTES + 1),
        list(range(MAX_CONTAINER_LEN + 1)),
        {str(i): 0.0 for i in range(MAX_CONTAINER_LEN + 1)},
        [[0] * MAX_CONTAINER_LEN] * (MAX_OBJECTS // MAX_CONTAINER_LEN),
    ],
    ids=["str", "array", "map", "objects"],
)
def test_lengths_over_their_bound_are_length_errors(value):
    body = valid_body(m.Heartbeat(sender_id="r1", time=0.0))
    body["metrics"] = value
    with pytest.raises(LengthError) as info:
        codec.decode(raw(body))
    assert info.value.code == "length"


@pytest.mark.parametrize("robot_id", ["", "r" * (MAX_ID_CHARS + 1), "robot\n2", "r\x1b[31m"])
def test_ids_are_short_and_printable(robot_id):
    body = valid_body(m.Hello(robot_id="r", stream_id="s", runtime_version="t", bundle_version=-1,
                              obs_shape=(8, 8, 3), action_dim=2, resume_seq=0))  # fmt: skip
    body["robot_id"] = robot_id
    with pytest.raises(FieldError, match="robot_id"):
        codec.decode(raw(body))
    assert dataclasses.replace(
        sample_messages()[0], robot_id="r" * MAX_ID_CHARS
    ).robot_id  # the longest allowed


# --- the step record's value rules (check_step_values) ---------------------------------------


def valid_columns(n: int = 4) -> dict[str, np.ndarray]:
    cols = step_columns(n)
    cols["action"] = np.clip(cols["action"], -1, 1)
    cols["proposed"] = np.clip(cols["proposed"], -1, 1)
    cols["cost"] = np.abs(cols["cost"])
    cols["bundle_version"][0] = -1  # -1: no bundle yet
    return cols


BAD_VALUES = {
    "reward:nonfinite": ("reward", 2, np.nan),
    "cost:nonfinite": ("cost", 1, np.inf),
    "cost:below_range": ("cost", 3, -0.5),
    "action:nonfinite": ("action", (0, 1), np.nan),
    "action:above_range": ("action", (2, 0), 1.5),
    "proposed:nonfinite": ("proposed", (1, 1), -np.inf),
    "proposed:below_range": ("proposed", (3, 1), -1.01),
    "t_obs:nonfinite": ("t_obs", 0, np.nan),
    "t_act:nonfinite": ("t_act", 2, np.inf),
    "policy:above_range": ("policy", 1, 3),
    "bundle_version:below_range": ("bundle_version", 2, -2),
    "episode:below_range": ("episode", 0, -1),
}


@pytest.mark.parametrize("reason", BAD_VALUES)
def test_values_out_of_contract_are_contract_errors_naming_the_column(reason):
    cols = valid_columns()
    check_step_values(cols, 40)
    column, where, value = BAD_VALUES[reason]
    cols[column][where] = value
    with pytest.raises(ContractError) as info:
        check_step_values(cols, 40)
    row = where[0] if isinstance(where, tuple) else where
    assert info.value.reason == reason and info.value.code == "contract" and info.value.msg_type == "steps"
    assert f"'{column}'" in str(info.value) and f"step {40 + row} (row {row}" in str(info.value)
