"""The firmware side of the serial drive protocol, on the master end of a pty.

Behaves as docs/firmware/diffdrive.ino must: acks every valid line with the applied wheel
speeds and flags, rejects bad checksums with `$E`, stops the motors when no `$D` arrived for the
hello's timeout (a keepalive `$K` does not count), and stops on `$H` / `$S`. Its checksum and
parsing are written independently of `reachsafe.hardware.serial_drive`, so a bug there is not mirrored.

The port the driver opens is a symlink (like /dev/serial/by-id/...) to the current pty;
`unplug()` closes the pty (the driver sees EIO) and `replug()` makes a new one behind the same name.
"""

from __future__ import annotations

import os
import select
import threading
import time
import tty
from pathlib import Path


def xor(data: str) -> int:
    out = 0
    for ch in data.encode():
        out ^= ch
    return out


class FakeController:
    def __init__(self, link: Path) -> None:
        self.link = link
        self.lock = threading.Lock()
        self.received: list[tuple[float, str, list[int]]] = []  # (time, kind, fields) of valid lines
        self.speeds: tuple[int, int] = (0, 0)
        self.timeout_ms = 300
        self.last_drive = time.monotonic()
        self.flags = 0
        self.timeout_stops: list[float] = []
        self.bad_lines = 0
        self.mute = False  # firmware hung: reads nothing, answers nothing
        self._master: int | None = None
        self._slave: int | None = None
        self._stop = threading.Event()
        self.replug()
        self._thread = threading.Thread(target=self._run, name="fake-controller", daemon=True)
        self._thread.start()

    # ----- the cable -------------------------------------------------------------------------
    def replug(self) -> None:
        master, slave = os.openpty()
        tty.setraw(master)
        with self.lock:
            self._master, self._slave = master, slave
        tmp = self.link.with_suffix(".new")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(os.ttyname(slave))
        os.replace(tmp, self.link)

    def unplug(self) -> None:
        with self.lock:
            fds = (self._master, self._slave)
            self._master = self._slave = None
            self.speeds = (0, 0)  # the controller lost power with the cable
        for fd in fds:
            if fd is not None:
                os.close(fd)
        self.link.unlink(missing_ok=True)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2.0)
        self.unplug()

    def send_raw(self, data: bytes) -> None:
        with self.lock:
            if self._master is not None:
                os.write(self._master, data)

    def kinds(self) -> list[str]:
        with self.lock:
            return [k for _, k, _ in self.received]

    # ----- firmware --------------------------------------------------------------------------
    def _reply(self, body: str) -> None:
        os.write(self._master, f"${body}*{xor(body):02X}\n".encode())

    def _handle(self, line: str) -> None:
        if not (line.startswith("$") and len(line) > 4 and line[-3] == "*"):
            self.bad_lines += 1
            return
        body = line[1:-3]
        try:
            ok = int(line[-2:], 16) == xor(body)
            kind, *rest = body.split(",")
            fields = [int(f) for f in rest]
        except ValueError:
            ok = False
        if not ok or not fields:
            self.bad_lines += 1
            self._reply("E,-1,CRC")
            return
        now = time.monotonic()
        self.received.append((now, kind, fields))
        if kind == "H" and len(fields) == 2:
            self.timeout_ms, self.speeds = fields[1], (0, 0)
        elif kind == "D" and len(fields) == 3:
            self.speeds, self.last_drive = (fields[1], fields[2]), now
        elif kind == "S":
            self.speeds = (0, 0)
        elif kind != "K":
            self._reply(f"E,{fields[0]},UNKNOWN")
            return
        self._reply(f"A,{fields[0]},{self.speeds[0]},{self.speeds[1]},{self.flags}")
        self.flags = 0

    def _run(self) -> None:
        buf = b""
        while not self._stop.is_set():
            with self.lock:
                master = self._master
            if master is None or self.mute:
                time.sleep(0.005)
                continue
            try:
                ready = select.select([master], [], [], 0.005)[0]
                with self.lock:
                    if self._master != master or self.mute:
                        continue
                    if ready:
                        buf += os.read(master, 4096)
                        *lines, buf = buf.split(b"\n")
                        for raw in lines:
                            self._handle(raw.decode(errors="replace").strip())
                    now = time.monotonic()
                    if self.speeds != (0, 0) and now - self.last_drive > self.timeout_ms / 1000:
                        self.speeds = (0, 0)
                        self.flags |= 1
                        self.timeout_stops.append(now)
            except OSError:
                buf = b""  # the other end went away (unplug or the driver closed); wait for the next plug
