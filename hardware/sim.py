"""The ``sim`` backend: camera, drive and signals served by ``reachsafe sim serve`` over ZeroMQ.

Each device owns one DEALER socket and makes request -> reply calls (``hw_*`` messages, see
docs/architecture.md). A call that gets no reply within ``timeout_s`` raises DeviceTimeoutError
and the socket is closed and recreated, so a late reply can never be taken for the answer to the
next request, and the device keeps working once the server is back. Frame times come in the
server's clock and are mapped to this process's monotonic clock by their age (t_now - t_capture).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import zmq

from reachsafe.hardware.base import Camera, Drive, Frame, Signals, TaskSignals
from reachsafe.hardware.errors import DeviceTimeoutError, HardwareError
from reachsafe.protocol.codec import decode, encode
from reachsafe.protocol.errors import ProtocolError
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
from reachsafe.protocol.sockets import client_socket

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 0.5


class SimLink:
    """One request -> reply channel to the sim server."""

    def __init__(self, endpoint: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self._ctx = zmq.Context.instance()
        self._sock: zmq.Socket | None = None
        self.timeouts = 0

    def open(self) -> None:
        if self._sock is None:
            self._sock = client_socket(self._ctx, zmq.DEALER, self.endpoint)

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
            raise DeviceTimeoutError(
                f"sim server {self.endpoint} did not answer {msg.TYPE} within {self.timeout_s:.2f} s: "
                "is `reachsafe sim serve` running on that address?"
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

    def __init__(self, endpoint: str, robot_id: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        super().__init__()
        self.robot_id = robot_id
        self.link = SimLink(endpoint, timeout_s)
        self.spec: HwSpec | None = None

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
        return Frame(image=np.array(reply.image), t=t_local, frame_id=reply.frame_id)


class SimDrive(_SimDevice, Drive):
    @property
    def features(self) -> dict[str, Any]:
        return {"action_dim": 2 if self.spec is None else self.spec.action_dim}

    def _apply(self, action: np.ndarray) -> None:
        self.link.request(HwDrive(robot=self.robot_id, action=action.astype(np.float32)), HwOk)

    def _stop(self) -> None:
        self.link.request(HwStop(robot=self.robot_id), HwOk)


class SimSignals(_SimDevice, TaskSignals):
    @property
    def features(self) -> dict[str, Any]:
        return {}

    def _read(self) -> Signals:
        s: HwSignals = self.link.request(HwReadSignals(robot=self.robot_id), HwSignals)
        return Signals(
            reward=s.reward, cost=s.cost, terminated=s.terminated, truncated=s.truncated, episode=s.episode
        )
