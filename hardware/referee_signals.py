"""Task signals from a referee: an external process (motion capture, AprilTag tracker, a person
with a laptop) that watches the robot and publishes reward, cost and episode ends over ZeroMQ.

Wire format (PUB on the referee → SUB on the robot). Each message is two frames:

    frame 0: topic, the robot id in UTF-8 (the robot keeps only exact matches)
    frame 1: a msgpack map {"v": 1, "type": "referee", "seq": int, "reward": float, "cost": float,
             "terminated": bool, "truncated": bool, "estop": bool}

`reward` and `cost` are increments since the referee's previous message to that robot (the robot
sums them between its reads); `terminated` / `truncated` end the current episode; `estop` is the
emergency-stop level (the newest message wins). `seq` increases by one per message per robot, so
the robot can count messages PUB/SUB dropped. A referee publishes at least every 0.2 s (an
all-zero message is a heartbeat); if it is silent for `timeout_s`, `read()` raises
`DeviceTimeoutError`, because a robot that cannot see its costs must not learn from those steps.

This is not a `reachsafe.protocol.messages` type: the referee is outside the trainer link and the map is
the whole contract. `RefereePublisher` is the referee side, for tracker scripts and tests.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import msgpack

from reachsafe.hardware.base import Signals, TaskSignals
from reachsafe.hardware.errors import DeviceTimeoutError, DeviceUnavailableError

if TYPE_CHECKING:
    import zmq

    from reachsafe.hardware.config import HardwareConfig

log = logging.getLogger(__name__)

REFEREE_VERSION = 1
MAX_MESSAGE_BYTES = 4096
_FIELDS = {"reward": float, "cost": float, "terminated": bool, "truncated": bool, "estop": bool}


def encode_referee(
    seq: int, reward: float, cost: float, terminated: bool, truncated: bool, estop: bool
) -> bytes:
    msg = {"v": REFEREE_VERSION, "type": "referee", "seq": seq, "reward": float(reward), "cost": float(cost)}
    msg |= {"terminated": bool(terminated), "truncated": bool(truncated), "estop": bool(estop)}
    return msgpack.packb(msg)


def decode_referee(data: bytes) -> dict[str, Any]:
    """Validate one payload; raises ValueError saying what is wrong."""
    try:
        msg = msgpack.unpackb(
            data, raw=False, strict_map_key=True, max_map_len=16, max_str_len=64, max_array_len=0
        )
    except Exception as e:
        raise ValueError(f"not msgpack: {e}") from None
    if not isinstance(msg, dict) or msg.get("v") != REFEREE_VERSION or msg.get("type") != "referee":
        raise ValueError(f"not a referee v{REFEREE_VERSION} message")
    if not isinstance(msg.get("seq"), int) or isinstance(msg.get("seq"), bool):
        raise ValueError("seq must be an integer")
    for name, kind in _FIELDS.items():
        value = msg.get(name)
        ok = (
            isinstance(value, bool)
            if kind is bool
            else isinstance(value, (int, float)) and not isinstance(value, bool)
        )
        if not ok:
            raise ValueError(f"{name} must be {kind.__name__}, got {value!r}")
    if not (math.isfinite(msg["reward"]) and math.isfinite(msg["cost"]) and msg["cost"] >= 0):
        raise ValueError("reward must be finite and cost finite and >= 0")
    return msg


class RefereeSignals(TaskSignals):
    def __init__(
        self,
        endpoint: str,
        robot_id: str,
        timeout_s: float = 1.0,
        curve_secret_key: str = "",
        curve_server_key: str = "",
        allow_plain_remote: bool = False,
    ) -> None:
        super().__init__()
        self.endpoint = endpoint
        self.robot_id = robot_id
        self.timeout_s = timeout_s
        self.curve_files = (curve_secret_key, curve_server_key) if curve_secret_key else None
        self.allow_plain_remote = allow_plain_remote
        self._ctx: zmq.Context | None = None
        self._sock: zmq.Socket | None = None
        self._reset_state()
        self.counters = {"messages": 0, "bad_messages": 0, "lost_messages": 0}

    @classmethod
    def from_config(cls, hw: HardwareConfig) -> RefereeSignals:
        s = hw.signals
        return cls(
            s.endpoint, hw.robot_id, s.timeout_s, s.curve_secret_key, s.curve_server_key, s.allow_plain_remote
        )

    @property
    def features(self) -> dict[str, Any]:
        return {}

    def metrics(self) -> dict[str, float]:
        return {f"signals/{k}": float(v) for k, v in self.counters.items()}

    def _reset_state(self) -> None:
        self._reward = self._cost = 0.0
        self._terminated = self._truncated = self._estop = False
        self._episode = 0
        self._last_seq: int | None = None
        self._last_heard = time.monotonic()

    def _open(self) -> None:
        import zmq

        from reachsafe.protocol.sockets import ClientCurve, client_socket

        curve = ClientCurve.from_files(*self.curve_files) if self.curve_files else None
        self._ctx = zmq.Context()
        try:
            sock = client_socket(
                self._ctx,
                zmq.SUB,
                self.endpoint,
                curve=curve,
                allow_plain_remote=self.allow_plain_remote,
                max_message_bytes=MAX_MESSAGE_BYTES,
                linger_ms=0,
            )
        except Exception as e:
            self._ctx.term()
            raise DeviceUnavailableError(f"cannot subscribe to the referee at {self.endpoint}: {e}") from e
        sock.setsockopt(zmq.SUBSCRIBE, self.robot_id.encode())
        self._sock = sock
        self._reset_state()

    def _close(self) -> None:
        assert self._sock is not None and self._ctx is not None
        self._sock.close(linger=0)
        self._ctx.term()
        self._sock = self._ctx = None

    def _read(self) -> Signals:
        import zmq

        assert self._sock is not None
        while True:
            try:
                frames = self._sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            self._take(frames)
        silent = time.monotonic() - self._last_heard
        if self.timeout_s > 0 and silent > self.timeout_s:
            raise DeviceTimeoutError(
                f"referee at {self.endpoint} silent for {silent:.1f} s (timeout {self.timeout_s:.1f} s): "
                "is the tracker running and publishing for robot id "
                f"{self.robot_id!r}?"
            )
        out = Signals(self._reward, self._cost, self._terminated, self._truncated, self._episode, self._estop)
        self._reward = self._cost = 0.0
        self._terminated = self._truncated = False
        return out

    def _take(self, frames: list[bytes]) -> None:
        if len(frames) != 2:
            self.counters["bad_messages"] += 1
            return
        if frames[0] != self.robot_id.encode():
            return  # SUB filters by prefix: this is another robot whose id starts with ours
        try:
            msg = decode_referee(frames[1])
        except ValueError as e:
            self.counters["bad_messages"] += 1
            log.warning("referee: ignored a bad message: %s", e)
            return
        self.counters["messages"] += 1
        if self._last_seq is not None and msg["seq"] > self._last_seq + 1:
            lost = msg["seq"] - self._last_seq - 1
            self.counters["lost_messages"] += lost
            log.warning(
                "referee: %d message(s) lost before seq %d; rewards/costs in them are missing",
                lost,
                msg["seq"],
            )
        self._last_seq = msg["seq"]
        self._last_heard = time.monotonic()
        self._reward += msg["reward"]
        self._cost += msg["cost"]
        self._estop = msg["estop"]
        if msg["terminated"] or msg["truncated"]:
            self._terminated |= msg["terminated"]
            self._truncated |= msg["truncated"]
            self._episode += 1


class RefereePublisher:
    """The referee side: bind a PUB socket and publish per-robot signals.

    With `curve_secret_key` (the referee's key pair file) and `allowed_robot_keys` (robots' `*.key`
    files or a directory of them) the feed is CURVE-encrypted and only those robots are served. The
    allow-list runs as a ZAP handler on this publisher's own context, the only one that can enforce
    it for this socket.
    """

    def __init__(
        self,
        endpoint: str,
        *,
        curve_secret_key: str | os.PathLike | None = None,
        allowed_robot_keys: str | os.PathLike | Iterable[str | os.PathLike] = (),
        allow_plain_remote: bool = False,
    ) -> None:
        import zmq

        from reachsafe.protocol.sockets import ServerCurve, server_socket

        self._ctx = zmq.Context()
        self._curve = None
        try:
            if curve_secret_key is not None:
                self._curve = ServerCurve(self._ctx, curve_secret_key, allowed_robot_keys)
            self._sock = server_socket(
                self._ctx,
                zmq.PUB,
                endpoint,
                curve=self._curve,
                allow_plain_remote=allow_plain_remote,
                max_message_bytes=MAX_MESSAGE_BYTES,
                linger_ms=0,
            )
        except BaseException:
            self._release()
            raise
        self.endpoint = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._seq: dict[str, int] = {}

    def _release(self) -> None:
        if self._curve is not None:
            self._curve.close()
        self._ctx.term()

    def publish(
        self,
        robot_id: str,
        reward: float = 0.0,
        cost: float = 0.0,
        terminated: bool = False,
        truncated: bool = False,
        estop: bool = False,
    ) -> None:
        seq = self._seq.get(robot_id, -1) + 1
        self._seq[robot_id] = seq
        self._sock.send_multipart(
            [robot_id.encode(), encode_referee(seq, reward, cost, terminated, truncated, estop)]
        )

    def close(self) -> None:
        self._sock.close(linger=0)
        self._release()

    def __enter__(self) -> RefereePublisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
