"""The daemon's ROUTER loop: HELLO / STEPS in, durable store, ACK out, bundles and heartbeats out.

Runs on its own thread and owns the socket (ZeroMQ sockets are not thread-safe); other threads
hand it bundles through :meth:`IngestServer.broadcast`. Received batches are grouped: everything
that arrived while the previous group was being written goes into one group (one write, one
fsync, one index commit), then every stream in the group is ACKed with its highest contiguously
stored seq.

The commit is pipelined over two threads: an appender writes and fsyncs group N+1's bytes while
an indexer commits group N's index rows, and meanwhile this thread keeps receiving and validating
group N+2. They wake this thread over an inproc socket; only when a group is indexed are its
batches counted, handed to ``on_batch`` and ACKed. At most two groups are in flight, and the
store appends and indexes them in arrival order. Frames are received without copying and their
bytes go to the segment file as received.

Nothing a peer sends stops the loop. A message is rejected, with a typed `error` reply, counted
per error code and per robot and reason, and logged at most once per robot and reason every 10 s
(with a count of the rest), when it does not decode (the codec's limits), has the wrong shapes,
comes from a robot that has not said HELLO for its stream, or is a `steps` batch whose values
break the step record (``check_step_values``) or whose ``first_step`` does not continue its
stream (the store refuses it). A rejected batch is never stored and never ACKed. Failed security
handshakes (e.g. a robot without CURVE keys at a CURVE trainer) are counted and logged too: the
peer itself never learns why its sends do not go out.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from reachsafe.protocol.codec import decode, encode
from reachsafe.protocol.constants import (
    DEFAULT_MAX_ARRAY_BYTES,
    DEFAULT_MAX_MESSAGE_BYTES,
    STEP_COLUMNS,
    check_step_values,
    validate_step_columns,
)
from reachsafe.protocol.errors import ContractError, FieldError, NoHelloError, ProtocolError
from reachsafe.protocol.messages import (
    Ack,
    BundleMessage,
    BundleStatus,
    ErrorMessage,
    Heartbeat,
    Hello,
    Message,
    Steps,
)
from reachsafe.trainer.daemon.status import LogThrottle, RateMeter
from reachsafe.trainer.daemon.store import (
    AppendedGroup,
    Discontinuous,
    Outcome,
    PendingBatch,
    StepStore,
    StoreError,
)
from reachsafe.trainer.data.episodes import Episode, EpisodeTracker

logger = logging.getLogger(__name__)

#: Called on the ingest thread for every newly stored batch (never for duplicates); must not block.
BatchCallback = Callable[[Steps, list[Episode]], None]

HEARTBEAT_EVERY_S = 1.0
PEER_TIMEOUT_S = 30.0
#: Column shape tuples already found valid for this run (bounded: N is the only part that varies).
MAX_KNOWN_SHAPES = 1024
#: The socket monitor events of a failed security handshake.
HANDSHAKE_FAILED = (
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)


@dataclass
class RobotState:
    robot_id: str
    identity: bytes
    last_seen: float
    hello: Hello | None = None
    steps: int = 0
    batches: int = 0
    episodes: int = 0
    last_return: float | None = None
    last_cost: float | None = None
    bundle_version: int | None = None
    bundle_events: list[tuple[int, str, str]] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    rejected: Counter[str] = field(default_factory=Counter)  # rejected messages by reason

    def summary(self, now: float) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "batches": self.batches,
            "episodes": self.episodes,
            "last_return": self.last_return,
            "last_cost": self.last_cost,
            "bundle_version": self.bundle_version,
            "last_seen_s": round(now - self.last_seen, 3),
            "runtime_version": self.hello.runtime_version if self.hello else None,
            "bundle_events": self.bundle_events[-5:],
            "rejected": dict(self.rejected),
        }


@dataclass(frozen=True)
class _Received:
    """A validated `steps` batch waiting for its group commit; ``payload`` is the received frame."""

    identity: bytes
    msg: Steps
    payload: memoryview


class _Committer:
    """Stores groups on two threads of its own, so that neither fsync stalls receiving.

    The appender writes and fsyncs one group's bytes (``StepStore.append``) while the indexer
    commits the previous group's index rows (``StepStore.commit``): at most two groups in flight,
    committed in submission order. Create, use and close it on the ingest thread: ``wake`` (an
    inproc PULL) receives b"appended" when the appender is free for the next group and
    b"committed" when the oldest group is durable; :meth:`result` then returns ``commit``'s answer
    or the exception either step raised.
    """

    def __init__(self, ctx: zmq.Context, store: StepStore) -> None:
        self.store = store
        self.endpoint = f"inproc://reachsafe-ingest-commit-{id(self):x}"
        self.wake = ctx.socket(zmq.PULL)
        self.wake.bind(self.endpoint)
        self._ctx = ctx
        self._todo: queue.SimpleQueue[list[PendingBatch] | None] = queue.SimpleQueue()
        self._appended: queue.SimpleQueue[AppendedGroup | Exception | None] = queue.SimpleQueue()
        self._done: queue.SimpleQueue[list[Outcome] | Exception] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._run, args=(self._append_one, self._todo, self._appended, b"appended"),
                             name="ingest-append", daemon=True),
            threading.Thread(target=self._run, args=(self._commit_one, self._appended, self._done, b"committed"),
                             name="ingest-commit", daemon=True),
        ]  # fmt: skip
        for t in self._threads:
            t.start()

    def submit(self, group: list[_Received]) -> None:
        self._todo.put(
            [PendingBatch(r.msg.robot_id, r.msg.stream_id, r.msg.seq, r.msg.first_step, r.msg.n_steps, r.payload)
             for r in group]
        )  # fmt: skip

    def result(self) -> list[Outcome] | Exception:
        """The oldest group's outcome (call once per b"committed")."""
        return self._done.get()

    def _append_one(self, batches: list[PendingBatch]) -> AppendedGroup | Exception:
        try:
            return self.store.append(batches)
        except Exception as exc:  # handed on to the ingest thread, which logs or re-raises it
            return exc

    def _commit_one(self, group: AppendedGroup | Exception) -> list[Outcome] | Exception:
        if isinstance(group, Exception):
            return group
        try:
            return self.store.commit(group)
        except Exception as exc:
            return exc

    def _run(
        self, step: Callable[[Any], Any], todo: queue.SimpleQueue, out: queue.SimpleQueue, note: bytes
    ) -> None:
        sock = self._ctx.socket(zmq.PUSH)
        sock.connect(self.endpoint)
        try:
            while (item := todo.get()) is not None:
                out.put(step(item))
                sock.send(note)
        finally:
            out.put(None)  # closes the next stage (the indexer's None goes to _done, unread)
            sock.close(linger=0)

    def close(self) -> None:
        self._todo.put(None)
        for t in self._threads:
            t.join()
        self.wake.close(linger=0)


def _queued(sock: zmq.Socket) -> list[bytes]:
    """Every message ``sock`` has queued, without waiting."""
    out = []
    while True:
        try:
            out.append(sock.recv(zmq.NOBLOCK))
        except zmq.Again:
            return out


class IngestServer:
    """Serve robots on a bound ROUTER socket until ``stop`` is set."""

    def __init__(
        self,
        sock: zmq.Socket,
        store: StepStore,
        obs_shape: tuple[int, ...],
        action_dim: int,
        on_batch: BatchCallback,
        *,
        sender_id: str = "trainer",
        max_group: int = 256,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        max_array_bytes: int = DEFAULT_MAX_ARRAY_BYTES,
    ) -> None:
        self.sock = sock
        self.store = store
        self.obs_shape = tuple(obs_shape)
        self.action_dim = action_dim
        self.on_batch = on_batch
        self.sender_id = sender_id
        self.max_group = max_group
        self.max_message_bytes = max_message_bytes
        self.max_array_bytes = max_array_bytes
        self.robots: dict[str, RobotState] = {}
        self.errors: Counter[str] = Counter()
        self.handshake_failures = 0
        self.duplicates = 0
        self.steps_in = 0
        self.rate = RateMeter()
        self.current_bundle: BundleMessage | None = None
        self._outbox: queue.SimpleQueue[BundleMessage] = queue.SimpleQueue()
        self._episodes = EpisodeTracker()
        self._last_heartbeat = 0.0
        self._lock = threading.Lock()  # guards the state read by snapshot()
        self._known_shapes: set[tuple[tuple[int, ...], ...]] = set()
        self._warn = LogThrottle(logger)
        # made here, before any client can connect; read by serve() on the ingest thread; see close()
        self._monitor = sock.get_monitor_socket(HANDSHAKE_FAILED)

    # ----- other threads ---------------------------------------------------------------------
    def broadcast(self, bundle: BundleMessage) -> None:
        """Ship ``bundle`` to every live robot (and to robots that say HELLO later)."""
        self._outbox.put(bundle)

    def snapshot(self) -> dict[str, Any]:
        now = time.monotonic()
        with self._lock:
            return {
                "robots": {
                    rid: r.summary(now)
                    for rid, r in self.robots.items()
                    if now - r.last_seen < PEER_TIMEOUT_S
                },
                "steps_in": self.steps_in,
                "steps_per_s": self.rate.per_s(),
                "steps_stored": self.store.steps_stored,
                "duplicates": self.duplicates,
                "errors_by_code": dict(self.errors),
                "errors": sum(self.errors.values()),
                "handshake_failures": self.handshake_failures,
            }

    # ----- the loop ---------------------------------------------------------------------------
    def serve(self, stop: threading.Event, poll_ms: int = 50) -> None:
        committer = _Committer(self.sock.context, self.store)
        monitor = self._monitor
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        poller.register(committer.wake, zmq.POLLIN)
        poller.register(monitor, zmq.POLLIN)
        group: list[_Received] = []
        inflight: deque[list[_Received]] = deque()  # submitted, not yet committed, oldest first
        appending = False
        receiving = True
        try:
            while not stop.is_set():
                events = dict(poller.poll(poll_ms))
                for note in _queued(committer.wake) if committer.wake in events else ():
                    if note == b"appended":
                        appending = False
                    else:  # the oldest group in flight is durable
                        self._finish(inflight.popleft(), committer.result())
                if self.sock in events:
                    self._receive(group)
                if monitor in events:
                    self._handshake_failed(recv_monitor_message(monitor))
                if group and not appending and len(inflight) < 2:
                    committer.submit(group)
                    inflight.append(group)
                    group, appending = [], True
                if receiving != (len(group) < self.max_group):  # full: leave the rest queued in ZeroMQ
                    receiving = not receiving
                    poller.modify(self.sock, zmq.POLLIN if receiving else 0)
                self._flush_outbox()
                self._heartbeat()
            if group:  # store and ACK everything already received
                committer.submit(group)
                inflight.append(group)
            while inflight:
                if committer.wake.recv() == b"committed":
                    self._finish(inflight.popleft(), committer.result())
        finally:
            committer.close()
            self.close()

    def close(self) -> None:
        """Close the handshake monitor (``serve`` does when it ends); the socket's owner calls it too,
        once the serving thread has ended, so that the context can terminate whatever ended it."""
        if not self._monitor.closed:
            self.sock.disable_monitor()
            self._monitor.close(linger=0)

    def _receive(self, group: list[_Received]) -> None:
        """Take every message ZeroMQ has queued (up to a full group) without copying the frames."""
        while len(group) < self.max_group:
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            self._handle(frames, group)

    def _send(self, identity: bytes, msg: Message) -> None:
        try:
            self.sock.send_multipart(
                [identity, encode(msg, max_message_bytes=self.max_message_bytes)], zmq.NOBLOCK
            )
        except zmq.Again:
            self._warn.warning(
                ("send", identity, msg.TYPE),
                "send queue to peer full, dropped a %s (the robot will resend / re-HELLO)",
                msg.TYPE,
            )
        except (zmq.ZMQError, ProtocolError) as exc:
            self._warn.warning(("send", identity, msg.TYPE), "cannot send %s to peer: %s", msg.TYPE, exc)

    def _reject(self, identity: bytes, exc: ProtocolError, robot_id: str | None = None) -> None:
        """Count, log (throttled) and answer a rejected message; ``robot_id`` when the message names one."""
        with self._lock:
            self.errors[exc.code] += 1
        if robot_id is None:
            who = f"peer {identity.hex()}"
        else:
            who = f"robot {robot_id}"
            robot = self._touch(robot_id, identity)
            with self._lock:
                robot.rejected[exc.reason] += 1
        self._warn.warning((who, exc.reason), "rejected a message from %s (%s): %s", who, exc.reason, exc)
        self._send(identity, ErrorMessage.from_exception(exc))

    def _handshake_failed(self, event: dict[str, Any]) -> None:
        with self._lock:
            self.handshake_failures += 1
        self._warn.warning(
            ("handshake", event["event"]),
            "a client failed the security handshake on %s: %s; it gets no service and its sends wait",
            event["endpoint"].decode(errors="replace"),
            _handshake_failure(event["event"], event["value"]),
        )

    def _handle(self, frames: list[zmq.Frame], group: list[_Received]) -> None:
        identity = frames[0].bytes
        if len(frames) != 2:
            self._reject(identity, FieldError(f"expected one frame per message, got {len(frames) - 1}"))
            return
        payload = frames[1].buffer
        try:
            msg = decode(
                payload, max_message_bytes=self.max_message_bytes, max_array_bytes=self.max_array_bytes
            )
        except ProtocolError as exc:
            self._reject(identity, exc)
            return
        if isinstance(msg, Steps):
            try:
                self._check_steps(msg)
            except ProtocolError as exc:
                self._reject(identity, exc, msg.robot_id)
                return
            self._touch(msg.robot_id, identity)
            group.append(_Received(identity, msg, payload))
        elif isinstance(msg, Hello):
            self._on_hello(identity, msg)
        elif isinstance(msg, BundleStatus):
            self._on_bundle_status(identity, msg)
        elif isinstance(msg, Heartbeat):
            robot = self._touch(msg.sender_id, identity)
            with self._lock:
                robot.metrics = dict(msg.metrics)
        elif isinstance(msg, ErrorMessage):
            logger.warning(
                "robot reported an error (%s) about our %s: %s", msg.code, msg.ref_type, msg.message
            )
        else:
            self._reject(
                identity, FieldError(f"a trainer does not accept {msg.TYPE!r} messages", msg_type=msg.TYPE)
            )

    def _check_steps(self, msg: Steps) -> None:
        """ProtocolError unless the batch may be stored: its robot said HELLO for this stream, its
        shapes are the run's and its values keep the step record's rules (its numbering is the
        store's to check)."""
        with self._lock:
            robot = self.robots.get(msg.robot_id)
            hello = robot.hello if robot is not None else None
        if hello is None or hello.stream_id != msg.stream_id:
            said = (
                f"its hello announced stream {hello.stream_id}" if hello else "none since the trainer started"
            )
            raise NoHelloError(
                f"steps of robot {msg.robot_id} stream {msg.stream_id} before a hello for that stream ({said}); "
                "send hello first, then resend from resume_seq",
                msg_type="steps",
            )
        self._check_shapes(msg)
        check_step_values(msg.columns, msg.first_step)

    def _check_shapes(self, msg: Steps) -> None:
        """FieldError unless the batch's per-step shapes are this run's obs shape and action dim.

        Constructing ``Steps`` already checked every column's presence, dtype, rank and common N,
        so what is left depends only on the column shapes: a set of the shape tuples that passed
        saves repeating the full check on every batch.
        """
        shapes = tuple(msg.columns[name].shape for name in STEP_COLUMNS)
        if shapes in self._known_shapes:
            return
        validate_step_columns(msg.columns, self.obs_shape, self.action_dim)
        if len(self._known_shapes) >= MAX_KNOWN_SHAPES:
            self._known_shapes.clear()
        self._known_shapes.add(shapes)

    def _touch(self, robot_id: str, identity: bytes) -> RobotState:
        now = time.monotonic()
        with self._lock:
            robot = self.robots.get(robot_id)
            if robot is None:
                robot = self.robots[robot_id] = RobotState(robot_id, identity, now)
                logger.info("robot %s connected", robot_id)
            robot.identity, robot.last_seen = identity, now
            return robot

    def _on_hello(self, identity: bytes, hello: Hello) -> None:
        if tuple(hello.obs_shape) != self.obs_shape or hello.action_dim != self.action_dim:
            self._reject(
                identity,
                FieldError(
                    f"robot {hello.robot_id} has obs {tuple(hello.obs_shape)} / action dim {hello.action_dim}, "
                    f"this trainer's run expects {self.obs_shape} / {self.action_dim}; point it at a matching run",
                    msg_type="hello",
                ),
                hello.robot_id,
            )
            return
        robot = self._touch(hello.robot_id, identity)
        with self._lock:
            robot.hello = hello
            robot.bundle_version = hello.bundle_version if hello.bundle_version >= 0 else None
        logger.info(
            "HELLO %s stream %s runtime %s bundle v%d resume_seq %d",
            hello.robot_id,
            hello.stream_id,
            hello.runtime_version,
            hello.bundle_version,
            hello.resume_seq,
        )
        acked = self.store.acked_seq(hello.robot_id, hello.stream_id)
        if acked >= 0:
            self._send(identity, Ack(stream_id=hello.stream_id, seq=acked))
        if self.current_bundle is not None and hello.bundle_version < self.current_bundle.version:
            self._send(identity, self.current_bundle)

    def _on_bundle_status(self, identity: bytes, st: BundleStatus) -> None:
        robot = self._touch(st.robot_id, identity)
        with self._lock:
            robot.bundle_events.append((st.version, st.status, st.reason))
            if st.status == "loaded":
                robot.bundle_version = st.version
        log = logger.info if st.status == "loaded" else logger.warning
        log("robot %s bundle v%d %s %s", st.robot_id, st.version, st.status, st.reason)

    def _finish(self, group: list[_Received], result: list[Outcome] | Exception) -> None:
        """Account, hand on and ACK a group the committer has made durable (or failed to)."""
        if isinstance(result, StoreError):
            logger.error("%s; nothing of this group is ACKed, robots will resend", result)
            return
        if isinstance(result, Exception):
            raise result
        acks: dict[tuple[str, str], bytes] = {}
        for got, new in zip(group, result, strict=True):
            msg = got.msg
            acks[(msg.robot_id, msg.stream_id)] = got.identity
            if isinstance(new, Discontinuous):
                self._reject(got.identity, _gap_error(msg, new), msg.robot_id)
                continue
            if not new:
                with self._lock:
                    self.duplicates += 1
                continue
            finished = self._episodes.add((msg.robot_id, msg.stream_id), msg.columns)
            with self._lock:
                robot = self.robots[msg.robot_id]
                robot.steps += msg.n_steps
                robot.batches += 1
                self.steps_in += msg.n_steps
                self.rate.tick(msg.n_steps)
                for ep in finished:
                    robot.episodes += 1
                    robot.last_return, robot.last_cost = ep.ret, ep.cost
            self.on_batch(msg, finished)
        for (robot_id, stream_id), identity in acks.items():
            seq = self.store.acked_seq(robot_id, stream_id)
            if seq >= 0:
                self._send(identity, Ack(stream_id=stream_id, seq=seq))

    def _flush_outbox(self) -> None:
        while True:
            try:
                bundle = self._outbox.get_nowait()
            except queue.Empty:
                return
            self.current_bundle = bundle
            now = time.monotonic()
            with self._lock:
                live = [r for r in self.robots.values() if now - r.last_seen < PEER_TIMEOUT_S]
            for robot in live:
                self._send(robot.identity, bundle)
            logger.info(
                "shipped bundle v%d (parent %s) to %d robot(s)", bundle.version, bundle.parent, len(live)
            )

    def _heartbeat(self) -> None:
        now = time.monotonic()
        if now - self._last_heartbeat < HEARTBEAT_EVERY_S:
            return
        self._last_heartbeat = now
        self._warn.flush(now)
        with self._lock:
            live = [r.identity for r in self.robots.values() if now - r.last_seen < PEER_TIMEOUT_S]
            metrics = {
                "fleet/steps_in": float(self.steps_in),
                "fleet/errors": float(sum(self.errors.values())),
            }
        hb = Heartbeat(sender_id=self.sender_id, time=now, metrics=metrics)
        for identity in live:
            self._send(identity, hb)


def _gap_error(msg: Steps, refused: Discontinuous) -> ContractError:
    return ContractError(
        f"steps of robot {msg.robot_id} stream {msg.stream_id}: first_step breaks the stream's numbering: "
        f"{refused.reason}; the batch is not stored. Number a stream's steps from 0 without gaps "
        "(docs/protocol.md, Sequence rules)",
        column="first_step",
        check="gap",
    )


def _handshake_failure(event: int, value: int) -> str:
    """What a monitor's handshake-failure event means, for the log."""
    if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        return f"its CURVE key was refused (ZAP status {value}: not in the allow-list)"
    if event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL and value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
        return (
            "security mechanism mismatch (a client without CURVE keys at this CURVE trainer, or the reverse)"
        )
    if event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
        return f"ZMTP protocol error 0x{value:x}"
    return f"no detail (errno {value})"
