"""One YAML file describes a robot: its devices, the runtime's settings, the trainer, its keys.

```yaml
kind: robot
version: 1
hardware:        # reachsafe.hardware.config.HardwareConfig: robot_id, sim, camera, drive, signals
  robot_id: pi-01
  camera: {backend: picamera2, width: 64, height: 64, fps: 30}
  drive: {backend: serial, port: /dev/serial/by-id/usb-Arduino..., max_speed_mm_s: 250}
  signals: {backend: referee, endpoint: tcp://192.168.1.10:5590}
edge:            # reachsafe.edge_runtime.config.EdgeConfig: rate, frame age, deadlines, spool, ...
  rate_hz: 20
  max_frame_age: 0.1
trainer: {address: tcp://192.168.1.10:5555}
keys_dir: keys   # signing.pub, robot.key_secret, robot.key, trainer.key
bundle_dir: bundle
```

Relative paths are resolved against the file's directory by `load_robot_config`. The robot id
is `hardware.robot_id`; `edge.robot_id` follows it (setting it to something else is an error,
`one_robot_id`, which `reachsafe edge run --hardware sim:…/NAME` applies too).
`make_robot(cfg)` builds the devices; `reachsafe flash` packages the file for the robot.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from reachsafe.edge_runtime.config import EdgeConfig
from reachsafe.hardware.config import HardwareConfig
from reachsafe.protocol.config import Config, ConfigError, option

if TYPE_CHECKING:
    from reachsafe.protocol.bundle import Bundle

#: Files a robot gets from the key directory (never signing.key or trainer.key_secret):
#: `reachsafe keys generate` writes the first four; referee.key is a referee's CURVE public key.
ROBOT_KEY_FILES = ("signing.pub", "robot.key_secret", "robot.key", "trainer.key", "referee.key")
#: Action dimension of every drive backend (serial and sim: left and right wheel).
DRIVE_ACTION_DIM = 2


@dataclass
class TrainerLinkConfig(Config):
    address: str = option(
        "tcp://127.0.0.1:5555", "Trainer daemon endpoint the robot connects to (tcp://HOST:PORT)."
    )

    def validate(self) -> None:
        if not self.address.startswith("tcp://") or ":" not in self.address[len("tcp://") :]:
            raise ConfigError(f"trainer.address {self.address!r} must look like tcp://HOST:PORT")


@dataclass
class RobotConfig(Config):
    hardware: HardwareConfig = option(default_factory=HardwareConfig, help="Devices: camera, drive, signals.")
    edge: EdgeConfig = option(default_factory=EdgeConfig, help="Runtime: rate, frame age, deadlines, spool.")
    trainer: TrainerLinkConfig = option(default_factory=TrainerLinkConfig, help="Trainer link.")
    keys_dir: Path = option(
        Path("keys"), "Directory with signing.pub, robot.key_secret, robot.key and trainer.key (CURVE)."
    )
    bundle_dir: Path | None = option(None, "Bundle to start with when none is installed yet.")

    @property
    def robot_id(self) -> str:
        return self.hardware.robot_id

    def validate(self) -> None:
        self.edge = one_robot_id(self.edge, self.hardware)
        if self.hardware.camera.fps < self.edge.rate_hz:
            raise ConfigError(
                f"camera.fps ({self.hardware.camera.fps}) is below edge.rate_hz ({self.edge.rate_hz}): "
                "every other tick would see a repeated frame"
            )
        if self.edge.max_frame_age < 1.0 / self.hardware.camera.fps:
            raise ConfigError(
                f"edge.max_frame_age ({self.edge.max_frame_age} s) is shorter than one camera frame "
                f"(1/{self.hardware.camera.fps} s): every frame would be stale"
            )
        needs_ms = 1000.0 / self.edge.rate_hz
        if (
            self.hardware.drive.backend == "serial"
            and self.hardware.drive.controller_timeout_ms < 2 * needs_ms
        ):
            raise ConfigError(
                f"drive.controller_timeout_ms ({self.hardware.drive.controller_timeout_ms}) must be at least two "
                f"control periods ({2 * needs_ms:.0f} ms at {self.edge.rate_hz} Hz), or the motors stutter"
            )


def one_robot_id(edge: EdgeConfig, hardware: HardwareConfig, given: str | None = None) -> EdgeConfig:
    """`edge` with the hardware's robot id, so the sim server (or referee) and the trainer know the
    robot by one name. `given`: an id passed explicitly for the runtime (`--robot-id`); it, or an
    `edge.robot_id` other than the default, naming another robot is a ConfigError."""
    default_id = EdgeConfig().robot_id
    named = given if given is not None else edge.robot_id if edge.robot_id != default_id else None
    if named is not None and named != hardware.robot_id:
        raise ConfigError(
            f"the runtime's robot id {named!r} (--robot-id / edge.robot_id) differs from the hardware's "
            f"{hardware.robot_id!r} (the NAME of sim:tcp://HOST:PORT/NAME, robot0 when the URI names none, "
            "or hardware.robot_id); set the id once, in the hardware"
        )
    return edge.replace(robot_id=hardware.robot_id)


def load_robot_config(path: str | Path) -> RobotConfig:
    """Load and validate a robot file; relative `keys_dir`, `bundle_dir`, `edge.state_dir` and
    `edge.spool_dir` are taken relative to the file's directory."""
    path = Path(path)
    cfg = RobotConfig.from_yaml(path)
    base = path.resolve().parent

    def rel(p: Path | None) -> Path | None:
        return None if p is None or p.is_absolute() else base / p

    edge = cfg.edge.replace(
        state_dir=rel(cfg.edge.state_dir) or cfg.edge.state_dir,
        spool_dir=rel(cfg.edge.spool_dir) or cfg.edge.spool_dir,
    )
    return cfg.replace(
        edge=edge,
        keys_dir=rel(cfg.keys_dir) or cfg.keys_dir,
        bundle_dir=rel(cfg.bundle_dir) or cfg.bundle_dir,
    )


def verify_bundle(path: Path, keys_dir: Path, cfg: RobotConfig) -> Bundle:
    """Load the bundle at ``path`` as this robot would: signed by ``keys_dir``/signing.pub, frames of
    its camera's size (any size for a sim camera: the simulator sets it), the drive's action
    dimension. Raises :class:`reachsafe.protocol.errors.BundleError` saying what is wrong."""
    from reachsafe.protocol.bundle import load_bundle
    from reachsafe.protocol.keys import load_trusted_keys

    cam = cfg.hardware.camera
    shape = None if cam.backend == "sim" else (cam.height, cam.width, 3)
    return load_bundle(path, load_trusted_keys(keys_dir / "signing.pub"), shape, DRIVE_ACTION_DIM)
