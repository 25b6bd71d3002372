"""The durable step store (de-duplication, ACK bookkeeping, crash leftovers, reading back) and the
ingest server's pipelined group commit over a real ROUTER socket."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import zmq
from conftest import poll_until

from reachsafe.protocol.codec import decode, encode
from reachsafe.protocol.messages import Ack, ErrorMessage, Steps
from reachsafe.protocol.sockets import client_socket, server_socket
from reachsafe.trainer.daemon.ingest import IngestServer
from reachsafe.trainer.daemon.store import AppendedGroup, PendingBatch, StepStore, StoreError
from tests.fixtures.step_batches import synthetic_columns
from tests.fixtures.stored_steps import stored_batches

OBS = (4, 4, 3)


def batch(seq: int, robot: str = "r", stream: str = "s", n: int = 4) -> PendingBatch:
    msg = Steps(robot_id=robot, stream_id=stream, seq=seq, first_step=seq * n,
                columns=synthetic_columns(n, seq * n, obs_shape=OBS))  # fmt: skip
    return PendingBatch(robot, stream, seq, seq * n, n, encode(msg))


def test_duplicates_are_detected_within_and_across_groups(tmp_path: Path) -> None:
    store = StepStore(tmp_path / "st")
    assert store.put_many([batch(0), batch(1), batch(1)]) == [True, True, False]
    assert store.put_many([batch(0), batch(2), batch(0, stream="other")]) == [False, True, True]
    assert store.steps_stored == 16
    assert (
        store.acked_seq("r", "s") == 2
        and store.acked_seq("r", "other") == 0
        and store.acked_seq("x", "s") == -1
    )
    store.close()


def test_ack_is_the_contiguous_prefix_and_survives_reopen(tmp_path: Path) -> None:
    store = StepStore(tmp_path / "st")
    store.put_many([batch(0), batch(2), batch(3)])
    assert store.acked_seq("r", "s") == 0  # seq 1 missing: only 0 is covered
    store.close()
    store = StepStore(tmp_path / "st")
    assert store.acked_seq("r", "s") == 0 and store.steps_stored == 12
    assert store.put_many([batch(1), batch(2)]) == [True, False]
    assert store.acked_seq("r", "s") == 3
    store.close()


def test_unindexed_tail_from_a_crash_is_dropped_and_payloads_read_back(tmp_path: Path) -> None:
    store = StepStore(tmp_path / "st", segment_bytes=1)  # a new segment for every group
    originals = [batch(i) for i in range(3)]
    for b in originals:
        store.put_many([b])
    store.close()
    segments = sorted((tmp_path / "st").glob("seg-*.bin"))
    assert len(segments) == 3
    with segments[-1].open("ab") as f:
        f.write(b"half-written batch of a crashed daemon")
    store = StepStore(tmp_path / "st", segment_bytes=1)
    assert segments[-1].stat().st_size == len(originals[-1].payload)
    got = list(store.iter_batches())
    assert [g.payload for g in got] == [b.payload for b in originals]
    assert decode(got[1].payload).first_step == 4
    assert stored_batches(store) == [("r", "s", 0, 4), ("r", "s", 4, 4), ("r", "s", 8, 4)]
    assert [b.row for b in store.iter_batches(after_row=store.row_before_last(4))] == [got[-1].row]
    store.close()


def test_unsynced_store_keeps_the_same_contract(tmp_path: Path) -> None:
    store = StepStore(tmp_path / "st", sync=False)  # benchmark-only mode: no fsync, same bookkeeping
    payload = memoryview(batch(0).payload)  # the ingest server hands over zero-copy frame views
    assert store.put_many([PendingBatch("r", "s", 0, 0, 4, payload), batch(0)]) == [True, False]
    store.close()
    store = StepStore(tmp_path / "st")
    assert [b.payload for b in store.iter_batches()] == [bytes(payload)] and store.acked_seq("r", "s") == 0
    store.close()


def test_group_larger_than_one_insert_statement_is_indexed_atomically(tmp_path: Path) -> None:
    store = StepStore(tmp_path / "st")
    store._rows_per_insert = 2  # as if SQLite allowed only 16 parameters per statement
    assert store.put_many([batch(i) for i in range(5)]) == [True] * 5
    store.close()
    store = StepStore(tmp_path / "st")
    assert store.acked_seq("r", "s") == 4 and [b.seq for b in store.iter_batches()] == list(range(5))
    store.close()


def test_acked_seq_answers_while_a_group_is_being_synced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import reachsafe.trainer.daemon.store as store_module

    store = StepStore(tmp_path / "st")
    store.put_many([batch(0)])
    in_fsync, release = threading.Event(), threading.Event()
    real_fsync = os.fsync

    def slow_fsync(fd: int) -> None:
        in_fsync.set()
        release.wait(10)
        real_fsync(fd)

    monkeypatch.setattr(store_module.os, "fsync", slow_fsync)
    writer = threading.Thread(target=store.put_many, args=([batch(1)],))
    writer.start()
    try:
        assert in_fsync.wait(10)
        answered: list[int] = []
        reader = threading.Thread(target=lambda: answered.append(store.acked_seq("r", "s")))
        reader.start()
        reader.join(5)
        assert answered == [0]  # seq 1 is not durable yet, and the reader did not wait for it
    finally:
        release.set()
        writer.join(10)
    assert store.acked_seq("r", "s") == 1
    store.close()


def test_groups_appended_but_not_committed_count_as_stored_for_dedup_only(tmp_path: Path) -> None:
    store = StepStore(tmp_path / "st")
    first = store.append([batch(0), batch(1)])
    second = store.append([batch(1), batch(2)])  # batch 1 is on its way to the index already
    assert second.inserted == [False, True] and store.acked_seq("r", "s") == -1  # nothing readable yet
    assert store.commit(first) == [True, True] and store.acked_seq("r", "s") == 1
    assert store.commit(second) == [False, True] and store.acked_seq("r", "s") == 2
    store.append([batch(3)])  # the daemon dies before indexing it: a torn tail for the next open
    store.close()
    store = StepStore(tmp_path / "st")
    assert [b.seq for b in store.iter_batches()] == [0, 1, 2] and store.steps_stored == 12
    assert store.put_many([batch(3)]) == [True]  # the robot's resend is stored
    store.close()


def test_failed_index_commit_leaves_dead_bytes_that_reads_and_reopens_skip(tmp_path: Path) -> None:
    store = FlakyStore(tmp_path / "st", failures=0, index_failures=1)
    with pytest.raises(StoreError, match="index commit failed"):
        store.put_many([batch(0), batch(1)])
    assert store.acked_seq("r", "s") == -1 and store.steps_stored == 0
    assert store.put_many([batch(0), batch(1), batch(2)]) == [True, True, True]  # the resends
    store.close()
    segment = next((tmp_path / "st").glob("seg-*.bin"))
    assert segment.stat().st_size == 5 * len(batch(0).payload)  # two dead batches, three live ones
    store = StepStore(tmp_path / "st")
    assert [b.payload for b in store.iter_batches()] == [batch(i).payload for i in range(3)]
    assert store.acked_seq("r", "s") == 2 and store.steps_stored == 12
    assert segment.stat().st_size == 5 * len(batch(0).payload)  # dead space is not a torn tail
    store.close()


class FlakyStore(StepStore):
    """Fails the first ``failures`` group appends (as a full disk would) and ``index_failures`` index commits."""

    def __init__(self, root: Path, failures: int, index_failures: int = 0) -> None:
        super().__init__(root)
        self.failures, self.index_failures = failures, index_failures
        self.groups: list[int] = []
        self.failed_rows = 0

    def append(self, batches: Sequence[PendingBatch]) -> AppendedGroup:
        if self.failures:
            self.failures -= 1
            raise StoreError("disk full (simulated)")
        self.groups.append(len(batches))
        return super().append(batches)

    def _insert(self, rows: list) -> None:  # noqa: ANN001
        if self.index_failures:
            self.index_failures -= 1
            self.failed_rows += len(rows)
            raise sqlite3.OperationalError("database or disk is full (simulated)")
        super()._insert(rows)


@pytest.fixture
def served(
    tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[tuple[IngestServer, zmq.Socket, list[Steps]]]:
    """An IngestServer on its own thread behind a real ROUTER, a DEALER robot, and what on_batch saw."""
    ctx = zmq.Context()
    router = server_socket(ctx, zmq.ROUTER, "tcp://127.0.0.1:*")
    failures, index_failures = getattr(request, "param", (0, 0))
    store = FlakyStore(tmp_path / "st", failures, index_failures)
    seen: list[Steps] = []
    server = IngestServer(router, store, OBS, 2, lambda m, eps: seen.append(m), max_group=4)
    stop = threading.Event()
    thread = threading.Thread(target=server.serve, args=(stop,), kwargs={"poll_ms": 10})
    thread.start()
    robot = client_socket(ctx, zmq.DEALER, router.last_endpoint.decode())
    try:
        yield server, robot, seen
    finally:
        stop.set()
        thread.join(timeout=10)
        robot.close(linger=0)
        router.close(linger=0)
        ctx.term()
        store.close()
    assert not thread.is_alive()


def acks_until(
    robot: zmq.Socket, server: IngestServer, last: int, resend: list[bytes] | None = None
) -> list[int]:
    """ACKed seqs until ``last`` is ACKed; each ACK must already be durable in the store.

    With ``resend``, sends those frames again once if no ACK came for 1 s (a runtime's resend timeout).
    """
    got: list[int] = []
    quiet_since = time.monotonic()
    while not got or got[-1] < last:
        assert time.monotonic() - quiet_since < 10, f"no ACK for 10 s; got {got}"
        if resend is not None and time.monotonic() - quiet_since > 1.0:
            for frame in resend:
                robot.send(frame)
            resend = None
        if not robot.poll(100):
            continue
        msg = decode(robot.recv())
        if not isinstance(msg, Ack):  # heartbeats
            continue
        assert server.store.acked_seq("r", "s") >= msg.seq  # ACK means stored
        got.append(msg.seq)
        quiet_since = time.monotonic()
    return got


def test_pipelined_groups_ack_only_stored_batches_and_dedupe_resends(served) -> None:  # noqa: ANN001
    server, robot, seen = served
    frames = [batch(i).payload for i in range(12)]
    for f in frames + frames[3:9]:  # a resend burst overlapping groups still being committed
        robot.send(f)
    acks = acks_until(robot, server, 11)
    assert acks == sorted(acks)
    assert [m.seq for m in seen] == list(range(12))  # on_batch: each batch once, in stream order
    poll_until(lambda: server.duplicates == 6, 10, what="the resent batches to be recognised as duplicates")
    assert server.store.steps_stored == 48 and len(seen) == 12
    assert max(server.store.groups) <= 4 and len(server.store.groups) >= 3
    assert [b.payload for b in server.store.iter_batches()] == frames  # bytes stored as received


@pytest.mark.parametrize("served", [(1, 0), (0, 1)], indirect=True, ids=["append", "index"])
def test_failed_commit_is_not_acked_and_resent_batches_are_stored(served) -> None:  # noqa: ANN001
    server, robot, seen = served
    frames = [batch(i).payload for i in range(3)]
    for f in frames:
        robot.send(f)
    acks_until(robot, server, 2, resend=frames)
    assert sorted(m.seq for m in seen) == [0, 1, 2] and server.store.steps_stored == 12
    store = server.store
    assert store.failures == 0 and store.index_failures == 0
    assert [b.payload for b in sorted(store.iter_batches(), key=lambda b: b.seq)] == frames
    poll_until(
        lambda: server.duplicates == sum(store.groups) - 3 - store.failed_rows,
        10,
        what="resends counted as duplicates",
    )


def next_error(robot: zmq.Socket) -> ErrorMessage:
    """The next `error` reply (heartbeats skipped), within 10 s."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if robot.poll(100) and isinstance(msg := decode(robot.recv()), ErrorMessage):
            return msg
    raise AssertionError("no error reply within 10 s")


def test_shapes_that_passed_once_do_not_let_other_shapes_through(served) -> None:  # noqa: ANN001
    server, robot, seen = served

    def steps(seq: int, n: int = 4, obs: tuple[int, ...] = OBS, action_dim: int = 2) -> bytes:
        cols = synthetic_columns(n, seq * 4, obs_shape=obs, action_dim=action_dim)
        return encode(Steps(robot_id="r", stream_id="s", seq=seq, first_step=seq * 4, columns=cols))

    robot.send(steps(0))
    assert acks_until(robot, server, 0) == [0]
    for bad in (steps(1, obs=(4, 5, 3)), steps(1, action_dim=3), steps(1, n=3, obs=(5, 4, 3))):
        robot.send(bad)
        err = next_error(robot)
        assert err.code == "field" and "shape" in err.message
    robot.send(steps(1, n=3))  # another N with the run's shapes is fine
    assert acks_until(robot, server, 1)[-1] == 1
    assert [m.seq for m in seen] == [0, 1] and server.errors["field"] == 3
