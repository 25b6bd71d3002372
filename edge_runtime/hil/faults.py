"""What the suite injects from the robot's side.

- `BridgeControl`: the bridge's seeded faults (camera stall, drive timeout, partition, hazard), asked
  for with `hw_fault` over a sim link of its own (same address, same CURVE keys as the robot's).
- `EstopSwitch`: the robot's task signals with an emergency stop the suite presses, as an operator's
  button or a referee would.
- `TrainerRelay`: a TCP relay on the robot between the runtime and the trainer; `cut()` is a trainer
  outage as the runtime sees it (connections drop, new ones are refused). It forwards bytes only, so
  CURVE passes through it untouched.
"""

from __future__ import annotations

import dataclasses
import logging
import socket
import threading
from typing import Any
from urllib.parse import urlsplit

from reachsafe.hardware.base import Signals, TaskSignals
from reachsafe.hardware.config import SimLinkConfig
from reachsafe.hardware.sim import SimLink
from reachsafe.protocol.messages import HwFault, HwOk
from reachsafe.protocol.sockets import ClientCurve

log = logging.getLogger(__name__)

#: How long the control link waits for the bridge to take a fault (s): longer than a robot request's.
CONTROL_TIMEOUT_S = 2.0


class BridgeControl:
    """Asks the bridge for faults on this robot (``hw_fault`` → ``hw_ok``; a refusal raises HardwareError)."""

    def __init__(self, link: SimLinkConfig, robot: str) -> None:
        curve = (
            ClientCurve.from_files(link.curve_secret_key, link.curve_server_key)
            if link.curve_secret_key
            else None
        )
        self.robot = robot
        self.link = SimLink(link.endpoint, max(link.timeout_s, CONTROL_TIMEOUT_S), curve)

    def inject(self, fault: str, duration_s: float = 0.0, seed: int = 0, rate: float = 1.0) -> None:
        msg = HwFault(robot=self.robot, fault=fault, duration_s=duration_s, rate=rate, seed=seed)
        self.link.request(msg, HwOk)
        log.info(
            "bridge: %s on %s for %.1f s (rate %.2f, seed %d)", fault, self.robot, duration_s, rate, seed
        )

    def close(self) -> None:
        self.link.close()


class EstopSwitch(TaskSignals):
    """Wraps the robot's task signals; while `pressed` is set every read reports the emergency stop."""

    def __init__(self, inner: TaskSignals) -> None:
        super().__init__()
        self.inner = inner
        self.pressed = threading.Event()

    @property
    def features(self) -> dict[str, Any]:
        return self.inner.features

    def metrics(self) -> dict[str, float]:
        return self.inner.metrics()

    def _open(self) -> None:
        self.inner.connect()

    def _close(self) -> None:
        self.inner.disconnect()

    def _read(self) -> Signals:
        s = self.inner.read()
        return dataclasses.replace(s, estop=s.estop or self.pressed.is_set())


class TrainerRelay:
    """Forwards 127.0.0.1:<port> (`endpoint`) to the trainer at ``upstream`` (tcp://HOST:PORT)."""

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        if parts.scheme != "tcp" or not parts.hostname or parts.port is None:
            raise ValueError(f"trainer address {upstream!r} must look like tcp://HOST:PORT")
        self._upstream = (parts.hostname, parts.port)
        self._listen = socket.create_server(("127.0.0.1", 0))
        self._listen.settimeout(0.1)
        self.endpoint = f"tcp://127.0.0.1:{self._listen.getsockname()[1]}"
        self._cut = threading.Event()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self.connections = 0
        self._thread = threading.Thread(target=self._accept, name="hil-relay", daemon=True)
        self._thread.start()

    def cut(self) -> None:
        """Drop every connection and refuse new ones until `restore()`."""
        self._cut.set()
        with self._lock:
            conns, self._conns = self._conns, set()
        for s in conns:
            _shut(s)
        log.info("trainer relay: cut (%d connection(s) dropped)", len(conns))

    def restore(self) -> None:
        self._cut.clear()
        log.info("trainer relay: restored")

    def close(self) -> None:
        self._closed.set()
        self.cut()
        self._thread.join(5)
        self._listen.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listen.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self._cut.is_set():
                _shut(client)
                continue
            try:
                upstream = socket.create_connection(self._upstream, timeout=CONTROL_TIMEOUT_S)
            except OSError as exc:
                log.debug("trainer relay: cannot reach %s:%d: %s", *self._upstream, exc)
                _shut(client)
                continue
            for s in (client, upstream):
                s.settimeout(None)
            with self._lock:
                self._conns |= {client, upstream}
            self.connections += 1
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(
                    target=self._pump, args=(src, dst), name="hil-relay-pump", daemon=True
                ).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                self._conns -= {src, dst}
            _shut(src)
            _shut(dst)


def _shut(s: socket.socket) -> None:
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    s.close()
