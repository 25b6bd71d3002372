"""Steps to the trainer: bounded memory ring → disk spool → DEALER, on one background thread.

The control loop only calls `add()` (a deque append; never blocks, drops the oldest step and
counts it if the uplink thread falls behind). The uplink thread owns the spool and the socket:

- it seals batches of `batch_size` steps (or older than `batch_max_age`) and appends them to the
  spool *before* sending, so every batch that ever went on the wire is on disk;
- credit-based flow control: at most `max_inflight` unacked batches on the wire;
- HELLO first on every (re)connection (the socket monitor reports the handshake), then every
  unacked batch again from the spool; an ACK timeout also triggers a HELLO + resend. The trainer
  de-duplicates by (robot_id, stream_id, seq), which makes delivery exactly-once;
- ACK(seq) deletes fully acked spool segments; BUNDLE messages go to `on_bundle`; messages from
  other threads (BUNDLE_STATUS) go out through `send()`; HEARTBEATs carry `metrics_fn()`.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import zmq
from zmq.utils.monitor import recv_monitor_message

from reachsafe.edge_runtime.config import EdgeConfig
from reachsafe.edge_runtime.metrics import Metrics
from reachsafe.edge_runtime.spool import Spool, SpoolEntry, SpoolError
from reachsafe.edge_runtime.steps import Step, to_columns
from reachsafe.protocol.codec import decode, encode
from reachsafe.protocol.errors import NoHelloError, ProtocolError
from reachsafe.protocol.messages import Ack, BundleMessage, ErrorMessage, Heartbeat, Hello, Message, Steps
from reachsafe.protocol.sockets import ClientCurve, client_socket

log = logging.getLogger(__name__)

GAUGE_INTERVAL = 0.2  # seconds between updates of the spool / unacked gauges


@dataclass(frozen=True)
class RobotSpec:
    """What HELLO tells the trainer about this robot."""

    robot_id: str
    runtime_version: str
    obs_shape: tuple[int, int, int]
    action_dim: int


class Uplink:
    """Owns the spool and the DEALER socket; start(), add() from the loop, close() at the end."""

    def __init__(
        self,
        cfg: EdgeConfig,
        spool: Spool,
        endpoint: str,
        spec: RobotSpec,
        metrics: Metrics,
        bundle_version: Callable[[], int],
        on_bundle: Callable[[BundleMessage], None],
        curve: ClientCurve | None = None,
        device_metrics: Callable[[], dict[str, float]] = dict,
    ) -> None:
        self.cfg = cfg
        self.device_metrics = device_metrics  # the robot's own counters (`drive/…`, `signals/…`)
        self.spool = spool
        self.endpoint = endpoint
        self.spec = spec
        self.metrics = metrics
        self.bundle_version = bundle_version
        self.on_bundle = on_bundle
        self.curve = curve
        self._ring: deque[Step] = deque()
        self._outbox: queue.SimpleQueue[Message] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._flush = threading.Event()
        self._thread = threading.Thread(target=self._run, name="edge-uplink", daemon=True)
        self._batch: list[Step] = []
        self._batch_started = 0.0
        self._inflight: dict[int, float] = {}  # seq -> monotonic time sent
        self._last_ack = time.monotonic()
        self._sent_once: set[int] = set()
        self.steps_sent = 0
        self.steps_acked = 0
        self.error: Exception | None = None

    # ----- control-thread side --------------------------------------------------------
    def add(self, step: Step) -> None:
        """Queue a step for upload; never blocks (drops and counts the oldest when the ring is full)."""
        if len(self._ring) >= self.cfg.ring_capacity:
            self._ring.popleft()
            self.metrics.count("edge/uplink/ring_dropped")
        self._ring.append(step)

    def send(self, msg: Message) -> None:
        """Send a message from any thread (it goes out on the uplink thread)."""
        self._outbox.put(msg)

    def start(self) -> Uplink:
        self._thread.start()
        return self

    def close(self, drain_timeout: float) -> bool:
        """Spool what is queued, wait up to `drain_timeout` s for every batch to be ACKed, stop.

        Returns True if everything was acknowledged.
        """
        self._flush.set()
        deadline = time.monotonic() + drain_timeout
        while time.monotonic() < deadline and self._thread.is_alive():
            if not self._ring and not self._batch and not self.spool.pending():
                break
            time.sleep(0.02)
        self._stop.set()
        self._thread.join(timeout=10)
        drained = not self.spool.pending() and not self._ring
        if not drained:
            log.warning(
                "uplink closed with %d unacked step(s) in the spool; they are sent on the next start",
                self.spool.unacked_steps,
            )
        return drained

    @property
    def unacked_steps(self) -> int:
        return self.spool.unacked_steps + len(self._ring) + len(self._batch)

    # ----- uplink thread --------------------------------------------------------------
    def _run(self) -> None:
        ctx = zmq.Context.instance()
        sock = client_socket(ctx, zmq.DEALER, self.endpoint, curve=self.curve)
        sock.setsockopt(zmq.IMMEDIATE, 1)
        monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED)
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(monitor, zmq.POLLIN)
        need_hello = True
        next_heartbeat = next_gauges = time.monotonic()
        try:
            while not self._stop.is_set():
                self._seal_batches()
                if time.monotonic() >= next_gauges:
                    next_gauges = time.monotonic() + GAUGE_INTERVAL
                    self._update_gauges()
                if need_hello:
                    need_hello = not self._try_send(sock, self._hello())
                    if not need_hello:
                        self._requeue_inflight("connected")
                if not need_hello:
                    self._send_pending(sock)
                    self._send_outbox(sock)
                    if time.monotonic() >= next_heartbeat:
                        next_heartbeat = time.monotonic() + self.cfg.heartbeat_interval
                        self._try_send(
                            sock, Heartbeat(self.spec.robot_id, time.monotonic(), self.metrics_snapshot())
                        )
                    if self._inflight and time.monotonic() - self._last_ack > self.cfg.ack_timeout:
                        log.warning(
                            "no ACK for %.1f s: re-sending HELLO and unacked batches", self.cfg.ack_timeout
                        )
                        self.metrics.count("edge/uplink/ack_timeouts")
                        self._last_ack = time.monotonic()
                        need_hello = True
                for s, _ in poller.poll(timeout=10):
                    if s is monitor:
                        event = recv_monitor_message(monitor)["event"]
                        if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                            need_hello = True
                        elif event == zmq.EVENT_DISCONNECTED:
                            log.warning("trainer %s disconnected; spooling until it is back", self.endpoint)
                    elif self._receive(sock):
                        need_hello = True  # then the unacked batches are sent again
        except Exception as exc:  # the thread must never die silently; the loop keeps the robot safe
            self.error = exc
            self.metrics.count("edge/uplink/thread_failed")
            log.critical("uplink thread failed, steps are no longer spooled: %s", exc, exc_info=True)
        finally:
            sock.disable_monitor()
            monitor.close(linger=0)
            sock.close(linger=0)

    def _hello(self) -> Hello:
        pending = self.spool.pending()
        return Hello(
            robot_id=self.spec.robot_id,
            stream_id=self.spool.stream_id,
            runtime_version=self.spec.runtime_version,
            bundle_version=self.bundle_version(),
            obs_shape=self.spec.obs_shape,
            action_dim=self.spec.action_dim,
            resume_seq=pending[0].seq if pending else self.spool.next_seq,
        )

    def metrics_snapshot(self) -> dict[str, float]:
        """The runtime's metrics plus the robot's device counters, as sent in HEARTBEAT."""
        snap = {**self.metrics.snapshot(), **self.device_metrics()}
        return {k: v for k, v in snap.items() if v == v}  # drop NaN (empty windows)

    def _seal_batches(self) -> None:
        while self._ring:
            if not self._batch:
                self._batch_started = time.monotonic()
            self._batch.append(self._ring.popleft())
            if len(self._batch) >= self.cfg.batch_size:
                self._spool_batch()
        old = self._batch and time.monotonic() - self._batch_started >= self.cfg.batch_max_age
        if self._batch and (old or self._flush.is_set()):
            self._spool_batch()

    def _update_gauges(self) -> None:
        self.metrics.gauge("edge/spool_bytes", self.spool.total_bytes)
        self.metrics.gauge("edge/spool_dropped_steps", self.spool.dropped_steps)
        self.metrics.gauge("edge/unacked_steps", self.unacked_steps)

    def _spool_batch(self) -> None:
        msg = Steps(
            robot_id=self.spec.robot_id,
            stream_id=self.spool.stream_id,
            seq=self.spool.next_seq,
            first_step=self.spool.next_step,
            columns=to_columns(self._batch),
        )
        try:
            self.spool.append(encode(msg), msg.seq, msg.first_step, len(self._batch))
            self.metrics.count("edge/uplink/batches_spooled")
        except SpoolError as exc:  # e.g. disk full: these steps cannot be kept; the robot drives on
            self.metrics.count("edge/uplink/spool_write_failed_steps", len(self._batch))
            log.error("dropping %d step(s): %s", len(self._batch), exc)
        self._batch = []

    def _try_send(self, sock: zmq.Socket, msg: Message | bytes) -> bool:
        try:
            sock.send(msg if isinstance(msg, bytes) else encode(msg), zmq.NOBLOCK)
        except zmq.Again:
            return False
        return True

    def _send_pending(self, sock: zmq.Socket) -> None:
        for entry in self.spool.pending():
            if len(self._inflight) >= self.cfg.max_inflight:
                return
            if entry.seq in self._inflight:
                continue
            if not self._try_send(sock, self.spool.read(entry)):
                return
            if not self._inflight:
                self._last_ack = time.monotonic()
            self._inflight[entry.seq] = time.monotonic()
            self._count_sent(entry)

    def _count_sent(self, entry: SpoolEntry) -> None:
        if entry.seq in self._sent_once:
            self.metrics.count("edge/uplink/resent_batches")
            return
        self._sent_once.add(entry.seq)
        self.steps_sent += entry.n_steps
        self.metrics.count("edge/uplink/steps_sent", entry.n_steps)

    def _send_outbox(self, sock: zmq.Socket) -> None:
        while True:
            try:
                msg = self._outbox.get_nowait()
            except queue.Empty:
                return
            if not self._try_send(sock, msg):
                self._outbox.put(msg)
                return

    def _requeue_inflight(self, why: str) -> None:
        if self._inflight:
            log.info("%s: re-sending %d unacked batch(es)", why, len(self._inflight))
        self._inflight.clear()

    def _receive(self, sock: zmq.Socket) -> bool:
        """Handle every message waiting; True if the trainer asked for a HELLO (it lost ours, e.g. restarted)."""
        hello_asked = False
        while True:
            try:
                data = sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return hello_asked
            try:
                msg = decode(data)
            except ProtocolError as exc:
                self.metrics.count("edge/uplink/bad_messages")
                log.warning("dropping a malformed message from the trainer: %s", exc)
                continue
            if isinstance(msg, Ack):
                self._on_ack(msg)
            elif isinstance(msg, BundleMessage):
                self.on_bundle(msg)
            elif isinstance(msg, ErrorMessage):
                self.metrics.count("edge/uplink/trainer_errors")
                log.warning("trainer rejected a %s message: %s (%s)", msg.ref_type, msg.message, msg.code)
                hello_asked = hello_asked or msg.code == NoHelloError.code
            elif isinstance(msg, Heartbeat):
                self.metrics.gauge("edge/uplink/trainer_heartbeat", time.monotonic())
            else:
                log.warning("ignoring unexpected %s message from the trainer", msg.TYPE)

    def _on_ack(self, ack: Ack) -> None:
        if ack.stream_id != self.spool.stream_id:
            log.warning("ACK for stream %s, ours is %s; ignored", ack.stream_id, self.spool.stream_id)
            return
        self._last_ack = time.monotonic()
        for entry in self.spool.ack(ack.seq):
            self.steps_acked += entry.n_steps
            self.metrics.count("edge/uplink/steps_acked", entry.n_steps)
        for seq in [s for s in self._inflight if s <= ack.seq]:
            self.metrics.timing("edge/uplink/ack_ms", (time.monotonic() - self._inflight.pop(seq)) * 1e3)
