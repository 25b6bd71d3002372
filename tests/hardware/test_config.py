"""Robot YAML files: the examples load, and mistakes are clear errors naming the key and file."""

from __future__ import annotations

import pytest
import yaml
from conftest import REPO

from reachsafe.configs import load_config_file
from reachsafe.edge_runtime.robot_config import RobotConfig, load_robot_config
from reachsafe.hardware import make_robot
from reachsafe.hardware.config import HardwareConfig
from reachsafe.hardware.manual_signals import ManualSignals
from reachsafe.hardware.picamera2_camera import Picamera2Camera
from reachsafe.hardware.referee_signals import RefereeSignals
from reachsafe.hardware.serial_drive import SerialDrive
from reachsafe.protocol.config import ConfigError

EXAMPLES = REPO / "hardware" / "examples"


def test_examples_load_and_build_their_devices() -> None:
    sim = load_robot_config(EXAMPLES / "sim_robot.yaml")
    assert sim.robot_id == sim.edge.robot_id == "robot0"
    assert sim.keys_dir == EXAMPLES / "keys"  # relative to the file
    pi = load_config_file(
        EXAMPLES / "pi_serial_robot.yaml"
    )  # via `kind: robot`, as `edge run --hardware` does
    assert isinstance(pi, RobotConfig) and pi.edge.robot_id == "pi-01"
    robot = make_robot(pi)
    assert isinstance(robot.camera, Picamera2Camera) and robot.camera.size == (64, 64)
    assert isinstance(robot.drive, SerialDrive) and robot.drive.controller_timeout_ms == 250
    assert isinstance(robot.signals, RefereeSignals) and robot.signals.robot_id == "pi-01"
    assert not robot.is_connected  # building touches no device


def write(tmp_path, data: dict):
    path = tmp_path / "robot.yaml"
    path.write_text(yaml.safe_dump({"kind": "robot", **data}))
    return path


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"hardware": {"camera": {"widht": 64}}}, r"unknown key\(s\) \['widht'\]"),
        ({"hardware": {"camera": {"fps": "fast"}}}, "camera:fps: expected a number"),
        ({"hardware": {"drive": {"backend": "can"}}}, r"'can' is not one of \['sim', 'serial'\]"),
        ({"hardware": {"drive": {"keepalive_s": 0.5, "controller_timeout_ms": 300}}}, "keepalive_s"),
        ({"hardware": {"camera": {"fps": 10}}, "edge": {"rate_hz": 20}}, "below edge.rate_hz"),
        ({"hardware": {"camera": {"backend": "picamera2", "width": 63}}}, "even width"),
        ({"hardware": {"signals": {"cost_key": "n"}}}, "distinct single characters"),
        ({"hardware": {"signals": {"curve_secret_key": "k"}}}, "or neither"),
        ({"hardware": {"robot_id": "a"}, "edge": {"robot_id": "b"}}, "set the id once"),
        (
            {"hardware": {"drive": {"backend": "serial", "controller_timeout_ms": 80, "keepalive_s": 0.05}}},
            "two control periods",
        ),
        ({"trainer": {"address": "workstation:5555"}}, "tcp://HOST:PORT"),
        ({"version": 2}, "newer than this program"),
    ],
)
def test_mistakes_are_clear_errors(tmp_path, data, message) -> None:
    path = write(tmp_path, data)
    with pytest.raises(ConfigError, match=message) as err:
        load_robot_config(path)
    if "unknown key" in message or "expected" in message:
        assert str(path) in str(err.value)


def test_missing_file_is_a_config_error(tmp_path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_robot_config(tmp_path / "nope.yaml")


def test_manual_backend_from_yaml(tmp_path) -> None:
    cfg = load_robot_config(
        write(tmp_path, {"hardware": {"signals": {"backend": "manual", "estop_key": "x"}}})
    )
    signals = make_robot(cfg).signals
    assert isinstance(signals, ManualSignals) and signals.keys["x"] == "estop"


@pytest.mark.parametrize("robot_id", ["", "x" * 129, "tab\there", "a/b"])
def test_a_robot_id_the_wire_would_refuse_is_refused_when_the_config_loads(robot_id: str) -> None:
    from reachsafe.edge_runtime.config import EdgeConfig

    with pytest.raises(ConfigError, match="robot_id"):
        HardwareConfig(robot_id=robot_id)
    if "/" not in robot_id:
        with pytest.raises(ConfigError, match="robot_id"):
            EdgeConfig(robot_id=robot_id)
