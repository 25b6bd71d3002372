"""The suite's configuration (`kind: hil` in YAML; every field is also a `reachsafe hil run --option`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from reachsafe.edge_runtime.config import EdgeConfig
from reachsafe.hardware.factory import parse_sim_uri
from reachsafe.protocol.config import Config, ConfigError, option


@dataclass
class HilConfig(Config):
    """Where the bridge, the trainer and the bundles are, and how long and how hard each scenario runs."""

    bridge: str = option(
        "sim:tcp://127.0.0.1:5600/robot0",
        "The bridge (`reachsafe sim serve --faults`) as a sim URI: sim:tcp://HOST:PORT/ROBOT[?keys=DIR&timeout_s=S]; "
        "keys=DIR puts the link on CURVE with the robot's trainer-link keys.",
    )
    trainer: str = option("tcp://127.0.0.1:5555", "The trainer daemon's address.")
    keys: Path | None = option(
        None, "Key folder: signing.pub (bundles), robot.key_secret + trainer.key (CURVE to the trainer)."
    )
    bundle: Path | None = option(
        None, "The bundle the runtime starts with (None: the one installed in edge.state_dir)."
    )
    swap_bundle: Path | None = option(
        None, "A newer signed bundle of the same spec (bundle swap, tampered bundle; skipped without it)."
    )
    nonfinite_bundle: Path | None = option(
        None,
        "A newer signed bundle whose outputs go non-finite on the bridge's frames (rollback; skipped without it).",
    )
    scenarios: list[str] = option(
        default_factory=list, help="Scenarios to run, in order (empty: all), e.g. '[nominal, estop]'."
    )
    seed: int = option(0, "Seed of every injected fault: a scenario means the same on every run.", ge=0)
    settle_s: float = option(2.0, "Seconds the runtime runs before a scenario's fault.", ge=0.0)
    fault_s: float = option(
        2.0, "Seconds a fault (camera stall, drive timeout, partition, e-stop) lasts.", gt=0.0
    )
    recover_s: float = option(2.0, "Seconds watched after a fault ends; no brake may come in them.", gt=0.0)
    grace_s: float = option(
        0.5, "Seconds after a fault ends before the recovery window starts (links reconnect).", ge=0.0
    )
    outage_s: float = option(
        4.0, "Seconds the trainer is unreachable (longer than edge.ack_timeout: resends happen).", gt=0.0
    )
    wait_s: float = option(20.0, "Longest wait for an expected event (swap, rollback, ACKs).", gt=0.0)
    fault_rate: float = option(
        1.0, "Share of requests a drive timeout or a partition leaves unanswered.", gt=0.0, le=1.0
    )
    cost_limit: float = option(
        5.0,
        "Hazard scenario: most cost the episode may collect after the robot is put before a hazard.",
        ge=0.0,
    )
    max_miss_rate: float = option(
        0.02, "Most share of ticks over their deadline where the loop must keep time.", ge=0.0, le=1.0
    )
    out: Path = option(Path("hil_report"), "Report folder: report.json, junit.xml, one folder per scenario.")
    edge: EdgeConfig = option(
        default_factory=EdgeConfig,
        help="The runtime's config (state_dir: where the installed bundle is; each scenario runs in its own).",
    )

    def validate(self) -> None:
        try:
            parse_sim_uri(self.bridge)
        except ValueError as exc:
            raise ConfigError(f"bridge: {exc}") from None
