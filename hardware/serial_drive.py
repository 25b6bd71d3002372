"""Differential drive over a serial line to a motor controller (Arduino-class microcontroller).

The line protocol (full spec in docs/deploy.md, reference firmware in docs/firmware/diffdrive.ino)
is ASCII, one message per line, NMEA-style: `$<TYPE>,<field>,...*<XX>\\n` where XX is the XOR of
every byte between `$` and `*`, as two upper-case hex digits. Host → controller:

    $H,<seq>,<timeout_ms>         hello: stop the motors, set the command timeout
    $D,<seq>,<left_mm_s>,<right_mm_s>   wheel speeds (integers); refreshes the command timeout
    $S,<seq>                      stop now (brake)
    $K,<seq>                      keepalive: proves the link is up; does NOT refresh the timeout

Controller → host: `$A,<seq>,<left_mm_s>,<right_mm_s>,<flags>` acknowledges each line with the
wheel speeds now applied (flags: 1 = the command timeout stopped the motors since the previous
ack, 2 = motor fault); `$E,<seq>,<reason>` rejects a malformed line.

Safety rests on the controller: if no `$D` arrives for `timeout_ms` it stops the motors by
itself, so a hung runtime, a crashed host or a pulled cable all end with the robot at rest.
The keepalive deliberately does not refresh that timeout — only the control loop can keep the
robot moving. On the host, a thread reads acks, sends keepalives when the line is idle, notices
a lost link (read/write error, or no ack within `reply_timeout_s`) and reopens the port every
`reconnect_s` (with a fresh `$H`, which stops the motors) until the controller answers again.

Uses termios directly rather than pyserial: the robot is Linux, a tty needs only raw mode and a
baud rate, and the robot install stays one dependency smaller.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import termios
import threading
import time
import tty
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from reachsafe.hardware.base import Drive
from reachsafe.hardware.errors import DeviceTimeoutError, DeviceUnavailableError

if TYPE_CHECKING:
    from reachsafe.hardware.config import HardwareConfig

log = logging.getLogger(__name__)

MAX_LINE = 96
FLAG_TIMEOUT_STOP = 1
FLAG_MOTOR_FAULT = 2


def checksum(body: bytes) -> int:
    """XOR of the bytes between `$` and `*`."""
    c = 0
    for b in body:
        c ^= b
    return c


def encode_line(kind: str, *fields: int) -> bytes:
    body = ",".join([kind, *(str(int(f)) for f in fields)]).encode("ascii")
    return b"$%s*%02X\n" % (body, checksum(body))


@dataclass(frozen=True)
class Reply:
    kind: str
    fields: tuple[str, ...]


def parse_line(line: bytes) -> Reply | None:
    """A controller line without its newline -> Reply, or None if it is malformed."""
    line = line.strip()
    if len(line) < 5 or line[:1] != b"$" or line[-3:-2] != b"*":
        return None
    body = line[1:-3]
    try:
        if int(line[-2:], 16) != checksum(body):
            return None
        parts = body.decode("ascii").split(",")
    except (ValueError, UnicodeDecodeError):
        return None
    return Reply(parts[0], tuple(parts[1:]))


def wheel_speeds(
    action: np.ndarray, max_speed_mm_s: float, max_turn_rad_s: float, wheel_base_mm: float
) -> tuple[int, int]:
    """(forward, turn) in [-1, 1] -> (left, right) wheel speeds in mm/s, capped at max_speed.

    Positive turn is counter-clockwise (left). When a wheel would exceed the cap, both are
    scaled down together so the curvature is kept.
    """
    v = float(action[0]) * max_speed_mm_s
    w = float(action[1]) * max_turn_rad_s
    left, right = v - w * wheel_base_mm / 2, v + w * wheel_base_mm / 2
    peak = max(abs(left), abs(right))
    if peak > max_speed_mm_s:
        left, right = left * max_speed_mm_s / peak, right * max_speed_mm_s / peak
    return int(round(left)), int(round(right))


class LinkLost(Exception):
    """Internal: the port failed or the controller went silent."""


class SerialDrive(Drive):
    def __init__(
        self,
        port: str,
        baudrate: int = 115200,
        max_speed_mm_s: float = 300.0,
        max_turn_rad_s: float = 3.0,
        wheel_base_mm: float = 160.0,
        controller_timeout_ms: int = 300,
        keepalive_s: float = 0.1,
        reply_timeout_s: float = 0.5,
        reconnect_s: float = 0.5,
        boot_wait_s: float = 2.5,
    ) -> None:
        super().__init__()
        self.port = port
        self.baudrate = baudrate
        self.max_speed_mm_s = max_speed_mm_s
        self.max_turn_rad_s = max_turn_rad_s
        self.wheel_base_mm = wheel_base_mm
        self.controller_timeout_ms = controller_timeout_ms
        self.keepalive_s = keepalive_s
        self.reply_timeout_s = reply_timeout_s
        self.reconnect_s = reconnect_s
        self.boot_wait_s = boot_wait_s
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._retired: list[int] = []
        self._seq = 0
        self._last_tx = 0.0
        self._waiting_since: float | None = None  # first unacknowledged send since the last ack
        self._rx = b""
        self._stopping = threading.Event()
        self._closing = False
        self._thread: threading.Thread | None = None
        self.applied = (0, 0)  # wheel speeds the controller last reported
        self.counters = {"reconnects": 0, "link_losses": 0, "timeout_stops": 0, "faults": 0, "bad_lines": 0}

    @classmethod
    def from_config(cls, hw: HardwareConfig) -> SerialDrive:
        d = hw.drive
        return cls(
            d.port,
            d.baudrate,
            d.max_speed_mm_s,
            d.max_turn_rad_s,
            d.wheel_base_mm,
            d.controller_timeout_ms,
            d.keepalive_s,
            d.reply_timeout_s,
            d.reconnect_s,
            d.boot_wait_s,
        )

    @property
    def features(self) -> dict[str, Any]:
        return {"action_dim": 2}

    @property
    def link_up(self) -> bool:
        return self._fd is not None

    def metrics(self) -> dict[str, float]:
        out = {f"drive/{k}": float(v) for k, v in self.counters.items()}
        out["drive/link_up"] = float(self.link_up)
        return out

    # ----- lifecycle -------------------------------------------------------------------------
    def _open(self) -> None:
        self._stopping.clear()
        fd = self._open_port()
        try:
            self._handshake(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._closing = False
        self._thread = threading.Thread(target=self._run, name=f"serial-drive {self.port}", daemon=True)
        self._thread.start()
        log.info(
            "serial drive on %s: controller answered, command timeout %d ms",
            self.port,
            self.controller_timeout_ms,
        )

    def _close(self) -> None:
        """Brake, wait (bounded) for the controller to confirm, then close the port."""
        with self._lock:
            self._closing = True  # no more keepalives: the stop is the last line the controller sees
            if self._fd is not None:
                try:
                    self._send(encode_line("S", self._next_seq()))
                except OSError as e:
                    log.warning(
                        "serial drive: final stop not sent (%s); the controller timeout stops the motors", e
                    )
        deadline = time.monotonic() + self.reply_timeout_s
        while self._fd is not None and self._waiting_since is not None and time.monotonic() < deadline:
            time.sleep(0.005)
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(2.0)
            self._thread = None
        with self._lock:
            self._retire_fd()
            self._close_retired()

    # ----- commands (control thread) ---------------------------------------------------------
    def _apply(self, action: np.ndarray) -> None:
        left, right = wheel_speeds(action, self.max_speed_mm_s, self.max_turn_rad_s, self.wheel_base_mm)
        with self._lock:
            if self._fd is None:
                raise DeviceUnavailableError(
                    f"serial drive {self.port}: link down, reconnecting; the controller has stopped the motors"
                )
            self._send_or_drop(encode_line("D", self._next_seq(), left, right))

    def _stop(self) -> None:
        with self._lock:
            if self._fd is None:
                log.warning(
                    "serial drive %s: link down; the controller's timeout has stopped the motors", self.port
                )
                return
            self._send_or_drop(encode_line("S", self._next_seq()))

    # ----- port handling ---------------------------------------------------------------------
    def _open_port(self) -> int:
        try:
            fd = os.open(self.port, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        except OSError as e:
            raise DeviceUnavailableError(
                f"cannot open motor controller port {self.port}: {e.strerror}; check the cable, the port "
                "name (ls /dev/serial/by-id/) and that the user is in the 'dialout' group"
            ) from e
        try:
            tty.setraw(fd)
            attrs = termios.tcgetattr(fd)
            speed = getattr(termios, f"B{self.baudrate}")
            attrs[2] |= termios.CLOCAL | termios.CREAD
            attrs[4] = attrs[5] = speed
            termios.tcsetattr(fd, termios.TCSANOW, attrs)
            termios.tcflush(fd, termios.TCIOFLUSH)
        except (termios.error, AttributeError) as e:
            os.close(fd)
            raise DeviceUnavailableError(
                f"{self.port} is not a usable serial port at {self.baudrate} baud: {e}"
            ) from e
        return fd

    def _handshake(self, fd: int) -> None:
        """Send $H (again every `reply_timeout_s`) until it is acked or `boot_wait_s` has passed.

        Many USB boards (Arduino) reset when the port opens and listen only after their
        bootloader, so the first hellos may go unheard. Called before `fd` is shared with other
        threads.
        """
        self._rx = b""
        give_up = time.monotonic() + max(self.boot_wait_s, self.reply_timeout_s)
        while time.monotonic() < give_up and not self._stopping.is_set():
            seq = self._next_seq()
            os.write(fd, encode_line("H", seq, self.controller_timeout_ms))
            deadline = min(time.monotonic() + self.reply_timeout_s, give_up)
            while (left := deadline - time.monotonic()) > 0:
                if not select.select([fd], [], [], left)[0]:
                    break
                for reply in self._read_replies(fd):
                    if reply.kind == "A" and reply.fields[:1] == (str(seq),):
                        self._take_ack(reply)
                        self._waiting_since = None
                        self._last_tx = time.monotonic()
                        return
        raise DeviceTimeoutError(
            f"motor controller on {self.port} did not answer the hello within "
            f"{max(self.boot_wait_s, self.reply_timeout_s):.1f} s: check its power, the baud rate and that "
            "it runs the reachsafe firmware (docs/firmware/)"
        )

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) % 1_000_000
        return self._seq

    def _send(self, line: bytes) -> None:
        """Write one line (lock held). Raises OSError on a dead port."""
        assert self._fd is not None
        n = os.write(self._fd, line)
        if n != len(line):
            raise OSError(errno.EAGAIN, "serial output buffer full")
        now = time.monotonic()
        self._last_tx = now
        if self._waiting_since is None:
            self._waiting_since = now

    def _send_or_drop(self, line: bytes) -> None:
        try:
            self._send(line)
        except OSError as e:
            self._lose_link(f"write failed: {e}")
            raise DeviceUnavailableError(f"serial drive {self.port}: write failed ({e}); reconnecting") from e

    def _read_replies(self, fd: int) -> list[Reply]:
        data = os.read(fd, 4096)
        if not data:
            raise OSError(errno.EIO, "end of file")
        self._rx += data
        *lines, self._rx = self._rx.split(b"\n")
        if len(self._rx) > MAX_LINE:
            self._rx = b""
            self.counters["bad_lines"] += 1
        replies = []
        for line in lines:
            reply = parse_line(line)
            if reply is None or not reply.fields:
                self.counters["bad_lines"] += 1
                continue
            replies.append(reply)
        return replies

    def _take_ack(self, reply: Reply) -> None:
        try:
            _, left, right, flags = (int(f) for f in reply.fields[:4])
        except ValueError:
            self.counters["bad_lines"] += 1
            return
        self.applied = (left, right)
        if flags & FLAG_TIMEOUT_STOP:
            self.counters["timeout_stops"] += 1
            log.warning(
                "serial drive: the controller stopped the motors (no command within %d ms)",
                self.controller_timeout_ms,
            )
        if flags & FLAG_MOTOR_FAULT:
            self.counters["faults"] += 1
            log.error("serial drive: the controller reports a motor fault")

    def _lose_link(self, why: str) -> None:
        """Lock held."""
        if self._fd is None:
            return
        log.warning(
            "serial drive %s: link lost (%s); reconnecting every %.1f s", self.port, why, self.reconnect_s
        )
        self.counters["link_losses"] += 1
        self._retire_fd()

    def _retire_fd(self) -> None:
        """Lock held. Forget the port; only the I/O thread (or `_close` after joining it) closes
        it, so a descriptor number can never be reused under a thread still selecting on it."""
        if self._fd is not None:
            self._retired.append(self._fd)
        self._fd = None
        self._waiting_since = None

    def _close_retired(self) -> None:
        """Lock held."""
        for fd in self._retired:
            try:
                os.close(fd)
            except OSError:
                pass
        self._retired.clear()

    # ----- the I/O thread --------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stopping.is_set():
            with self._lock:
                self._close_retired()
                fd = self._fd
            if fd is None:
                self._reconnect()
                continue
            try:
                ready = select.select([fd], [], [], min(self.keepalive_s, 0.05))[0]
                if ready:
                    for reply in self._read_replies(fd):
                        self._on_reply(reply)
                with self._lock:
                    if self._fd != fd:
                        continue
                    now = time.monotonic()
                    if self._waiting_since is not None and now - self._waiting_since > self.reply_timeout_s:
                        raise LinkLost(f"no reply for {self.reply_timeout_s:.1f} s")
                    if now - self._last_tx >= self.keepalive_s and not self._closing:
                        self._send(encode_line("K", self._next_seq()))
            except (OSError, LinkLost) as e:
                with self._lock:
                    if self._fd == fd:
                        self._lose_link(str(e))

    def _on_reply(self, reply: Reply) -> None:
        if reply.kind == "A":
            with self._lock:
                self._take_ack(reply)
                self._waiting_since = None if reply.fields[0] == str(self._seq) else time.monotonic()
        elif reply.kind == "E":
            self.counters["bad_lines"] += 1
            log.warning("serial drive: controller rejected a line: %s", ",".join(reply.fields))

    def _reconnect(self) -> None:
        if self._stopping.wait(self.reconnect_s):
            return
        try:
            fd = self._open_port()
        except DeviceUnavailableError as e:
            log.debug("serial drive: %s", e)
            return
        try:
            self._handshake(fd)
        except (DeviceTimeoutError, OSError) as e:
            log.debug("serial drive: reconnect failed: %s", e)
            os.close(fd)
            return
        with self._lock:
            self._fd = fd
            self.counters["reconnects"] += 1
        log.warning("serial drive %s: reconnected; motors stopped until the next command", self.port)
