"""Build a `Robot` (camera + drive + signals) from a URI or a robot config.

Backends are listed explicitly in `CAMERAS`, `DRIVES` and `SIGNALS`; each entry imports its
driver module only when that backend is used, so no SDK (picamera2, OpenCV, ZeroMQ for the sim
client) is loaded unless the robot needs it.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

from reachsafe.hardware.base import Camera, Device, Drive, TaskSignals
from reachsafe.hardware.config import (
    CameraConfig,
    DriveConfig,
    HardwareConfig,
    SignalsConfig,
    SimLinkConfig,
)

log = logging.getLogger(__name__)

SIM_SCHEME = "sim:"
DEFAULT_SIM_ROBOT_ID = "robot0"
SIM_URI_FORM = "sim:tcp://HOST:PORT[/robot_id][?keys=DIR&timeout_s=S]"


@dataclass
class Robot:
    """The three devices a runtime needs. A context manager that connects all three and, on exit,
    brakes the drive before disconnecting anything."""

    camera: Camera
    drive: Drive
    signals: TaskSignals

    @property
    def devices(self) -> tuple[Device, Device, Device]:
        return (self.camera, self.drive, self.signals)

    @property
    def is_connected(self) -> bool:
        return all(d.is_connected for d in self.devices)

    @property
    def features(self) -> dict[str, Any]:
        """The union of the three devices' features (camera first, signals last)."""
        out: dict[str, Any] = {}
        for d in self.devices:
            out.update(d.features)
        return out

    def metrics(self) -> dict[str, float]:
        """The devices' counters (`drive/…`, `signals/…`) for the runtime's heartbeat."""
        out: dict[str, float] = {}
        for d in self.devices:
            out.update(d.metrics())
        return out

    def connect(self) -> None:
        """Connect camera, drive and signals; on a failure, disconnect what was connected and raise."""
        done: list[Device] = []
        try:
            for d in self.devices:
                d.connect()
                done.append(d)
        except BaseException:
            for d in reversed(done):
                _quietly(d.disconnect, f"disconnecting {type(d).__name__}")
            raise

    def disconnect(self) -> None:
        """Brake, then disconnect the drive, camera and signals; raise the first error afterwards."""
        first: BaseException | None = None
        if self.drive.is_connected:
            first = _quietly(self.drive.stop, "braking the drive")
        for d in (self.drive, self.camera, self.signals):
            err = _quietly(d.disconnect, f"disconnecting {type(d).__name__}")
            first = first or err
        if first is not None:
            raise first

    def __enter__(self) -> Robot:
        self.connect()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.disconnect()


def _quietly(fn: Callable[[], None], what: str) -> BaseException | None:
    try:
        fn()
    except Exception as e:  # keep going: the other devices must still be released (the caller gets the error)
        log.warning("error while %s: %s", what, e)
        return e
    return None


def _cls(module: str, name: str) -> type:
    return getattr(importlib.import_module(module), name)


def _driver(module: str, name: str) -> Callable[[HardwareConfig], Any]:
    return lambda hw: _cls(module, name).from_config(hw)


# backend name -> builder(HardwareConfig) -> device. Builders import their driver module lazily.
CAMERAS: dict[str, Callable[[HardwareConfig], Camera]] = {
    "sim": _driver("reachsafe.hardware.sim", "SimCamera"),
    "picamera2": _driver("reachsafe.hardware.picamera2_camera", "Picamera2Camera"),
    "opencv": _driver("reachsafe.hardware.opencv_camera", "OpenCVCamera"),
}
DRIVES: dict[str, Callable[[HardwareConfig], Drive]] = {
    "sim": _driver("reachsafe.hardware.sim", "SimDrive"),
    "serial": _driver("reachsafe.hardware.serial_drive", "SerialDrive"),
}
SIGNALS: dict[str, Callable[[HardwareConfig], TaskSignals]] = {
    "sim": _driver("reachsafe.hardware.sim", "SimSignals"),
    "referee": _driver("reachsafe.hardware.referee_signals", "RefereeSignals"),
    "manual": _driver("reachsafe.hardware.manual_signals", "ManualSignals"),
}


def _build(table: dict[str, Callable[[HardwareConfig], Any]], kind: str, hw: HardwareConfig) -> Any:
    return table[getattr(hw, kind).backend](hw)  # the config's Literal type admits only table keys


def parse_sim_uri(uri: str) -> tuple[SimLinkConfig, str]:
    """`sim:tcp://HOST:PORT[/robot_id][?keys=DIR&timeout_s=S]` -> (the sim link, robot_id).

    `keys=DIR` turns CURVE on with the robot's trainer-link keys, DIR/robot.key_secret and
    DIR/trainer.key (the server runs `reachsafe sim serve --keys` with the same folder); without it
    the link is plain, which only a loopback address allows. The robot id defaults to robot0.
    """
    if not uri.startswith(SIM_SCHEME):
        raise ValueError(f"not a sim URI: {uri!r} (expected {SIM_URI_FORM})")
    parts = urlsplit(uri[len(SIM_SCHEME) :])
    if parts.scheme != "tcp" or not parts.hostname or parts.port is None:
        raise ValueError(f"bad sim URI {uri!r}: expected {SIM_URI_FORM}")
    query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
    unknown = sorted(set(query) - {"keys", "timeout_s"})
    if unknown:
        raise ValueError(f"bad sim URI {uri!r}: unknown parameter(s) {unknown}; expected {SIM_URI_FORM}")
    link: dict[str, Any] = {"endpoint": f"tcp://{parts.netloc}"}
    if query.get("keys"):
        keys = Path(query["keys"])
        link |= {
            "curve_secret_key": str(keys / "robot.key_secret"),
            "curve_server_key": str(keys / "trainer.key"),
        }
    if "timeout_s" in query:
        try:
            link["timeout_s"] = float(query["timeout_s"])
        except ValueError:
            raise ValueError(f"bad sim URI {uri!r}: timeout_s must be a number of seconds") from None
    robot_id = parts.path.strip("/") or DEFAULT_SIM_ROBOT_ID
    return SimLinkConfig(**link), robot_id


def hardware_config(uri_or_config: Any) -> HardwareConfig:
    """Normalise what `make_robot` accepts into a `HardwareConfig`.

    Accepted: a sim URI (`parse_sim_uri`); a path to a robot YAML file (its `hardware:`
    section); a `HardwareConfig`; or a robot config with a `hardware` attribute
    (`reachsafe.edge_runtime.robot_config.RobotConfig`).
    """
    if isinstance(uri_or_config, HardwareConfig):
        return uri_or_config
    if isinstance(uri_or_config, str) and uri_or_config.startswith(SIM_SCHEME):
        sim, robot_id = parse_sim_uri(uri_or_config)
        return HardwareConfig(
            robot_id=robot_id,
            sim=sim,
            camera=CameraConfig(backend="sim"),
            drive=DriveConfig(backend="sim"),
            signals=SignalsConfig(backend="sim"),
        )
    if isinstance(uri_or_config, (str, Path)):
        if Path(uri_or_config).suffix not in (".yaml", ".yml"):
            raise ValueError(f"{uri_or_config!r} is neither {SIM_URI_FORM} nor a robot YAML file (*.yaml)")
        return HardwareConfig.from_robot_yaml(uri_or_config)
    hw = getattr(uri_or_config, "hardware", None)
    if isinstance(hw, HardwareConfig):
        return hw
    raise TypeError(
        f"make_robot needs a sim URI, a robot YAML path or a config, got {type(uri_or_config).__name__}"
    )


def make_robot(uri_or_config: Any) -> Robot:
    """A `Robot` from a sim URI, a robot YAML path or a config (see `hardware_config`).

    The devices are created, not connected: use the robot as a context manager.
    """
    hw = hardware_config(uri_or_config)
    return Robot(
        camera=_build(CAMERAS, "camera", hw),
        drive=_build(DRIVES, "drive", hw),
        signals=_build(SIGNALS, "signals", hw),
    )
