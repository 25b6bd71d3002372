"""The durable step store (de-duplication, ACK bookkeeping, crash leftovers, reading back) and the
ingest server's pipelined group commit over a real ROUTER socket."""

from __future__ import annotations

import dataclasses
import os
import threading
from pathlib import Path

import pytest
from conftest import poll_until

from reachsafe.protocol.codec import decode, encode
from reachsafe.protocol.constants import MAX_AHEAD_SEQS
from reachsafe.protocol.messages import Steps
from reachsafe.trainer.daemon.store import Discontinuous, PendingBatch, StepStore, StoreError
from tests.fixtures.ingest_server import OBS, FlakyStore, acks_until, batch, next_error, running_ingest
from tests.fixtures.step_batches import synthetic_columns
from tests.fixtures.stored_steps import stored_batches


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


def at(seq: int, first_step: int, n: int = 4, stream: str = "s") -> PendingBatch:
    """A batch of ``n`` steps numbered from ``first_step`` (continuous or not)."""
    return dataclasses.replace(batch(0), stream_id=stream, seq=seq, first_step=first_step, n_steps=n)


def test_a_jump_in_first_step_is_refused_and_nothing_of_it_stored(tmp_path: Path) -> None:
    store = StepStore(tmp_path / "st")
    out = store.put_many([at(0, 0), at(1, 5), at(1, 4), at(1, 9)])  # 5: a jump; then seq 1 again: a resend
    assert out[0] is True and isinstance(out[1], Discontinuous) and out[2:] == [True, False]
    assert "seq 1 starts at step 5, but seq 0 ends at step 4" in out[1].reason
    out = store.put_many([at(0, 1, stream="t"), at(3, 10), at(2, 8, n=3), at(2, 8, n=2)])
    assert isinstance(out[0], Discontinuous) and "a stream starts at step 0" in out[0].reason
    assert out[1] is True and out[3] is True  # seq 3 beyond the gap, then the seq 2 that fits before it
    assert (
        isinstance(out[2], Discontinuous)
        and "seq 2 ends at step 11, but seq 3 starts at step 10" in out[2].reason
    )
    assert [(b.stream_id, b.seq, b.first_step) for b in store.iter_batches()] == [
        ("s", 0, 0), ("s", 1, 4), ("s", 3, 10), ("s", 2, 8)
    ]  # fmt: skip
    assert store.steps_stored == 14 and store.acked_seq("r", "s") == 3 and store.acked_seq("r", "t") == -1
    store.close()


def test_out_of_order_batches_must_fit_between_their_known_neighbours(tmp_path: Path) -> None:
    store = StepStore(tmp_path / "st")
    assert store.put_many([at(0, 0), at(3, 20)]) == [True, True]  # seqs 1, 2 in between: >= 1 step each
    for refused in (
        at(4, 23),
        at(2, 14, n=7),
        at(6, 24),
    ):  # seq 3 ends at 24; seq 2 must end at 20; 4, 5 between
        assert isinstance(store.put_many([refused])[0], Discontinuous), refused
    store.close()
    store = StepStore(tmp_path / "st")  # the numbering is known again after a restart
    group = store.append([at(1, 4, n=8)])
    assert isinstance(
        store.append([at(2, 13, n=7)]).inserted[0], Discontinuous
    )  # seq 1, on its way, ends at 12
    store.commit(group)
    assert store.put_many([at(2, 12, n=8)]) == [True]
    assert store.acked_seq("r", "s") == 3 and store.steps_stored == 24
    assert isinstance(store.put_many([at(3 + MAX_AHEAD_SEQS + 1, 10**6)])[0], Discontinuous)  # too far ahead
    store.close()


@pytest.fixture
def served(tmp_path: Path, request: pytest.FixtureRequest):  # noqa: ANN201
    """``running_ingest``; ``request.param``: its (failures, index_failures)."""
    with running_ingest(tmp_path, *getattr(request, "param", (0, 0))) as s:
        yield s


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
