"""Typed configs of a robot's devices: the `hardware:` section of a robot YAML file.

`HardwareConfig` (robot id, sim link, camera, drive, signals) is what `make_robot` needs. The
whole robot file (rate, limits, trainer address, keys, ...) is `reachsafe.edge_runtime.robot_config.RobotConfig`,
which nests a `HardwareConfig` under `hardware:`; `HardwareConfig.from_robot_yaml` reads only that
section so the hardware package never imports the runtime.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml

from reachsafe.protocol.config import Config, ConfigError, option
from reachsafe.protocol.constants import MAX_ID_CHARS, is_valid_id

#: How long the sim client waits for an answer by default (s); docs/protocol.md's timing contract.
DEFAULT_SIM_TIMEOUT_S = 0.5


@dataclass
class SimLinkConfig(Config):
    endpoint: str = option(
        "tcp://127.0.0.1:5600", "Address of `reachsafe sim serve` for the `sim` backends (tcp://HOST:PORT)."
    )
    timeout_s: float = option(
        DEFAULT_SIM_TIMEOUT_S,
        "Seconds to wait for the sim server's answer to one request before the device reports a timeout "
        "(the control loop brakes; a missed signal read loses nothing, the next read returns it). Longer "
        "than a control period stalls the tick that long.",
        ge=0.01,
        le=10.0,
    )
    curve_secret_key: str = option(
        "",
        "This robot's CURVE key pair file (robot.key_secret) for the sim link; empty = plain (loopback only).",
    )
    curve_server_key: str = option(
        "",
        "The sim server's CURVE public key file (trainer.key: `sim serve --keys` uses trainer.key_secret).",
    )

    def validate(self) -> None:
        if not self.endpoint.startswith("tcp://"):
            raise ConfigError(f"sim.endpoint {self.endpoint!r} must look like tcp://HOST:PORT")
        if bool(self.curve_secret_key) != bool(self.curve_server_key):
            raise ConfigError("set both sim.curve_secret_key and sim.curve_server_key, or neither")


@dataclass
class CameraConfig(Config):
    backend: Literal["sim", "picamera2", "opencv"] = option(
        "sim", "Camera driver: sim (simulator), picamera2 (Pi CSI camera), opencv (USB/V4L2 or video file)."
    )
    width: int = option(64, "Frame width in pixels delivered to the policy (must match the bundle).")
    height: int = option(64, "Frame height in pixels delivered to the policy (must match the bundle).")
    fps: float = option(30.0, "Camera frame rate; keep it at or above the control rate.")
    camera_num: int = option(0, "picamera2: index of the CSI camera.")
    source: str = option("0", "opencv: V4L2 index (0), device path (/dev/video0) or a video file to replay.")
    loop: bool = option(True, "opencv video file: restart at the end instead of going stale.")
    buffer_count: int = option(3, "picamera2: frame buffers (small keeps frames fresh; at least 2).")
    first_frame_timeout_s: float = option(
        3.0, "connect() fails if no frame arrives within this many seconds."
    )

    def validate(self) -> None:
        if self.width <= 0 or self.height <= 0:
            raise ConfigError(f"camera size {self.width}x{self.height} must be positive")
        if self.fps <= 0:
            raise ConfigError(f"camera.fps must be > 0, got {self.fps}")
        if self.buffer_count < 2:
            raise ConfigError(f"camera.buffer_count must be at least 2, got {self.buffer_count}")
        if self.backend == "picamera2" and (self.width % 2 or self.height % 2):
            raise ConfigError(f"picamera2 needs an even width and height, got {self.width}x{self.height}")


@dataclass
class DriveConfig(Config):
    backend: Literal["sim", "serial"] = option(
        "sim",
        "Drive driver: sim (simulator) or serial (motor controller speaking docs/deploy.md's protocol).",
    )
    port: str = option("/dev/ttyACM0", "serial: device path of the motor controller.")
    baudrate: int = option(115200, "serial: line speed; must match the firmware.")
    max_speed_mm_s: float = option(
        300.0, "Wheel speed at action forward = 1 (mm/s); also the wheel speed cap."
    )
    max_turn_rad_s: float = option(3.0, "Turn rate at action turn = 1 (rad/s).")
    wheel_base_mm: float = option(160.0, "Distance between the two wheels (mm).")
    controller_timeout_ms: int = option(
        300, "The controller stops the motors when no command arrived for this long (sent at connect)."
    )
    keepalive_s: float = option(
        0.1,
        "Send a `$K` keepalive when the line has been idle this long; it does NOT refresh the controller's "
        "motor timeout, so the motors still stop if drive commands stop.",
    )
    reply_timeout_s: float = option(
        0.5, "How long to wait for the controller's ack of any line; no ack in time counts as a lost link."
    )
    reconnect_s: float = option(0.5, "After a cable loss, retry opening the port this often.")
    boot_wait_s: float = option(
        2.5,
        "Keep repeating the hello this long after opening the port (boards that reset on open, e.g. Arduino).",
    )

    def validate(self) -> None:
        if self.max_speed_mm_s <= 0 or self.wheel_base_mm <= 0 or self.max_turn_rad_s < 0:
            raise ConfigError("drive.max_speed_mm_s and drive.wheel_base_mm must be > 0, max_turn_rad_s >= 0")
        if not 20 <= self.controller_timeout_ms <= 5000:
            raise ConfigError(
                f"drive.controller_timeout_ms must be within 20..5000 (the firmware refuses others), "
                f"got {self.controller_timeout_ms}"
            )
        if self.keepalive_s <= 0 or self.keepalive_s * 1000 >= self.controller_timeout_ms:
            raise ConfigError(
                f"drive.keepalive_s ({self.keepalive_s}) must be > 0 and shorter than "
                f"controller_timeout_ms ({self.controller_timeout_ms} ms), or the motors stop between commands"
            )


@dataclass
class SignalsConfig(Config):
    backend: Literal["sim", "referee", "manual"] = option(
        "sim", "Task signals: sim, referee (ZeroMQ feed from a tracker), manual (keyboard on a terminal)."
    )
    endpoint: str = option("tcp://127.0.0.1:5590", "referee: address of the referee's PUB socket.")
    timeout_s: float = option(
        1.0, "referee: reading fails (DeviceTimeoutError) if the referee was silent this long; 0 disables."
    )
    curve_secret_key: str = option(
        "", "referee: this robot's CURVE secret key file (robot.key_secret); empty = plain."
    )
    curve_server_key: str = option("", "referee: the referee's CURVE public key file; empty = plain.")
    allow_plain_remote: bool = option(
        False, "referee: allow an unencrypted feed from another machine (trusted lab network only)."
    )
    tty: str = option("/dev/tty", "manual: terminal to read keys from.")
    end_key: str = option("n", "manual: key that ends the episode (truncated).")
    fail_key: str = option("f", "manual: key that ends the episode as a failure (terminated).")
    cost_key: str = option("c", "manual: key that adds a cost of 1 (robot in a hazard).")
    reward_key: str = option("r", "manual: key that adds a reward of 1.")
    estop_key: str = option(" ", "manual: key that toggles the emergency stop.")

    def validate(self) -> None:
        keys = [self.end_key, self.fail_key, self.cost_key, self.reward_key, self.estop_key]
        if any(len(k) != 1 for k in keys) or len(set(keys)) != len(keys):
            raise ConfigError(f"signals keys must be distinct single characters, got {keys}")
        if self.timeout_s < 0:
            raise ConfigError(f"signals.timeout_s must be >= 0, got {self.timeout_s}")
        if bool(self.curve_secret_key) != bool(self.curve_server_key):
            raise ConfigError("set both signals.curve_secret_key and signals.curve_server_key, or neither")


@dataclass
class HardwareConfig(Config):
    robot_id: str = option("robot0", "This robot's name at the trainer and on the sim server.")
    sim: SimLinkConfig = option(default_factory=SimLinkConfig, help="Simulator link for sim backends.")
    camera: CameraConfig = option(default_factory=CameraConfig, help="Camera.")
    drive: DriveConfig = option(default_factory=DriveConfig, help="Drive (motor controller).")
    signals: SignalsConfig = option(default_factory=SignalsConfig, help="Task signals (reward, cost, done).")

    def validate(self) -> None:
        if not is_valid_id(self.robot_id) or "/" in self.robot_id:
            raise ConfigError(
                f"robot_id {self.robot_id!r} must be 1 to {MAX_ID_CHARS} printable characters without '/'"
            )

    @classmethod
    def from_robot_yaml(cls, path: str | Path) -> HardwareConfig:
        """The `hardware:` section of a robot YAML file (the other sections are the runtime's)."""
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except OSError as exc:
            raise ConfigError(f"cannot read robot config {path}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        if not isinstance(data, dict) or not isinstance(data.get("hardware"), dict):
            raise ConfigError(f"{path}: no 'hardware:' section; see hardware/examples/sim_robot.yaml")
        return cls.from_dict(data["hardware"], source=f"{path}:hardware")
