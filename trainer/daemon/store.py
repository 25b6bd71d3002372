"""Durable step store of the trainer daemon: every `steps` batch a robot sent, exactly once.

Layout of the store directory:
    seg-NNNNNN.bin   append-only segment files holding the batches' encoded `steps` messages
                     exactly as received (already validated by the codec: no re-encoding)
    index.sqlite     one row per batch, UNIQUE(robot_id, stream_id, seq) → (segment, offset, length)

A group commit has two steps: :meth:`StepStore.append` writes every new payload with one
write and fsyncs the segment; :meth:`StepStore.commit` then inserts the group's index rows in one
SQLite transaction (WAL, ``synchronous=FULL``: the commit returns once the WAL is fsynced).
``put_many`` does both; the ingest server runs them on two threads, so that one group's index
commit overlaps the next group's segment write + fsync. A batch therefore exists for readers and
is ACKed only after both its bytes and its index row are on disk, and index rows are committed in
the order their bytes were appended. A crash in between leaves unindexed bytes at the segment's
tail, which the next open truncates; an index commit that fails leaves its group's bytes as dead
space that no index row points to (the robots resend those batches). Batches that a robot
resends (after either side restarted) are recognised as duplicates before anything is written,
also against groups appended but not yet committed, and still ACKed. A new batch whose
``first_step`` does not continue its stream's known batches (stored or on their way) is refused
(:class:`Discontinuous`): it is neither written nor ACKed.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from reachsafe.protocol.constants import MAX_AHEAD_SEQS
from reachsafe.protocol.files import fsync_dir

logger = logging.getLogger(__name__)

SEGMENT_BYTES = 256 << 20

_SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    robot_id TEXT NOT NULL,
    stream_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    first_step INTEGER NOT NULL,
    n_steps INTEGER NOT NULL,
    segment INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    length INTEGER NOT NULL,
    UNIQUE (robot_id, stream_id, seq)
);
"""
_INSERT = (
    "INSERT INTO batches (robot_id, stream_id, seq, first_step, n_steps, segment, offset, length) VALUES "
)
_ROW = "(?, ?, ?, ?, ?, ?, ?, ?)"


class StoreError(RuntimeError):
    """The step store cannot be opened or written (disk full, wrong directory, damaged index)."""


@dataclass(frozen=True)
class PendingBatch:
    """A received batch to store: its identity, its place in the stream and the raw encoded message."""

    robot_id: str
    stream_id: str
    seq: int
    first_step: int
    n_steps: int
    payload: bytes | memoryview  # the encoded message as received (a zero-copy frame view is fine)


@dataclass(frozen=True)
class Discontinuous:
    """Outcome of a refused batch: its ``first_step`` breaks its stream's step numbering."""

    reason: str  # what the stream's known neighbours require, for the error reply


#: Per submitted batch: True (new, stored), False (a duplicate) or Discontinuous (refused).
Outcome = bool | Discontinuous


@dataclass(frozen=True)
class AppendedGroup:
    """A group whose new batches are durably in a segment but not yet indexed (see ``append``)."""

    fresh: list[PendingBatch]  # the new batches, in submission order
    rows: list[tuple[str, str, int, int, int, int, int, int]]  # their index rows
    inserted: list[Outcome]  # per submitted batch


@dataclass(frozen=True)
class StoredBatch:
    row: int
    robot_id: str
    stream_id: str
    seq: int
    first_step: int
    n_steps: int
    payload: bytes


class _StreamAcks:
    """The stored batches of one stream: all of seq 0..contiguous, plus the ones beyond a gap.

    ``end`` is the step after batch ``contiguous``; ``ahead`` maps each seq beyond the gap to its
    (first_step, n_steps), what the numbering of a batch that arrives later must fit between.
    """

    __slots__ = ("contiguous", "end", "ahead")

    def __init__(self) -> None:
        self.contiguous = -1
        self.end = 0
        self.ahead: dict[int, tuple[int, int]] = {}

    def __contains__(self, seq: int) -> bool:
        return seq <= self.contiguous or seq in self.ahead

    def add(self, seq: int, first_step: int, n_steps: int) -> None:
        if seq in self:
            return
        self.ahead[seq] = (first_step, n_steps)
        while (nxt := self.ahead.pop(self.contiguous + 1, None)) is not None:
            self.contiguous += 1
            self.end = nxt[0] + nxt[1]


def _discontinuity(
    b: PendingBatch, acks: _StreamAcks | None, pending: dict[int, tuple[int, int]]
) -> str | None:
    """Why ``b.first_step`` cannot follow its stream's known batches (None: it can).

    Batch k+1 starts where batch k ends and a stream starts at step 0; across batches not seen yet
    each holds at least one step. ``pending``: the stream's batches appended but not yet committed.
    """
    lo_seq, lo_end = (acks.contiguous, acks.end) if acks is not None else (-1, 0)
    if b.seq - lo_seq > MAX_AHEAD_SEQS:
        return f"seq {b.seq} is more than {MAX_AHEAD_SEQS} batches beyond seq {lo_seq}, the last acknowledged one"
    hi: tuple[int, int] | None = None  # (seq, first_step) of the nearest known batch after b
    for seq, (first, n) in [*(acks.ahead.items() if acks is not None else ()), *pending.items()]:
        if lo_seq < seq < b.seq:
            lo_seq, lo_end = seq, first + n
        elif seq > b.seq and (hi is None or seq < hi[0]):
            hi = (seq, first)
    earliest = lo_end + (b.seq - lo_seq - 1)
    if b.first_step < earliest or (b.seq == lo_seq + 1 and b.first_step != lo_end):
        exact = b.seq == lo_seq + 1
        return (
            f"seq {b.seq} starts at step {b.first_step}, but "
            + (f"seq {lo_seq} ends at step {lo_end}" if lo_seq >= 0 else "a stream starts at step 0")
            + ("" if exact else f", so seq {b.seq} cannot start before step {earliest}")
        )
    if hi is not None:
        latest = hi[1] - (hi[0] - b.seq - 1)
        end = b.first_step + b.n_steps
        if end > latest or (hi[0] == b.seq + 1 and end != hi[1]):
            return f"seq {b.seq} ends at step {end}, but seq {hi[0]} starts at step {hi[1]}"
    return None


class StepStore:
    """Append-only, de-duplicating, crash-safe store of step batches (thread-safe)."""

    def __init__(self, root: str | Path, segment_bytes: int = SEGMENT_BYTES, *, sync: bool = True) -> None:
        """Open (or create) the store at ``root``.

        ``sync=False`` skips every fsync (ACKed data may then be lost in a power cut): only for
        benchmarks that measure what durability costs, never for a daemon.
        """
        self.root = Path(root)
        self.segment_bytes = segment_bytes
        self.sync = sync
        self._file_lock = threading.Lock()  # the segment file: one appender
        self._db_lock = threading.Lock()  # the SQLite connection
        self._lock = threading.Lock()  # _acks, _pending, steps_stored: held briefly, never across I/O
        self._acks: dict[tuple[str, str], _StreamAcks] = {}
        # appended, not yet committed: stream -> seq -> (first_step, n_steps)
        self._pending: dict[tuple[str, str], dict[int, tuple[int, int]]] = {}
        self.steps_stored = 0
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(self.index_path), check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={'FULL' if sync else 'OFF'}")
            self._db.executescript(_SCHEMA)
            self._rows_per_insert = max(1, self._db.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // 8)
            rows = self._db.execute(
                "SELECT robot_id, stream_id, seq, first_step, n_steps FROM batches"
            ).fetchall()
            last = self._db.execute(
                "SELECT segment, MAX(offset + length) FROM batches WHERE segment = (SELECT MAX(segment) FROM batches)"
            ).fetchone()
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(
                f"cannot open step store {self.root}: {exc}; check the path and free disk space"
            ) from exc
        for robot_id, stream_id, seq, first, n in rows:
            self._acks.setdefault((robot_id, stream_id), _StreamAcks()).add(seq, first, n)
            self.steps_stored += n
        self._segment = int(last[0]) if last[0] is not None else 0
        self._open_segment(int(last[1]) if last[1] is not None else 0)
        logger.info("step store %s: %d steps in %d streams", self.root, self.steps_stored, len(self._acks))

    @property
    def index_path(self) -> Path:
        return self.root / "index.sqlite"

    def _segment_path(self, segment: int) -> Path:
        return self.root / f"seg-{segment:06d}.bin"

    def _open_segment(self, valid_bytes: int) -> None:
        """Open the current segment for appending, cutting off any unindexed tail a crash left."""
        path = self._segment_path(self._segment)
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        size = os.fstat(self._fd).st_size
        if size > valid_bytes:
            logger.warning(
                "step store: dropping %d unacknowledged bytes at the end of %s", size - valid_bytes, path
            )
            os.ftruncate(self._fd, valid_bytes)
            os.fsync(self._fd)
        os.lseek(self._fd, valid_bytes, os.SEEK_SET)
        self._offset = valid_bytes
        fsync_dir(self.root)

    def put_many(self, batches: Sequence[PendingBatch]) -> list[Outcome]:
        """Store ``batches`` durably; True for each newly stored, False for a duplicate (Discontinuous: refused).

        Returns only after data and index are on disk: the caller may then ACK every batch.
        ``acked_seq`` stays answerable (from memory) while a group is being written.
        """
        return self.commit(self.append(batches))

    def append(self, batches: Sequence[PendingBatch]) -> AppendedGroup:
        """Write the new ones of ``batches`` to the segment and fsync it; nothing is indexed yet.

        Pass the result to :meth:`commit`, in append order; until then its batches count as
        duplicates for later groups but are neither readable nor ACKed. A new batch that does not
        continue its stream's numbering is refused (``Discontinuous``, nothing written). StoreError
        if the write fails (its bytes are then cut off again).
        """
        with self._file_lock:
            fresh: list[PendingBatch] = []
            inserted: list[Outcome] = []
            with self._lock:
                for b in batches:
                    stream = (b.robot_id, b.stream_id)
                    acks = self._acks.get(stream)
                    pending = self._pending.setdefault(stream, {})
                    if b.seq in pending or (acks is not None and b.seq in acks):
                        inserted.append(False)
                    elif (why := _discontinuity(b, acks, pending)) is not None:
                        inserted.append(Discontinuous(why))
                    else:
                        inserted.append(True)
                        fresh.append(b)
                        pending[b.seq] = (b.first_step, b.n_steps)
                    if not pending:
                        del self._pending[stream]
            try:
                rows = self._write(fresh) if fresh else []
            except StoreError:
                self._forget(fresh)
                raise
        return AppendedGroup(fresh, rows, inserted)

    def commit(self, group: AppendedGroup) -> list[Outcome]:
        """Index an appended group in one transaction; then its batches are stored and ACKable.

        Returns ``append``'s new/duplicate flags. StoreError if the index commit fails: the
        group's bytes stay in the segment as dead space and its batches may be stored again.
        """
        if group.rows:
            with self._db_lock:
                try:
                    self._insert(group.rows)
                except sqlite3.Error as exc:
                    if self._db.in_transaction:
                        self._db.execute("ROLLBACK")
                    self._forget(group.fresh)
                    raise StoreError(
                        f"step store {self.root}: index commit failed: {exc}; check free disk space"
                    ) from exc
        with self._lock:
            for b in group.fresh:
                self._acks.setdefault((b.robot_id, b.stream_id), _StreamAcks()).add(
                    b.seq, b.first_step, b.n_steps
                )
                self.steps_stored += b.n_steps
            self._unpend(group.fresh)
        return group.inserted

    def _forget(self, fresh: list[PendingBatch]) -> None:
        """A failed group: its batches are no longer on their way (the robots resend them)."""
        with self._lock:
            self._unpend(fresh)

    def _unpend(self, fresh: list[PendingBatch]) -> None:
        """Drop ``fresh`` from the pending batches; hold ``_lock``."""
        for b in fresh:
            stream = (b.robot_id, b.stream_id)
            pending = self._pending.get(stream, {})
            pending.pop(b.seq, None)
            if not pending:
                self._pending.pop(stream, None)

    def _write(self, fresh: list[PendingBatch]) -> list[tuple[str, str, int, int, int, int, int, int]]:
        """Append ``fresh`` to the current segment (a new one when it is full) and fsync it."""
        if self._offset >= self.segment_bytes:
            os.close(self._fd)
            self._segment += 1
            self._open_segment(0)
        rows, offset = [], self._offset
        for b in fresh:
            rows.append(
                (
                    b.robot_id,
                    b.stream_id,
                    b.seq,
                    b.first_step,
                    b.n_steps,
                    self._segment,
                    offset,
                    len(b.payload),
                )
            )
            offset += len(b.payload)
        try:
            _write_all(self._fd, [b.payload for b in fresh])
            if self.sync:
                os.fsync(self._fd)
        except OSError as exc:
            os.ftruncate(self._fd, self._offset)  # forget the unindexed bytes
            os.lseek(self._fd, self._offset, os.SEEK_SET)
            raise StoreError(f"step store {self.root}: write failed: {exc}; check free disk space") from exc
        self._offset = offset
        return rows

    def _insert(self, rows: list[tuple[str, str, int, int, int, int, int, int]]) -> None:
        """Index ``rows`` in one transaction, as multi-row INSERTs rather than ``executemany``.

        sqlite3 releases the GIL around every statement step; each time, this (committer) thread
        must win it back from the busy receive thread, which can take the whole 5 ms switch
        interval. One statement for the group instead of one step per row keeps that to a few.
        """
        per = self._rows_per_insert
        chunks = [rows[i : i + per] for i in range(0, len(rows), per)]
        cur = self._db.cursor()
        if len(chunks) > 1:
            cur.execute("BEGIN IMMEDIATE")
        for chunk in chunks:  # a single statement commits atomically on its own
            cur.execute(_INSERT + ", ".join([_ROW] * len(chunk)), [v for row in chunk for v in row])
        if len(chunks) > 1:
            cur.execute("COMMIT")

    def acked_seq(self, robot_id: str, stream_id: str) -> int:
        """Highest seq such that every batch 0..seq of the stream is stored (-1: none)."""
        with self._lock:
            acks = self._acks.get((robot_id, stream_id))
            return acks.contiguous if acks is not None else -1

    def iter_batches(self, after_row: int = 0) -> Iterator[StoredBatch]:
        """Stored batches with row id > ``after_row`` in insertion order (own read connection)."""
        reader = sqlite3.connect(str(self.index_path))
        fds: dict[int, int] = {}
        try:
            cur = reader.execute(
                "SELECT id, robot_id, stream_id, seq, first_step, n_steps, segment, offset, length FROM batches "
                "WHERE id > ? ORDER BY id",
                (after_row,),
            )
            for row, robot_id, stream_id, seq, first, n, segment, offset, length in cur:
                if segment not in fds:
                    fds[segment] = os.open(self._segment_path(segment), os.O_RDONLY)
                payload = os.pread(fds[segment], length, offset)
                if len(payload) != length:
                    raise StoreError(
                        f"step store {self.root}: segment {segment} is shorter than its index says"
                    )
                yield StoredBatch(row, robot_id, stream_id, seq, first, n, payload)
        finally:
            for fd in fds.values():
                os.close(fd)
            reader.close()

    def row_before_last(self, n_steps: int) -> int:
        """Row id after which the stored batches hold the last ``n_steps`` steps (or all of them)."""
        total = 0
        with self._db_lock:
            for row, n in self._db.execute("SELECT id, n_steps FROM batches ORDER BY id DESC"):
                total += n
                if total >= n_steps:
                    return int(row) - 1
        return 0

    def close(self) -> None:
        with self._file_lock, self._db_lock:
            os.close(self._fd)
            self._db.close()


def _write_all(fd: int, chunks: list[bytes]) -> None:
    """Append every chunk (one writev where the OS allows; loops over partial writes)."""
    views = [memoryview(c) for c in chunks]
    while views:
        written = os.writev(fd, views[:1024])
        while views and written >= len(views[0]):
            written -= len(views[0])
            views.pop(0)
        if views and written:
            views[0] = views[0][written:]
