"""Abstract hardware interfaces: `Camera`, `Drive`, `TaskSignals`.

The runtime only ever sees these classes, so it cannot tell the simulator from a real robot.
Drivers subclass them and implement the underscored hooks (`_open`, `_close`, `_read_latest`,
`_apply`, `_stop`, `_read`); the public methods here add the connection checks, action
validation and the stale-frame rule, so every driver behaves the same way at the edges.
"""

from __future__ import annotations

import logging
import math
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import numpy as np

from reachsafe.hardware.errors import NotConnectedError, StaleFrameError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Frame:
    """One camera frame.

    `image` is uint8 H×W×3 in RGB order; `t` is the capture time on this process's
    `time.monotonic()` clock (not the time it was read); `frame_id` increases per captured frame.
    `resetting`: the source declares that it is resetting the episode (a simulator between
    episodes); the runtime brakes and records no step until it ends.
    """

    image: np.ndarray
    t: float
    frame_id: int
    resetting: bool = False

    def __post_init__(self) -> None:
        img = self.image
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"Frame.image must be uint8 HxWx3, got {img.dtype} {img.shape}")

    def age(self, now: float | None = None) -> float:
        """Seconds since capture on the monotonic clock."""
        return (time.monotonic() if now is None else now) - self.t


@dataclass(frozen=True)
class Signals:
    """Task signals since the previous `read()`.

    `reward` and `cost` are summed since the previous read; `terminated` / `truncated` are true
    if an episode ended since the previous read; `episode` is the current episode counter.
    `estop` is true while an operator or referee holds the emergency stop: the runtime must
    brake and send no other command until it clears. `resetting`: the task is between episodes
    (a simulator's reset); a read that carries nothing during it is not a step.
    """

    reward: float
    cost: float
    terminated: bool
    truncated: bool
    episode: int
    estop: bool = False
    resetting: bool = False

    @property
    def empty(self) -> bool:
        """Nothing to record: no reward, no cost, no episode end."""
        return self.reward == 0.0 and self.cost == 0.0 and not (self.terminated or self.truncated)


class Device(ABC):
    """A piece of hardware with a connection lifecycle.

    `connect()` is idempotent; `disconnect()` is idempotent and never raises for an
    already-disconnected device. Use as a context manager to connect/disconnect around a block.
    Subclasses call `super().__init__()` and implement `_open()` / `_close()` and `features`.
    """

    def __init__(self) -> None:
        self._connected = False

    @property
    def is_connected(self) -> bool:
        return self._connected

    @property
    @abstractmethod
    def features(self) -> dict[str, Any]:
        """What the device provides, e.g. {"image_shape": (64, 64, 3)} or {"action_dim": 2}."""

    def metrics(self) -> dict[str, float]:
        """Namespaced counters for the runtime's heartbeat (e.g. `drive/link_losses`); none by default."""
        return {}

    def connect(self) -> None:
        if self._connected:
            return
        self._open()
        self._connected = True
        log.debug("%s connected", type(self).__name__)

    def disconnect(self) -> None:
        if not self._connected:
            return
        try:
            self._close()
        finally:
            self._connected = False
            log.debug("%s disconnected", type(self).__name__)

    def __enter__(self) -> Device:
        self.connect()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.disconnect()

    def _require_connected(self) -> None:
        if not self._connected:
            raise NotConnectedError(f"{type(self).__name__} is not connected: call connect() first")

    @abstractmethod
    def _open(self) -> None:
        """Open the device; raise DeviceUnavailableError / DeviceTimeoutError on failure."""

    @abstractmethod
    def _close(self) -> None:
        """Release the device. Called once per successful `_open()`."""


class Camera(Device):
    """An RGB camera. Features: `image_shape` (H, W, 3), optionally `rate_hz`."""

    def read_latest(self, max_age: float | None = None) -> Frame:
        """The newest frame; raises StaleFrameError if it is older than `max_age` seconds, unless the
        frame is declared `resetting` (old by nature, and not to be acted on anyway)."""
        self._require_connected()
        frame = self._read_latest()
        if max_age is not None and not frame.resetting:
            age = frame.age()
            if age > max_age:
                raise StaleFrameError(age, max_age, frame.frame_id)
        return frame

    @abstractmethod
    def _read_latest(self) -> Frame:
        """Return the newest available frame with `t` on the local monotonic clock."""


class Drive(Device):
    """A drive taking normalised actions in [-1, 1]^A. Features: `action_dim`.

    For a differential-drive robot the action is (forward speed, turn rate).
    """

    def apply(self, action: np.ndarray) -> None:
        """Command `action` (clipped to [-1, 1]); a non-finite or mis-shaped action is a ValueError."""
        self._require_connected()
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        dim = self.features["action_dim"]
        if a.shape != (dim,):
            raise ValueError(f"action must have {dim} elements, got shape {np.shape(action)}")
        if not all(math.isfinite(x) for x in a):
            raise ValueError(f"action must be finite, got {a.tolist()}: brake with stop() instead")
        self._apply(np.clip(a, -1.0, 1.0).astype(np.float32))

    def stop(self) -> None:
        """Brake: bring the motors to rest now."""
        self._require_connected()
        self._stop()

    @abstractmethod
    def _apply(self, action: np.ndarray) -> None:
        """Send a validated float32 action in [-1, 1]^A."""

    @abstractmethod
    def _stop(self) -> None:
        """Send a brake command."""


class TaskSignals(Device):
    """Reward, cost and episode boundaries from the task (simulator, referee, operator).

    Contract for drivers: nothing is lost. A `read()` that raises (a timeout, a lost link) returns
    nothing, and what it would have returned is part of the next successful read.
    """

    def read(self) -> Signals:
        """Signals accumulated since the previous successful read."""
        self._require_connected()
        return self._read()

    @abstractmethod
    def _read(self) -> Signals:
        """Return the signals accumulated since the previous successful read and reset the
        accumulators; raise (keeping them) if they cannot be read."""
