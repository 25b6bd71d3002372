"""The runtime's configuration (`kind: edge` in YAML; every field is also a `--option`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from reachsafe.protocol.bundle import DEFAULT_KAPPA_C, DEFAULT_KAPPA_T
from reachsafe.protocol.config import Config, ConfigError, option
from reachsafe.protocol.constants import MAX_ID_CHARS, is_valid_id


@dataclass
class RollbackConfig(Config):
    """When a freshly swapped-in bundle is rolled back to the previous one automatically."""

    window_steps: int = option(
        500, "Steps after a swap over which rates are measured (also the replaced bundle's baseline window)."
    )
    min_steps: int = option(100, "No automatic rollback before this many steps of the new bundle.")
    max_cost_rate: float = option(0.2, "Roll back if mean cost per step over the window exceeds this.")
    max_intervention_rate: float = option(0.5, "Roll back if the fraction of shielded steps exceeds this.")
    max_failure_rate: float = option(
        0.05, "Roll back if the fraction of ticks whose inference failed (error, NaN/inf) exceeds this."
    )
    min_degradation: float = option(
        0.05, "...and only if that rate is worse than the replaced bundle's recent rate by more than this."
    )
    enabled: bool = option(
        True, "Roll back automatically (the `reachsafe edge rollback` command always works)."
    )


@dataclass
class EdgeConfig(Config):
    """Control loop, selection, shield, uplink and spool settings of the robot runtime."""

    robot_id: str = option("robot0", "Id this robot reports to the trainer (HELLO, STEPS, BUNDLE_STATUS).")
    rate_hz: float = option(20.0, "Control rate in Hz.", gt=0.0)
    deadline_fraction: float = option(
        1.0, "A tick misses its deadline when it takes longer than this fraction of the period."
    )
    deadline_streak: int = option(3, "Consecutive missed deadlines that make the loop brake.", ge=1)
    signals_streak: int = option(
        5,
        "Consecutive failed task-signal reads (referee silent, link lost) after which the loop brakes until "
        "signals return: without them neither cost nor the emergency stop can be seen.",
        ge=1,
    )
    max_frame_age: float = option(
        0.15, "A camera frame older than this many seconds is stale: brake instead of acting."
    )
    watchdog_periods: float = option(
        2.0, "The watchdog brakes the drive if no tick completes within this many periods."
    )
    mode: Literal["explore", "eval"] = option(
        "explore", "explore: Boltzmann policy expansion with exploration noise; eval: greedy."
    )
    kappa_t: float | None = option(
        None,
        "Override the bundle's policy-expansion temperature κ_T in P(i) ∝ exp(κ_T·(Q_r − κ_c·Q_c)) "
        f"(None: the manifest's selection.kappa_t, else {DEFAULT_KAPPA_T}).",
    )
    kappa_c: float | None = option(
        None,
        "Override the bundle's weight κ_c of Q_c in the policy-expansion score "
        f"(None: the manifest's selection.kappa_c, else {DEFAULT_KAPPA_C}).",
    )
    noise_scale: float = option(
        1.0, "Scale of the standard-normal exploration noise fed to the graph in explore mode."
    )
    shield_threshold: float | None = option(
        None, "Override the bundle's shield threshold on Q_h (None: use the manifest's)."
    )
    shield_enabled: bool = option(True, "Run the reachability shield (off only for ablations).")
    intra_op_threads: int = option(1, "onnxruntime intra-op threads.")
    providers: list[str] = option(
        default_factory=list,
        help="Execution providers to use, best first (cpu, cuda, tensorrt); empty: best installed.",
    )
    engine_cache_dir: Path = option(
        Path.home() / ".cache" / "reachsafe" / "trt_engines", "TensorRT engine cache root."
    )
    trt_fp16: bool = option(
        False, "Build fp16 TensorRT engines (check shield decisions agree with fp32 first)."
    )
    state_dir: Path = option(
        Path.home() / ".local" / "state" / "reachsafe" / "edge",
        "Installed bundles, the status file and (by default) the spool live here; one per robot deployment.",
    )
    spool_dir: Path | None = option(None, "Spool directory (default: STATE_DIR/spool).")
    spool_max_bytes: int = option(
        512 * 1024 * 1024, "Spool size bound; when full the oldest segment is dropped (counted)."
    )
    spool_segment_bytes: int = option(8 * 1024 * 1024, "Spool segment file size before rolling over.")
    spool_fsync: bool = option(True, "fsync every spooled batch (survives power loss, not just a crash).")
    ring_capacity: int = option(
        2048, "Steps held in memory between the control loop and the uplink thread.", ge=1
    )
    batch_size: int = option(32, "Steps per STEPS batch.", ge=1)
    batch_max_age: float = option(0.5, "Spool a partial batch after this many seconds.")
    max_inflight: int = option(8, "Credit: at most this many unacked batches on the wire.", ge=1)
    ack_timeout: float = option(
        3.0, "Resend unacked batches (after a new HELLO) if no ACK arrives for this long."
    )
    heartbeat_interval: float = option(1.0, "Seconds between HEARTBEATs (and status file writes).")
    metrics_log_interval: float = option(10.0, "Seconds between metric log lines.")
    drain_timeout: float = option(10.0, "On exit, wait at most this long for sent steps to be ACKed.")
    rollback: RollbackConfig = option(default_factory=RollbackConfig, help="Automatic rollback thresholds.")

    @property
    def period(self) -> float:
        return 1.0 / self.rate_hz

    @property
    def spool_path(self) -> Path:
        return self.spool_dir if self.spool_dir is not None else self.state_dir / "spool"

    def validate(self) -> None:
        if not is_valid_id(self.robot_id):
            raise ConfigError(f"robot_id {self.robot_id!r} must be 1 to {MAX_ID_CHARS} printable characters")
        if self.spool_segment_bytes > self.spool_max_bytes:
            raise ConfigError(
                f"spool_segment_bytes ({self.spool_segment_bytes}) must not exceed spool_max_bytes ({self.spool_max_bytes})"
            )
