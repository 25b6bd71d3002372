"""The ``sim`` backend: camera, drive and signals served by ``reachsafe sim serve`` over ZeroMQ.

Each device owns one DEALER socket and makes request -> reply calls (``hw_*`` messages, see
docs/protocol.md §4.2). A call that gets no reply within ``timeout_s`` raises DeviceTimeoutError
and the socket is closed and recreated, so a late reply can never be taken for the answer to the
next request, and the device keeps working once the server is back. Frame times come in the
server's clock and are mapped to this process's monotonic clock by their age (t_now - t_capture).

Signal reads are acknowledged: `SimSignals` numbers its reads and repeats a read's number until it
gets the answer, and each request confirms the last answer received. The server keeps an answer
until it is confirmed, so a reply that is lost or comes too late loses no reward, cost or episode
end: the next read returns it.

With CURVE keys (`robot.key_secret` and the server's `trainer.key`, the robot's trainer-link keys)
the link is encrypted and authenticated and may leave the machine; without them only a loopback
address is allowed.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import numpy as np
import zmq

from reachsafe.hardware.base import Camera, Drive, Frame, Signals, TaskSignals
from reachsafe.hardware.config import DEFAULT_SIM_TIMEOUT_S, HardwareConfig
from reachsafe.hardware.errors import DeviceTimeoutError, DeviceUnavailableError, HardwareError
from reachsafe.protocol.codec import decode, encode
from reachsafe.protocol.errors import KeyFileError, ProtocolError, TransportSecurityError
from reachsafe.protocol.messages import (
    ErrorMessage,
    HwDrive,
    HwFrame,
    HwHello,
    HwOk,
    HwReadFrame,
    HwReadSignals,
    HwSignals,
    HwSpec,
    HwStop,
    Message,
)
from reachsafe.protocol.sockets import ClientCurve, client_socket

log = logging.getLogger(__name__)

CURVE_HINT = (
    "give the sim link CURVE keys: `sim:tcp://HOST:PORT/ROBOT?keys=DIR` or hardware.sim.curve_secret_key "
    "(DIR/robot.key_secret) and hardware.sim.curve_server_key (DIR/trainer.key) in the robot YAML, and start "
    "the server with `reachsafe sim serve --keys DIR` (the folder `reachsafe keys generate` wrote)"
)


class SimLink:
    """One request -> reply channel to the sim server."""

    def __init__(
        self, endpoint: str, timeout_s: float = DEFAULT_SIM_TIMEOUT_S, curve: ClientCurve | None = None
    ) -> None:
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self.curve = curve
        self._ctx = zmq.Context.instance()
        self._sock: zmq.Socket | None = None
        self.timeouts = 0

    def open(self) -> None:
        if self._sock is not None:
            return
        try:
            self._sock = client_socket(self._ctx, zmq.DEALER, self.endpoint, curve=self.curve)
        except TransportSecurityError as exc:
            raise DeviceUnavailableError(f"sim link to {self.endpoint} refused: {exc}; {CURVE_HINT}") from exc

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None

    def request(self, msg: Message, expect: type[Message]) -> Any:
        """Send ``msg``, wait for a reply of type ``expect``; DeviceTimeoutError if none comes."""
        self.open()
        assert self._sock is not None
        try:
            self._sock.send(encode(msg), zmq.NOBLOCK)
            answered = bool(self._sock.poll(self.timeout_s * 1000.0, zmq.POLLIN))
        except zmq.Again:  # send queue full: the server has been gone for a while
            answered = False
        if not answered:
            self.timeouts += 1
            self.close()  # drop the pending request: its late reply must not answer the next one
            secured = " with the same CURVE keys" if self.curve is not None else ""
            raise DeviceTimeoutError(
                f"sim server {self.endpoint} did not answer {msg.TYPE} within {self.timeout_s:.2f} s: "
                f"is `reachsafe sim serve` running on that address{secured}? (hardware.sim.timeout_s)"
            )
        try:
            reply = decode(self._sock.recv())
        except ProtocolError as e:
            raise HardwareError(f"sim server {self.endpoint} sent an undecodable reply: {e}") from e
        if isinstance(reply, ErrorMessage):
            raise HardwareError(
                f"sim server {self.endpoint} refused {msg.TYPE}: [{reply.code}] {reply.message}"
            )
        if not isinstance(reply, expect):
            raise HardwareError(f"sim server {self.endpoint} answered {msg.TYPE} with {reply.TYPE}")
        return reply


class _SimDevice:
    """Shared connect logic: open the link and say hello to learn the robot's spec."""

    def __init__(
        self,
        endpoint: str,
        robot_id: str,
        timeout_s: float = DEFAULT_SIM_TIMEOUT_S,
        curve: ClientCurve | None = None,
    ) -> None:
        super().__init__()
        self.robot_id = robot_id
        self.link = SimLink(endpoint, timeout_s, curve)
        self.spec: HwSpec | None = None

    @classmethod
    def from_config(cls, hw: HardwareConfig) -> Any:
        s = hw.sim
        try:
            curve = (
                ClientCurve.from_files(s.curve_secret_key, s.curve_server_key) if s.curve_secret_key else None
            )
        except KeyFileError as exc:
            raise DeviceUnavailableError(f"sim link keys: {exc}") from exc
        return cls(s.endpoint, hw.robot_id, s.timeout_s, curve)

    def metrics(self) -> dict[str, float]:
        return {f"sim/{self.link_name}_timeouts": float(self.link.timeouts)}

    @property
    def link_name(self) -> str:
        return type(self).__name__.removeprefix("Sim").lower()

    def _open(self) -> None:
        try:
            self.spec = self.link.request(HwHello(robot=self.robot_id), HwSpec)
        except BaseException:
            self.link.close()
            raise

    def _close(self) -> None:
        self.link.close()


class SimCamera(_SimDevice, Camera):
    @property
    def features(self) -> dict[str, Any]:
        if self.spec is None:
            return {"image_shape": (64, 64, 3)}
        return {"image_shape": tuple(self.spec.obs_shape), "rate_hz": self.spec.rate_hz}

    def _read_latest(self) -> Frame:
        reply: HwFrame = self.link.request(HwReadFrame(robot=self.robot_id), HwFrame)
        t_local = time.monotonic() - max(0.0, reply.t_now - reply.t_capture)
        return Frame(
            image=np.array(reply.image), t=t_local, frame_id=reply.frame_id, resetting=reply.resetting
        )


class SimDrive(_SimDevice, Drive):
    @property
    def features(self) -> dict[str, Any]:
        return {"action_dim": 2 if self.spec is None else self.spec.action_dim}

    def _apply(self, action: np.ndarray) -> None:
        self.link.request(HwDrive(robot=self.robot_id, action=action.astype(np.float32)), HwOk)

    def _stop(self) -> None:
        self.link.request(HwStop(robot=self.robot_id), HwOk)


class SimSignals(_SimDevice, TaskSignals):
    """Acknowledged signal reads (docs/protocol.md §4.2): read ids survive reconnects, so an answer the
    server holds for this robot is confirmed or repeated, never dropped."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._read_id = 0  # the read to ask for: repeated until answered
        self._confirmed = -1  # the last read answered

    @property
    def features(self) -> dict[str, Any]:
        return {}

    def _read(self) -> Signals:
        ask = HwReadSignals(robot=self.robot_id, read_id=self._read_id, confirmed=self._confirmed)
        s: HwSignals = self.link.request(ask, HwSignals)
        if s.read_id != ask.read_id:
            raise HardwareError(
                f"sim server {self.link.endpoint} answered signal read {ask.read_id} with read {s.read_id}; "
                "it breaks docs/protocol.md §4.2 (an answer echoes its read_id)"
            )
        self._confirmed, self._read_id = s.read_id, s.read_id + 1
        if not (math.isfinite(s.reward) and math.isfinite(s.cost) and s.cost >= 0):
            raise HardwareError(
                f"sim server {self.link.endpoint} sent reward {s.reward} and cost {s.cost}: a reward must be "
                "finite and a cost finite and >= 0; fix the server (this answer is dropped)"
            )
        return Signals(
            reward=s.reward,
            cost=s.cost,
            terminated=s.terminated,
            truncated=s.truncated,
            episode=s.episode,
            resetting=s.resetting,
        )
