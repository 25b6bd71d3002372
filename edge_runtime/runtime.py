"""The runtime assembled: robot + bundles + spool + uplink + control loop + watchdog + reporter.

`EdgeRuntime(cfg, robot, trainer_endpoint, keys_dir, bundle_dir).run(stop, ...)` returns the
run summary. Shutdown order (also on SIGINT/SIGTERM, which only set `stop`): the loop finishes
its tick → brake → spool what is queued and wait (bounded) for ACKs → close the socket, the
bundle worker and the hardware. A drive that does not take the brake at exit (a server gone or
busy) is a warning in the log and in the summary's `shutdown_warnings`, not a failed run: every
step is spooled by then, and the drive's own command timeout stops the motors.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from reachsafe import __version__
from reachsafe.edge_runtime.bundles import BundleManager, BundleStore
from reachsafe.edge_runtime.config import EdgeConfig
from reachsafe.edge_runtime.inference import SessionOptions
from reachsafe.edge_runtime.loop import ControlLoop, Watchdog
from reachsafe.edge_runtime.metrics import Metrics
from reachsafe.edge_runtime.spool import Spool
from reachsafe.edge_runtime.uplink import RobotSpec, Uplink
from reachsafe.hardware.factory import Robot
from reachsafe.protocol.files import write_json_atomically
from reachsafe.protocol.keys import load_trusted_keys
from reachsafe.protocol.sockets import ClientCurve

log = logging.getLogger(__name__)

STATUS_FILE = "status.json"


def curve_from_keys(keys_dir: Path | None) -> ClientCurve | None:
    """CurveZMQ client keys from a `reachsafe keys generate` directory, if it has them."""
    if keys_dir is None:
        return None
    secret, server = keys_dir / "robot.key_secret", keys_dir / "trainer.key"
    if secret.exists() and server.exists():
        return ClientCurve.from_files(secret, server)
    log.warning("%s has no robot.key_secret + trainer.key: the trainer link is NOT encrypted", keys_dir)
    return None


class EdgeRuntime:
    """One robot runtime process."""

    def __init__(
        self,
        cfg: EdgeConfig,
        robot: Robot,
        trainer_endpoint: str,
        keys_dir: Path | None,
        bundle_dir: Path | None,
    ) -> None:
        self.cfg = cfg
        self.robot = robot
        self.trainer_endpoint = trainer_endpoint
        self.keys_dir = keys_dir
        self.bundle_dir = bundle_dir
        self.metrics = Metrics()
        self.state_dir = Path(cfg.state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        # the running parts, for a supervisor in this process (the HIL suite); set when `started` is set
        self.loop: ControlLoop | None = None
        self.bundles: BundleManager | None = None
        self.uplink: Uplink | None = None
        self.started = threading.Event()

    def run(
        self, stop: threading.Event, max_episodes: int | None = None, duration: float | None = None
    ) -> dict[str, Any]:
        trusted = load_trusted_keys(self.keys_dir) if self.keys_dir is not None else []
        if not trusted:
            log.warning("no trusted bundle keys (--keys DIR with signing.pub): every bundle will be rejected")
        self.robot.connect()
        shutdown_warnings: list[str] = []
        try:
            summary = self._run_connected(stop, trusted, max_episodes, duration, shutdown_warnings)
        finally:
            self._release_robot(shutdown_warnings)
        return summary | {"shutdown_warnings": shutdown_warnings}

    def _release_robot(self, shutdown_warnings: list[str]) -> None:
        """Brake and disconnect every device; a failure is a warning (the run is over)."""
        try:
            self.robot.disconnect()
        except Exception as exc:
            shutdown_warnings.append(f"releasing the robot at exit: {exc}")
            log.warning(
                "releasing the robot at exit failed: %s; its drive's own command timeout stops it", exc
            )

    def _run_connected(
        self,
        stop: threading.Event,
        trusted: list[Ed25519PublicKey],
        max_episodes: int | None,
        duration: float | None,
        shutdown_warnings: list[str],
    ) -> dict[str, Any]:
        cfg = self.cfg
        obs_shape = tuple(int(d) for d in self.robot.camera.features["image_shape"])
        action_dim = int(self.robot.drive.features["action_dim"])
        store = BundleStore(self.state_dir / "bundles", trusted)
        bundles = BundleManager(
            store,
            obs_shape,  # type: ignore[arg-type]
            action_dim,
            cfg.robot_id,
            SessionOptions.from_config(cfg),
            cfg.rollback,
            self.metrics,
        )
        bundles.load_initial(self.bundle_dir)
        spool = Spool(cfg.spool_path, cfg.spool_max_bytes, cfg.spool_segment_bytes, cfg.spool_fsync)
        uplink = Uplink(
            cfg,
            spool,
            self.trainer_endpoint,
            RobotSpec(cfg.robot_id, __version__, obs_shape, action_dim),  # type: ignore[arg-type]
            self.metrics,
            bundle_version=lambda: bundles.active.version if bundles.active else -1,
            on_bundle=bundles.submit,
            curve=curve_from_keys(self.keys_dir),
            device_metrics=self.robot.metrics,
        )
        bundles.report = uplink.send
        loop = ControlLoop(self.robot, bundles, uplink, cfg, self.metrics, rng=np.random.default_rng())
        reporter = Reporter(self, loop, bundles, uplink)
        bundles.start()
        uplink.start()
        watchdog = Watchdog(loop, cfg.watchdog_periods).start()
        reporter.start()
        log.info(
            "edge runtime %s: robot %s at %.0f Hz (%s mode), trainer %s, spool %s",
            __version__,
            cfg.robot_id,
            cfg.rate_hz,
            cfg.mode,
            self.trainer_endpoint,
            spool.dir,
        )
        self.loop, self.bundles, self.uplink = loop, bundles, uplink
        self.started.set()
        try:
            loop.run(stop, max_episodes=max_episodes, duration=duration)
        finally:
            watchdog.stop()
            failed = loop.brake("shutdown", failure_level=logging.WARNING)
            if failed is not None:
                shutdown_warnings.append(f"the drive did not take the brake at exit: {failed}")
            drained = uplink.close(cfg.drain_timeout)
            bundles.stop()
            reporter.stop()
        summary = reporter.summary(drained)
        write_json_atomically(self.state_dir / STATUS_FILE, reporter.status(running=False))
        return summary


class Reporter:
    """Writes STATE_DIR/status.json and logs metrics periodically (off the control thread)."""

    def __init__(
        self, runtime: EdgeRuntime, loop: ControlLoop, bundles: BundleManager, uplink: Uplink
    ) -> None:
        self.runtime = runtime
        self.loop = loop
        self.bundles = bundles
        self.uplink = uplink
        self.metrics = runtime.metrics
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="edge-reporter", daemon=True)
        self._last = (0.0, 0.0, 0.0)  # steps, cost, interventions at the previous report

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _rates(self) -> None:
        stats = self.loop.stats
        cost_total = sum(stats.costs) + stats.current_cost
        now = (float(stats.steps), cost_total, self.metrics.counter("edge/interventions"))
        steps = now[0] - self._last[0]
        if steps > 0:
            self.metrics.gauge("edge/cost_rate", (now[1] - self._last[1]) / steps)
            self.metrics.gauge("edge/intervention_rate", (now[2] - self._last[2]) / steps)
        self._last = now

    def status(self, running: bool = True) -> dict[str, Any]:
        cfg = self.runtime.cfg
        active = self.bundles.active
        return {
            "pid": os.getpid(),
            "running": running,
            "time_unix": time.time(),
            "robot_id": cfg.robot_id,
            "mode": cfg.mode,
            "rate_hz": cfg.rate_hz,
            "trainer": self.runtime.trainer_endpoint,
            "bundle_version": active.version if active else None,
            "bundle_versions_seen": list(self.bundles.versions_seen),
            "providers": active.session.providers if active else [],
            "episodes": self.loop.stats.episodes,
            "steps": self.loop.stats.steps,
            "metrics": dict(sorted(self.uplink.metrics_snapshot().items())),
        }

    def _run(self) -> None:
        cfg = self.runtime.cfg
        path = self.runtime.state_dir / STATUS_FILE
        next_log = time.monotonic() + cfg.metrics_log_interval
        while not self._stop.wait(cfg.heartbeat_interval):
            self._rates()
            write_json_atomically(path, self.status())
            if time.monotonic() >= next_log:
                next_log = time.monotonic() + cfg.metrics_log_interval
                m = self.metrics.snapshot()
                log.info(
                    "tick p50/p99 %.2f/%.2f ms, inference p99 %.2f ms, misses %d, brakes %d, interventions %d, "
                    "cost rate %.3f, spool %d B, unacked %d, bundle v%d",
                    m.get("edge/tick_ms_p50", float("nan")),
                    m.get("edge/tick_ms_p99", float("nan")),
                    m.get("edge/stage/inference_ms_p99", float("nan")),
                    m.get("edge/deadline_misses", 0),
                    sum(v for k, v in m.items() if k.startswith("edge/brakes/")),
                    m.get("edge/interventions", 0),
                    m.get("edge/cost_rate", 0.0),
                    m.get("edge/spool_bytes", 0),
                    m.get("edge/unacked_steps", 0),
                    m.get("edge/bundle_version", -1),
                )

    def summary(self, drained: bool) -> dict[str, Any]:
        stats = self.loop.stats
        m = self.metrics.snapshot()
        return {
            "episodes": stats.episodes,
            "return_mean": float(np.mean(stats.returns)) if stats.returns else 0.0,
            "cost_mean": float(np.mean(stats.costs)) if stats.costs else 0.0,
            "returns": stats.returns,
            "costs": stats.costs,
            "steps": stats.steps,
            "steps_sent": self.uplink.steps_sent,
            "steps_acked": self.uplink.steps_acked,
            "all_acked": drained,
            "stream_id": self.uplink.spool.stream_id,
            "stream_next_step": self.uplink.spool.next_step,
            "bundle_versions_seen": list(self.bundles.versions_seen),
            "interventions": int(m.get("edge/interventions", 0)),
            "brakes": {k.rsplit("/", 1)[1]: int(v) for k, v in m.items() if k.startswith("edge/brakes/")},
            "deadline_misses": int(m.get("edge/deadline_misses", 0)),
            "reset_ticks": int(m.get("edge/reset_ticks", 0)),
            "tick_ms_p50": m.get("edge/tick_ms_p50"),
            "tick_ms_p99": m.get("edge/tick_ms_p99"),
            "inference_ms_p99": m.get("edge/stage/inference_ms_p99"),
        }
