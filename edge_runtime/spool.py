"""Append-only disk spool of encoded STEPS batches: what makes uploads exactly-once across crashes.

Layout of the spool directory:

- `stream.json`: the stream id (created once; a spool holds one stream, so sequence numbers keep
  counting across restarts and the trainer can de-duplicate by (robot_id, stream_id, seq)).
- `seg-<first seq, 16 digits>.log`: segments of records `u32 length | u32 crc32 | payload`
  (little endian), payload = the exact encoded `steps` message that goes on the wire.
- `acked`: the highest seq the trainer ACKed (an optimisation: fewer re-sends after a restart;
  correctness only needs the trainer's de-duplication).

Recovery (`Spool(...)` on an existing directory) reads every record and checks length and CRC.
The first bad record of a segment (a write torn by kill -9 or power loss is always the last
record of the newest segment) is dropped by truncating the segment there; nothing after it is
trusted. A batch is sent only after it is completely written, so a torn batch was never sent and
its seq is simply reused.

When full (`max_bytes`), the OLDEST segments are deleted, acked or not, and their steps counted
as dropped: a robot that cannot reach its trainer for a long time keeps its most recent data.
Segments whose batches are all ACKed are deleted at once.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path

from reachsafe.protocol.codec import decode
from reachsafe.protocol.errors import ProtocolError
from reachsafe.protocol.files import write_atomically, write_json_atomically
from reachsafe.protocol.messages import Steps

log = logging.getLogger(__name__)

HEADER = struct.Struct("<II")
STREAM_FILE = "stream.json"
ACKED_FILE = "acked"
SEGMENT_GLOB = "seg-*.log"


class SpoolError(RuntimeError):
    """The spool directory cannot be used (permissions, disk full, a foreign stream)."""


@dataclass(frozen=True)
class SpoolEntry:
    """Where one spooled batch lives."""

    seq: int
    first_step: int
    n_steps: int
    segment: Path
    offset: int
    length: int


def _segment_name(first_seq: int) -> str:
    return f"seg-{first_seq:016d}.log"


class Spool:
    """Batches on disk in seq order; `append` on the uplink thread only (not thread-safe)."""

    def __init__(
        self, directory: str | os.PathLike, max_bytes: int, segment_bytes: int, fsync: bool = True
    ) -> None:
        self.dir = Path(directory)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self.fsync = fsync
        self.dropped_steps = 0
        self.torn_records = 0
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            self.stream_id = self._load_stream_id()
        except OSError as exc:
            raise SpoolError(
                f"cannot use spool directory {self.dir}: {exc}; check the path and permissions"
            ) from exc
        self.acked_seq = self._load_acked()
        self.entries: list[SpoolEntry] = []
        self._segment_sizes: dict[Path, int] = {}
        self._recover()
        last = self.entries[-1] if self.entries else None
        self.next_seq = max(last.seq + 1 if last else 0, int(self._stream["next_seq"]), self.acked_seq + 1)
        self.next_step = max(last.first_step + last.n_steps if last else 0, int(self._stream["next_step"]))
        self._active: Path | None = None
        self._collect_acked()
        log.info(
            "spool %s: stream %s, %d unacked batch(es) (%d steps, %d bytes), next seq %d",
            self.dir,
            self.stream_id,
            len(self.entries),
            self.unacked_steps,
            self.total_bytes,
            self.next_seq,
        )

    # ----- state files ----------------------------------------------------------------
    def _load_stream_id(self) -> str:
        path = self.dir / STREAM_FILE
        if not path.exists():
            self._stream = {"stream_id": uuid.uuid4().hex, "next_seq": 0, "next_step": 0}
            write_json_atomically(path, self._stream, fsync=True, indent=None)
        self._stream = json.loads(path.read_text())
        return str(self._stream["stream_id"])

    def _save_position(self) -> None:
        """Persist (fsync) where the stream is before deleting segments, so seqs are never reused."""
        self._stream = {"stream_id": self.stream_id, "next_seq": self.next_seq, "next_step": self.next_step}
        write_json_atomically(self.dir / STREAM_FILE, self._stream, fsync=True, indent=None)

    def _load_acked(self) -> int:
        try:
            return int((self.dir / ACKED_FILE).read_text())
        except (OSError, ValueError):
            return -1

    # ----- recovery -------------------------------------------------------------------
    def _recover(self) -> None:
        for seg in sorted(self.dir.glob(SEGMENT_GLOB)):
            data = seg.read_bytes()
            offset = 0
            while offset < len(data):
                entry = self._parse(seg, data, offset)
                if entry is None:
                    self.torn_records += 1
                    log.warning(
                        "spool %s: dropping a torn or corrupt record at byte %d (%d bytes after it); "
                        "it was never sent",
                        seg.name,
                        offset,
                        len(data) - offset,
                    )
                    with open(seg, "r+b") as f:
                        f.truncate(offset)
                    break
                self.entries.append(entry)
                offset += HEADER.size + entry.length
            self._segment_sizes[seg] = offset

    def _parse(self, seg: Path, data: bytes, offset: int) -> SpoolEntry | None:
        if offset + HEADER.size > len(data):
            return None
        length, crc = HEADER.unpack_from(data, offset)
        start = offset + HEADER.size
        payload = data[start : start + length]
        if len(payload) != length or zlib.crc32(payload) != crc:
            return None
        try:
            msg = decode(payload)
        except ProtocolError:
            return None
        if not isinstance(msg, Steps) or msg.stream_id != self.stream_id:
            return None
        return SpoolEntry(msg.seq, msg.first_step, msg.n_steps, seg, start, length)

    # ----- writing --------------------------------------------------------------------
    def append(self, payload: bytes, seq: int, first_step: int, n_steps: int) -> None:
        """Durably append one encoded `steps` message (its seq must be `next_seq`)."""
        if seq != self.next_seq or first_step != self.next_step:
            raise SpoolError(f"append seq {seq}/step {first_step}, expected {self.next_seq}/{self.next_step}")
        record_len = HEADER.size + len(payload)
        self._make_room(record_len)
        seg = self._active
        if seg is None or self._segment_sizes[seg] + record_len > self.segment_bytes:
            seg = self._active = self.dir / _segment_name(seq)
            self._segment_sizes[seg] = 0
        offset = self._segment_sizes[seg]
        try:
            with open(seg, "ab") as f:
                f.write(HEADER.pack(len(payload), zlib.crc32(payload)) + payload)
                if self.fsync:
                    f.flush()
                    os.fsync(f.fileno())
        except OSError as exc:
            try:  # never leave a partial record in front of the records that follow
                os.truncate(seg, offset)
            except OSError:
                self._active = None  # start a fresh segment; recovery drops this one's partial tail
            raise SpoolError(f"cannot write spool segment {seg}: {exc}; is the disk full?") from exc
        self._segment_sizes[seg] = offset + record_len
        self.entries.append(SpoolEntry(seq, first_step, n_steps, seg, offset + HEADER.size, len(payload)))
        self.next_seq = seq + 1
        self.next_step = first_step + n_steps

    def _make_room(self, record_len: int) -> None:
        while self.total_bytes + record_len > self.max_bytes:
            oldest = min((s for s in self._segment_sizes if s != self._active), default=None)
            if oldest is None:
                return
            lost = [e for e in self.entries if e.segment == oldest and e.seq > self.acked_seq]
            self.dropped_steps += sum(e.n_steps for e in lost)
            log.error(
                "spool full (%d bytes): dropping oldest segment %s with %d unacked step(s)",
                self.total_bytes,
                oldest.name,
                sum(e.n_steps for e in lost),
            )
            self._delete_segment(oldest)

    def _delete_segment(self, seg: Path) -> None:
        if (self.next_seq, self.next_step) != (self._stream["next_seq"], self._stream["next_step"]):
            self._save_position()
        seg.unlink(missing_ok=True)
        self._segment_sizes.pop(seg, None)
        self.entries = [e for e in self.entries if e.segment != seg]
        if self._active == seg:
            self._active = None

    # ----- reading and acknowledging --------------------------------------------------
    def read(self, entry: SpoolEntry) -> bytes:
        with open(entry.segment, "rb") as f:
            f.seek(entry.offset)
            return f.read(entry.length)

    def pending(self) -> list[SpoolEntry]:
        """Unacked batches in seq order."""
        return [e for e in self.entries if e.seq > self.acked_seq]

    def ack(self, seq: int) -> list[SpoolEntry]:
        """The trainer stored every batch ≤ seq: delete fully acked segments; return the newly acked entries."""
        if seq <= self.acked_seq:
            return []
        newly = [e for e in self.entries if self.acked_seq < e.seq <= seq]
        self.acked_seq = seq
        write_atomically(self.dir / ACKED_FILE, str(seq).encode(), fsync=False)
        self._collect_acked()
        return newly

    def _collect_acked(self) -> None:
        """Delete every segment whose batches are all acked (the active one only when everything is)."""
        newest: dict[Path, int] = {}
        for e in self.entries:
            newest[e.segment] = max(newest.get(e.segment, -1), e.seq)
        for seg in list(self._segment_sizes):
            if newest.get(seg, -1) <= self.acked_seq and (seg != self._active or not self.pending()):
                self._delete_segment(seg)

    @property
    def total_bytes(self) -> int:
        return sum(self._segment_sizes.values())

    @property
    def unacked_steps(self) -> int:
        return sum(e.n_steps for e in self.pending())
