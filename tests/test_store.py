"""The durable step store: de-duplication, ACK bookkeeping, crash leftovers, reading back."""

from __future__ import annotations

from pathlib import Path

from protocol.codec import decode, encode
from protocol.messages import Steps
from trainer.replay_synthetic import synthetic_columns
from trainer.store import PendingBatch, StepStore


def batch(seq: int, robot: str = "r", stream: str = "s", n: int = 4) -> PendingBatch:
    msg = Steps(robot_id=robot, stream_id=stream, seq=seq, first_step=seq * n,
                columns=synthetic_columns(n, seq * n, obs_shape=(4, 4, 3)))  # fmt: skip
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
    assert store.step_index() == [("r", "s", 0, 4), ("r", "s", 4, 4), ("r", "s", 8, 4)]
    assert [b.row for b in store.iter_batches(after_row=store.row_before_last(4))] == [got[-1].row]
    store.close()
