"""The disk spool: recovery of torn records, deletion on ACK, the full policy, stable seqs."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reachsafe.edge_runtime.spool import Spool
from reachsafe.edge_runtime.steps import Step, to_columns
from reachsafe.protocol.codec import decode, encode
from reachsafe.protocol.messages import Steps


def _batch(spool: Spool, n: int = 4) -> tuple[bytes, int, int, int]:
    steps = [
        Step(np.zeros((8, 8, 3), np.uint8), np.zeros(2, np.float32), np.zeros(2, np.float32), 1.0, 0.0,
             False, False, 0, False, 1, 0, float(i), float(i))
        for i in range(n)
    ]  # fmt: skip
    msg = Steps("r0", spool.stream_id, spool.next_seq, spool.next_step, to_columns(steps))
    return encode(msg), msg.seq, msg.first_step, n


def _fill(spool: Spool, batches: int, n: int = 4) -> None:
    for _ in range(batches):
        spool.append(*_batch(spool, n))


def test_batches_survive_a_restart_and_seqs_continue(tmp_path) -> None:
    s = Spool(tmp_path, max_bytes=10**7, segment_bytes=10**6, fsync=False)
    _fill(s, 5)
    s2 = Spool(tmp_path, max_bytes=10**7, segment_bytes=10**6, fsync=False)
    assert s2.stream_id == s.stream_id
    assert [e.seq for e in s2.pending()] == [0, 1, 2, 3, 4]
    assert (s2.next_seq, s2.next_step) == (5, 20)
    assert s2.read(s2.pending()[3]) == s.read(s.pending()[3])


def test_torn_final_record_is_dropped(tmp_path) -> None:
    s = Spool(tmp_path, max_bytes=10**7, segment_bytes=10**6, fsync=False)
    _fill(s, 3)
    seg = s.pending()[-1].segment
    whole = seg.stat().st_size
    with open(seg, "ab") as f:  # a write torn by kill -9: the header and half the payload
        payload, *_ = _batch(s)
        f.write(len(payload).to_bytes(4, "little") + b"\0\0\0\0" + payload[: len(payload) // 2])
    s2 = Spool(tmp_path, max_bytes=10**7, segment_bytes=10**6, fsync=False)
    assert s2.torn_records == 1 and seg.stat().st_size == whole
    assert [e.seq for e in s2.pending()] == [0, 1, 2] and s2.next_seq == 3
    s2.append(*_batch(s2))  # the torn batch's seq is reused: it was never sent
    assert Spool(tmp_path, 10**7, 10**6, fsync=False).next_seq == 4


def test_a_flipped_byte_is_caught_by_the_crc(tmp_path) -> None:
    s = Spool(tmp_path, max_bytes=10**7, segment_bytes=10**6, fsync=False)
    _fill(s, 3)
    e = s.pending()[-1]
    data = bytearray(e.segment.read_bytes())
    data[e.offset + 100] ^= 0xFF
    e.segment.write_bytes(bytes(data))
    s2 = Spool(tmp_path, max_bytes=10**7, segment_bytes=10**6, fsync=False)
    assert [x.seq for x in s2.pending()] == [0, 1]


def test_a_corrupt_payload_that_still_decodes_is_caught_by_the_crc(tmp_path) -> None:
    s = Spool(tmp_path, max_bytes=10**7, segment_bytes=10**6, fsync=False)
    _fill(s, 3)
    e = s.pending()[-1]
    data = bytearray(e.segment.read_bytes())
    frames = bytes(data[e.offset : e.offset + e.length]).index(bytes(4 * 8 * 8 * 3))  # the batch's pixels
    data[e.offset + frames + 100] ^= 0x01
    corrupt = decode(bytes(data[e.offset : e.offset + e.length]))
    assert corrupt.seq == e.seq and corrupt.columns["obs"].any()  # a well-formed batch: only the CRC can tell
    e.segment.write_bytes(bytes(data))
    s2 = Spool(tmp_path, max_bytes=10**7, segment_bytes=10**6, fsync=False)
    assert [x.seq for x in s2.pending()] == [0, 1] and s2.torn_records == 1


def test_acked_segments_are_deleted_and_seqs_never_reused(tmp_path) -> None:
    payload_len = len(_batch(Spool(tmp_path / "probe", 10**7, 10**6, fsync=False))[0])
    s = Spool(tmp_path / "s", max_bytes=10**7, segment_bytes=3 * (payload_len + 8), fsync=False)
    _fill(s, 7)  # segments of 3 batches: [0,1,2] [3,4,5] [6]
    assert len(list((tmp_path / "s").glob("seg-*.log"))) == 3
    newly = s.ack(4)
    assert [e.seq for e in newly] == [0, 1, 2, 3, 4]
    assert len(list((tmp_path / "s").glob("seg-*.log"))) == 2
    s.ack(6)
    assert not list((tmp_path / "s").glob("seg-*.log")) and s.total_bytes == 0
    s2 = Spool(tmp_path / "s", max_bytes=10**7, segment_bytes=10**6, fsync=False)
    assert (s2.next_seq, s2.next_step, s2.pending()) == (7, 28, [])


def test_full_spool_drops_the_oldest_segment(tmp_path) -> None:
    payload_len = len(_batch(Spool(tmp_path / "probe", 10**7, 10**6, fsync=False))[0])
    rec = payload_len + 8
    s = Spool(tmp_path / "s", max_bytes=6 * rec, segment_bytes=2 * rec, fsync=False)
    _fill(s, 8)
    assert s.total_bytes <= 6 * rec
    assert [e.seq for e in s.pending()] == [2, 3, 4, 5, 6, 7]
    assert s.dropped_steps == 8


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    ops=st.lists(
        st.one_of(
            st.tuples(st.just("append"), st.integers(1, 5)),
            st.tuples(st.just("ack"), st.floats(0, 1)),
            st.tuples(st.just("crash"), st.booleans()),
        ),
        max_size=40,
    )
)
def test_any_mix_of_appends_acks_and_crashes_keeps_exactly_the_unacked_batches(tmp_path_factory, ops) -> None:
    """Model check: after any sequence (including kill -9 with a torn record), the spool holds exactly
    the unacked batches, and sequence numbers / step indices continue without reuse or gaps."""
    root = tmp_path_factory.mktemp("spool")
    rec = len(_batch(Spool(root / "probe", 10**7, 10**6, fsync=False))[0]) + 8
    open_spool = lambda: Spool(root / "s", max_bytes=10**7, segment_bytes=3 * rec, fsync=False)  # noqa: E731
    s = open_spool()
    issued: dict[int, int] = {}  # seq -> n_steps of every batch completely written
    acked, next_seq, next_step = -1, 0, 0
    for op, arg in ops:
        if op == "append":
            s.append(*_batch(s, arg))
            issued[next_seq] = arg
            next_seq, next_step = next_seq + 1, next_step + arg
        elif op == "ack" and next_seq > 0:
            target = acked + round(arg * (next_seq - 1 - acked))
            s.ack(target)
            acked = max(acked, target)
        elif op == "crash":
            segments = sorted((root / "s").glob("seg-*.log"))
            if arg and segments:
                with open(segments[-1], "ab") as f:
                    f.write(b"\x40\x00\x00\x00\x01\x02\x03\x04torn")
            s = open_spool()
        assert [e.seq for e in s.pending()] == [q for q in sorted(issued) if q > acked]
        assert [e.n_steps for e in s.pending()] == [issued[q] for q in sorted(issued) if q > acked]
        assert (s.next_seq, s.next_step) == (next_seq, next_step)
