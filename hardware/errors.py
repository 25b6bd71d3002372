"""Typed hardware errors. Every message says what to do about it."""

from __future__ import annotations


class HardwareError(Exception):
    """Base of every error raised by a hardware device or driver."""


class NotConnectedError(HardwareError):
    """The device was used before `connect()` (or after `disconnect()`)."""


class DeviceUnavailableError(HardwareError):
    """The SDK or the physical device is missing; the message says what to install or plug in."""


class StaleFrameError(HardwareError):
    """The newest frame is older than the caller's `max_age`."""

    def __init__(self, age: float, max_age: float, frame_id: int | None = None) -> None:
        self.age = age
        self.max_age = max_age
        self.frame_id = frame_id
        super().__init__(
            f"newest frame {frame_id} is {age * 1e3:.1f} ms old (max {max_age * 1e3:.1f} ms): "
            "the camera has stalled or runs slower than the control rate; check the camera rate "
            "and cable, or raise max_age"
        )


class DeviceTimeoutError(HardwareError):
    """The device did not answer within its deadline."""
