"""Hardware interfaces, drivers and the robot factory.

Importing this package loads no SDK and no simulator client: drivers are imported only when
`make_robot` builds a robot that uses them.
"""

from reachsafe.hardware.base import Camera, Device, Drive, Frame, Signals, TaskSignals
from reachsafe.hardware.config import HardwareConfig
from reachsafe.hardware.errors import (
    DeviceTimeoutError,
    DeviceUnavailableError,
    HardwareError,
    NotConnectedError,
    StaleFrameError,
)
from reachsafe.hardware.factory import Robot, hardware_config, make_robot, parse_sim_uri

__all__ = [
    "Camera",
    "Device",
    "DeviceTimeoutError",
    "DeviceUnavailableError",
    "Drive",
    "Frame",
    "HardwareConfig",
    "HardwareError",
    "NotConnectedError",
    "Robot",
    "Signals",
    "StaleFrameError",
    "TaskSignals",
    "hardware_config",
    "make_robot",
    "parse_sim_uri",
]
