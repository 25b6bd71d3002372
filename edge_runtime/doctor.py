"""`reachsafe edge doctor`: check a robot before (or instead of) running it.

Each check returns a `CheckResult` (pass / warn / fail / skip) with what was seen and, when it
is not a pass, what to do. The checks never move the robot: the drive check only performs the
handshake and a brake command. `run_doctor(config)` returns the results; the `doctor` verb
(edge_runtime/commands.py) prints them as a table and exits 1 if any check failed.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from reachsafe.edge_runtime.robot_config import RobotConfig, verify_bundle

log = logging.getLogger(__name__)

Status = Literal["pass", "warn", "fail", "skip"]
DEFAULT_ROBOT_CONFIG = Path("/opt/reachsafe/robot.yaml")
SPOOL_HEADROOM_BYTES = 100 * 1024 * 1024
CAMERA_SAMPLE_S = 0.5


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: Status
    detail: str
    fix: str = ""


class CheckFailed(Exception):
    """Raised inside a check: detail + fix."""

    def __init__(self, detail: str, fix: str = "", status: Status = "fail") -> None:
        super().__init__(detail)
        self.detail, self.fix, self.status = detail, fix, status


# ----- the checks --------------------------------------------------------------------------------
def check_clock(cfg: RobotConfig) -> str:
    info = time.get_clock_info("monotonic")
    samples = [time.monotonic() for _ in range(1000)]
    if any(b < a for a, b in zip(samples, samples[1:], strict=False)):
        raise CheckFailed(
            "time.monotonic() went backwards", "a kernel or virtualisation bug: update the OS image"
        )
    if info.resolution > 1e-3:
        raise CheckFailed(
            f"monotonic clock resolution {info.resolution} s", "deadlines need < 1 ms resolution"
        )
    now = dt.datetime.now(dt.timezone.utc)
    if now.year < 2024:
        raise CheckFailed(
            f"wall clock says {now:%Y-%m-%d}: never set (no RTC?)",
            "enable NTP (timedatectl set-ntp true) so bundle and log times are right; control uses the monotonic clock",
            "warn",
        )
    return f"monotonic ({info.implementation}, {info.resolution * 1e9:.0f} ns); wall clock {now:%Y-%m-%d %H:%M} UTC"


def check_disk(cfg: RobotConfig) -> str:
    spool = cfg.edge.spool_path
    probe = spool
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    need = cfg.edge.spool_max_bytes + SPOOL_HEADROOM_BYTES
    if free < need:
        raise CheckFailed(
            f"{free / 2**20:.0f} MiB free at {probe}, the spool may take {cfg.edge.spool_max_bytes / 2**20:.0f} MiB",
            "free disk space, move edge.state_dir / edge.spool_dir to a bigger disk, or lower edge.spool_max_bytes",
        )
    if not os.access(probe, os.W_OK):
        raise CheckFailed(
            f"{probe} is not writable by this user", "chown the state directory to the runtime's user"
        )
    return f"{free / 2**30:.1f} GiB free for the spool at {spool}"


def check_providers(cfg: RobotConfig) -> str:
    try:
        from reachsafe.edge_runtime.inference import available_providers, choose_providers
    except ImportError as e:
        raise CheckFailed(f"onnxruntime is not importable: {e}", "pip install 'reachsafe[robot]'") from e
    available = available_providers()
    try:
        chosen = choose_providers(cfg.edge.providers)
    except ValueError as e:
        raise CheckFailed(str(e), "fix edge.providers in the robot YAML") from e
    missing = [
        p
        for p in cfg.edge.providers
        if p.lower() != "cpu" and not any(p.lower() in c.lower() for c in chosen)
    ]
    if missing:
        raise CheckFailed(
            f"requested {missing} not installed; available: {available}",
            "install onnxruntime-gpu (Jetson: NVIDIA's onnxruntime wheel for JetPack) or drop them from edge.providers",
            "warn",
        )
    return "will use " + " > ".join(chosen)


def check_keys(cfg: RobotConfig) -> str:
    from reachsafe.protocol.keys import load_curve_keypair, load_trusted_keys

    keys = cfg.keys_dir
    if not (keys / "signing.pub").is_file():
        raise CheckFailed(
            f"no {keys}/signing.pub: bundles cannot be verified",
            "copy signing.pub from the trainer's key folder (reachsafe flash --keys DIR does this)",
        )
    load_trusted_keys(keys / "signing.pub")
    curve = (keys / "robot.key_secret").is_file() and (keys / "trainer.key").is_file()
    if curve:
        load_curve_keypair(keys / "robot.key_secret")
        mode = (keys / "robot.key_secret").stat().st_mode & 0o077
        if mode:
            raise CheckFailed(
                f"{keys}/robot.key_secret is readable by other users", f"chmod 600 {keys}/robot.key_secret"
            )
        return "signing.pub loaded; CURVE keys present (encrypted, authenticated trainer link)"
    from reachsafe.protocol.sockets import is_loopback_endpoint

    if not is_loopback_endpoint(cfg.trainer.address):
        raise CheckFailed(
            f"no robot.key_secret / trainer.key in {keys}, but the trainer {cfg.trainer.address} is not on this machine",
            "copy robot.key_secret and trainer.key from `reachsafe keys generate` (plain mode is loopback only)",
        )
    raise CheckFailed(
        "no CURVE keys: PLAIN loopback link (development only)",
        "fine for a local sim; not for a robot",
        "warn",
    )


def _find_bundle(cfg: RobotConfig) -> Path | None:
    """The installed current bundle (what `edge run` starts with), else the configured one."""
    store = cfg.edge.state_dir / "bundles"
    if store.is_dir():
        from reachsafe.edge_runtime.bundles import BundleStore

        bundles = BundleStore(store, [])
        current = bundles.pointer()["current"]
        if current is not None:
            return bundles.path(current)
    return cfg.bundle_dir


def check_bundle(cfg: RobotConfig) -> str:
    from reachsafe.edge_runtime.inference import AgentSession, SessionOptions
    from reachsafe.protocol.errors import BundleError

    path = _find_bundle(cfg)
    if path is None:
        raise CheckFailed(
            "no bundle installed and no bundle_dir configured",
            "reachsafe flash --bundle DIR, or `reachsafe edge install DIR --keys KEYS`",
        )
    try:
        bundle = verify_bundle(path, cfg.keys_dir, cfg)
    except BundleError as e:
        raise CheckFailed(f"{path}: {e}", "ship a bundle signed by this robot's trusted signing key") from e
    session = AgentSession.from_bundle(bundle, SessionOptions.from_config(cfg.edge, warmup_runs=1))
    q = bundle.manifest.get("quantization", {}).get("shipped", "?")
    return f"v{bundle.version} ({q}) at {path}: signature, hashes and graph OK, warm-up {session.warmup_ms:.1f} ms"


def check_camera(cfg: RobotConfig) -> str:
    from reachsafe.hardware.factory import CAMERAS

    cam = CAMERAS[cfg.hardware.camera.backend](cfg.hardware)
    with cam:
        first = cam.read_latest(max_age=cfg.edge.max_frame_age)
        deadline = time.monotonic() + CAMERA_SAMPLE_S
        last = first
        while time.monotonic() < deadline:
            time.sleep(0.01)
            last = cam.read_latest(max_age=cfg.edge.max_frame_age)
        rate = (last.frame_id - first.frame_id) / max(last.t - first.t, 1e-6)
        shape = last.image.shape
    if rate < cfg.edge.rate_hz * 0.9:
        raise CheckFailed(
            f"{shape} frames at {rate:.1f} fps, below the {cfg.edge.rate_hz:.0f} Hz control rate",
            "raise camera.fps, lower edge.rate_hz, or use a smaller capture size",
            "warn",
        )
    return f"{shape[1]}x{shape[0]} RGB at {rate:.1f} fps, newest frame {last.age() * 1e3:.0f} ms old"


def check_drive(cfg: RobotConfig) -> str:
    from reachsafe.hardware.factory import DRIVES

    drive = DRIVES[cfg.hardware.drive.backend](cfg.hardware)
    with drive:
        drive.stop()  # the only command the doctor sends: never moves the robot
    return f"{cfg.hardware.drive.backend} drive answered; brake command accepted"


def check_signals(cfg: RobotConfig) -> str:
    from reachsafe.hardware.factory import SIGNALS

    signals = SIGNALS[cfg.hardware.signals.backend](cfg.hardware)
    with signals:
        s = signals.read()
        counters = getattr(signals, "counters", None)
        if counters is not None and "messages" in counters:  # a feed: wait (bounded) to hear from it
            deadline = time.monotonic() + max(cfg.hardware.signals.timeout_s, 0.5)
            while counters["messages"] == 0 and time.monotonic() < deadline:
                time.sleep(0.05)
                s = signals.read()
            if counters["messages"] == 0:
                raise CheckFailed(
                    f"nothing heard from {cfg.hardware.signals.endpoint}",
                    "start the referee / tracker and check it publishes for robot id " + repr(cfg.robot_id),
                )
    return f"{cfg.hardware.signals.backend} signals readable (episode {s.episode}, estop {'ON' if s.estop else 'off'})"


def check_trainer(cfg: RobotConfig, timeout_s: float = 2.0) -> str:
    parts = urlsplit(cfg.trainer.address)
    try:
        with socket.create_connection((parts.hostname, parts.port), timeout=timeout_s):
            pass
    except OSError as e:
        raise CheckFailed(
            f"cannot open TCP to {cfg.trainer.address}: {e}",
            "start `reachsafe daemon serve --bind tcp://0.0.0.0:PORT` on the workstation, check trainer.address, "
            "the network and the firewall (the robot still runs and spools steps meanwhile)",
        ) from e
    return f"{cfg.trainer.address} accepts connections"


CHECKS: dict[str, Callable[[RobotConfig], str]] = {
    "clock": check_clock,
    "disk": check_disk,
    "providers": check_providers,
    "keys": check_keys,
    "bundle": check_bundle,
    "camera": check_camera,
    "drive": check_drive,
    "signals": check_signals,
    "trainer": check_trainer,
}

#: What to do when a check raised something other than CheckFailed (hardware errors say it themselves).
GENERIC_FIX = {
    "camera": "see the message; for a sim robot start `reachsafe sim serve` first",
    "drive": "see the message; for a sim robot start `reachsafe sim serve` first",
    "signals": "see the message; for a sim robot start `reachsafe sim serve` first",
    "bundle": "re-export and re-ship the bundle from the trainer",
}


def run_doctor(config: RobotConfig, only: Sequence[str] | None = None) -> list[CheckResult]:
    """Run the checks (all, or those named in `only`) and return one result per check."""
    results = []
    for name, check in CHECKS.items():
        if only and name not in only:
            continue
        t0 = time.monotonic()
        try:
            detail = check(config)
            results.append(CheckResult(name, "pass", detail))
        except CheckFailed as e:
            results.append(CheckResult(name, e.status, e.detail, e.fix))
        except Exception as e:
            results.append(CheckResult(name, "fail", f"{type(e).__name__}: {e}", GENERIC_FIX.get(name, "")))
        log.debug("doctor: %s took %.2f s", name, time.monotonic() - t0)
    return results


def format_table(results: Sequence[CheckResult]) -> str:
    width = max(len(r.name) for r in results)
    lines = []
    for r in results:
        lines.append(f"  {r.name:<{width}}  {r.status.upper():<4}  {r.detail}")
        if r.fix:
            lines.append(f"  {'':<{width}}        -> {r.fix}")
    failed = sum(r.status == "fail" for r in results)
    warned = sum(r.status == "warn" for r in results)
    lines.append(f"{len(results) - failed - warned} passed, {warned} warning(s), {failed} failed")
    return "\n".join(lines)
