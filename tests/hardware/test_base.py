"""The hardware base classes and the robot factory, with small in-test devices."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest

from reachsafe.hardware import (
    Camera,
    Drive,
    Frame,
    HardwareConfig,
    NotConnectedError,
    Robot,
    Signals,
    StaleFrameError,
    TaskSignals,
    hardware_config,
    parse_sim_uri,
)
from reachsafe.hardware.config import SimLinkConfig
from reachsafe.protocol.config import ConfigError


class Log:
    def __init__(self) -> None:
        self.events: list[str] = []


class FixedCamera(Camera):
    def __init__(self, log: Log, age: float = 0.0) -> None:
        super().__init__()
        self.log, self.age = log, age

    @property
    def features(self) -> dict:
        return {"image_shape": (4, 5, 3)}

    def _open(self) -> None:
        self.log.events.append("camera.open")

    def _close(self) -> None:
        self.log.events.append("camera.close")

    def _read_latest(self) -> Frame:
        return Frame(np.zeros((4, 5, 3), np.uint8), time.monotonic() - self.age, 7)


class RecordingDrive(Drive):
    def __init__(self, log: Log, fail_open: bool = False) -> None:
        super().__init__()
        self.log, self.fail_open = log, fail_open
        self.actions: list[np.ndarray] = []

    @property
    def features(self) -> dict:
        return {"action_dim": 2}

    def _open(self) -> None:
        if self.fail_open:
            raise OSError("no drive")
        self.log.events.append("drive.open")

    def _close(self) -> None:
        self.log.events.append("drive.close")

    def _apply(self, action: np.ndarray) -> None:
        self.actions.append(action)

    def _stop(self) -> None:
        self.log.events.append("drive.stop")


class ZeroSignals(TaskSignals):
    def __init__(self, log: Log) -> None:
        super().__init__()
        self.log = log

    @property
    def features(self) -> dict:
        return {}

    def _open(self) -> None:
        self.log.events.append("signals.open")

    def _close(self) -> None:
        self.log.events.append("signals.close")

    def _read(self) -> Signals:
        return Signals(0.0, 0.0, False, False, 0)


def test_use_before_connect_raises_and_context_manager_connects() -> None:
    cam = FixedCamera(Log())
    with pytest.raises(NotConnectedError, match="connect"):
        cam.read_latest()
    with cam:
        assert cam.is_connected
        assert cam.read_latest().frame_id == 7
    assert not cam.is_connected
    cam.disconnect()  # idempotent


def test_stale_frame_raises_with_age() -> None:
    with FixedCamera(Log(), age=0.5) as cam:
        assert cam.read_latest().frame_id == 7  # no max_age: no check
        with pytest.raises(StaleFrameError) as e:
            cam.read_latest(max_age=0.1)
    assert e.value.age >= 0.5 and e.value.max_age == 0.1


def test_frame_rejects_wrong_dtype() -> None:
    with pytest.raises(ValueError, match="uint8"):
        Frame(np.zeros((4, 5, 3), np.float32), 0.0, 0)


def test_drive_clips_and_rejects_bad_actions() -> None:
    with RecordingDrive(Log()) as drive:
        drive.apply(np.array([2.0, -0.5]))
        np.testing.assert_array_equal(drive.actions[-1], np.array([1.0, -0.5], np.float32))
        with pytest.raises(ValueError, match="finite"):
            drive.apply(np.array([np.nan, 0.0]))
        with pytest.raises(ValueError, match="2 elements"):
            drive.apply(np.zeros(3))
    assert len(drive.actions) == 1


def test_robot_brakes_before_disconnecting() -> None:
    log = Log()
    with Robot(FixedCamera(log), RecordingDrive(log), ZeroSignals(log)) as robot:
        assert robot.is_connected
        assert robot.features == {"image_shape": (4, 5, 3), "action_dim": 2}
        assert robot.metrics() == {}
    assert log.events == [
        "camera.open",
        "drive.open",
        "signals.open",
        "drive.stop",
        "drive.close",
        "camera.close",
        "signals.close",
    ]


def test_robot_connect_failure_releases_connected_devices() -> None:
    log = Log()
    robot = Robot(FixedCamera(log), RecordingDrive(log, fail_open=True), ZeroSignals(log))
    with pytest.raises(OSError):
        robot.connect()
    assert log.events == ["camera.open", "camera.close"]
    assert not robot.camera.is_connected


def test_parse_sim_uri() -> None:
    assert parse_sim_uri("sim:tcp://127.0.0.1:5600/r2") == (
        SimLinkConfig(endpoint="tcp://127.0.0.1:5600"),
        "r2",
    )
    assert parse_sim_uri("sim:tcp://localhost:5600") == (
        SimLinkConfig(endpoint="tcp://localhost:5600"),
        "robot0",
    )
    link, rid = parse_sim_uri("sim:tcp://10.0.0.5:5600/r3?keys=/k&timeout_s=2.5")
    assert rid == "r3" and (link.endpoint, link.timeout_s) == ("tcp://10.0.0.5:5600", 2.5)
    assert (link.curve_secret_key, link.curve_server_key) == ("/k/robot.key_secret", "/k/trainer.key")
    for bad in (
        "tcp://h:1",
        "sim:tcp://host",
        "sim:udp://h:1",
        "sim:tcp://h:1/r?key=k",
        "sim:tcp://h:1?timeout_s=x",
    ):
        with pytest.raises(ValueError, match="sim"):
            parse_sim_uri(bad)
    with pytest.raises(ConfigError, match="timeout_s"):  # the config's bounds apply to the URI too
        parse_sim_uri("sim:tcp://h:1/r?timeout_s=0")


def test_unknown_backend_is_a_clear_config_error() -> None:
    with pytest.raises(ConfigError, match="lidar"):
        HardwareConfig.from_dict({"camera": {"backend": "lidar"}})


def test_make_robot_accepts_sim_uri_yaml_and_config(tmp_path) -> None:
    hw = hardware_config("sim:tcp://127.0.0.1:5600/r7")
    assert (hw.robot_id, hw.sim.endpoint, hw.camera.backend) == ("r7", "tcp://127.0.0.1:5600", "sim")
    path = tmp_path / "robot.yaml"
    path.write_text("trainer: {address: tcp://x:1}\nhardware:\n  robot_id: r9\n  drive: {backend: serial}\n")
    assert hardware_config(path).drive.backend == "serial"
    assert hardware_config(str(path)).robot_id == "r9"
    with pytest.raises(ValueError, match="robot YAML"):
        hardware_config("tcp://127.0.0.1:5600")
    (tmp_path / "bad.yaml").write_text("hardware:\n  camera: {widht: 3}\n")
    with pytest.raises(ConfigError, match="widht"):
        hardware_config(tmp_path / "bad.yaml")


def test_import_hardware_loads_no_sdk() -> None:
    code = (
        "import sys, hardware; "
        "bad = [m for m in ('torch', 'cv2', 'serial', 'picamera2', 'zmq', 'reachsafe.hardware.sim') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
