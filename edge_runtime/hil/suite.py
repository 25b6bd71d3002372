"""Runs the scenarios in order, each on a fresh runtime (its own state folder, spool and stream), and
collects the report. `run_suite(cfg)` is what `reachsafe hil run` calls."""

from __future__ import annotations

import logging
import shutil
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from reachsafe.edge_runtime.bundles import BundleRejected, BundleStore
from reachsafe.edge_runtime.hil.config import HilConfig
from reachsafe.edge_runtime.hil.faults import TrainerRelay
from reachsafe.edge_runtime.hil.report import Check, ScenarioResult, SuiteReport
from reachsafe.edge_runtime.hil.scenarios import SCENARIOS, Scenario
from reachsafe.edge_runtime.hil.session import Session, SessionError
from reachsafe.edge_runtime.spool import SpoolError
from reachsafe.hardware.errors import HardwareError
from reachsafe.hardware.factory import hardware_config
from reachsafe.protocol.config import ConfigError
from reachsafe.protocol.errors import BundleError, KeyFileError

log = logging.getLogger(__name__)

#: What stops a scenario with an error (reported, never raised): the rest of the suite still runs.
SCENARIO_ERRORS = (
    SessionError,
    HardwareError,
    BundleError,
    BundleRejected,
    SpoolError,
    KeyFileError,
    OSError,
    ValueError,
)


def scenario_names(cfg: HilConfig) -> list[str]:
    names = cfg.scenarios or list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        raise ConfigError(f"unknown scenario(s) {unknown}; choose from {list(SCENARIOS)}")
    return names


def start_bundle(cfg: HilConfig) -> Path:
    """``cfg.bundle``, else the bundle installed on this robot (edge.state_dir's current one)."""
    if cfg.bundle is not None:
        return cfg.bundle
    store = BundleStore(Path(cfg.edge.state_dir) / "bundles", trusted_keys=[])
    current = store.pointer()["current"]
    if current is None:
        raise ConfigError(
            f"no bundle installed in {store.root}: pass --bundle DIR, or install one with `reachsafe edge install`"
        )
    return store.path(current)


def scenario_seed(cfg: HilConfig, name: str) -> int:
    """The seed of a scenario's faults: the suite's seed and the scenario's name, nothing else."""
    return cfg.seed * 10_007 + zlib.crc32(name.encode()) % 10_007


def _numbers(summary: dict[str, Any]) -> dict[str, Any]:
    keys = ("tick_ms_p50", "tick_ms_p99", "deadline_misses", "brakes", "steps", "steps_sent", "steps_acked",
            "interventions", "episodes", "bundle_versions_seen")  # fmt: skip
    return {k: summary[k] for k in keys} | {"steps_lost": summary["steps"] - summary["steps_acked"]}


def run_scenario(cfg: HilConfig, sc: Scenario, bundle: Path) -> ScenarioResult:
    t0 = time.monotonic()
    missing = [f"--{f.replace('_', '-')}" for f in sc.needs if getattr(cfg, f) is None]
    if missing:
        return ScenarioResult(sc.name, "skipped", 0.0, sc.proves, message=f"needs {', '.join(missing)}")
    workdir = cfg.out / sc.name
    shutil.rmtree(workdir, ignore_errors=True)  # a fresh runtime: its own bundles, spool and stream
    seed = scenario_seed(cfg, sc.name)
    relay = None
    try:
        relay = TrainerRelay(cfg.trainer) if sc.relay else None
        session = Session(cfg, sc.name, workdir, bundle, seed, relay).start()
        failure: Exception | None = None
        try:
            sc.run(session)
        except SCENARIO_ERRORS as exc:
            failure = exc
        except BaseException:  # Ctrl-C: the runtime still brakes and drains before the suite ends
            session.finish()
            raise
        summary = session.finish()
        if failure is not None:
            raise failure
    except SCENARIO_ERRORS as exc:
        log.error("scenario %s stopped: %s", sc.name, exc)
        return ScenarioResult(
            sc.name, "error", time.monotonic() - t0, sc.proves, message=f"{type(exc).__name__}: {exc}"
        )
    finally:
        if relay is not None:
            relay.close()
    numbers = session.numbers | _numbers(summary) | {"seed": seed}
    lost = numbers["steps_lost"]
    checks = [
        *session.checks,
        Check(
            "nothing lost",
            lost == 0 and bool(summary["all_acked"]),
            f"{summary['steps']} steps recorded, {summary['steps_sent']} sent, {summary['steps_acked']} acked, {lost} lost",
        ),
    ]
    status = "passed" if all(c.passed for c in checks) else "failed"
    return ScenarioResult(sc.name, status, time.monotonic() - t0, sc.proves, checks, numbers)


def run_suite(cfg: HilConfig, progress: Callable[[str], None] = print) -> SuiteReport:
    """Every scenario of ``cfg`` in order; a failed or broken one does not stop the others."""
    names = scenario_names(cfg)
    bundle = start_bundle(cfg)
    report = SuiteReport(hardware_config(cfg.bridge).robot_id, cfg.bridge, cfg.trainer, cfg.seed, time.time())
    for i, name in enumerate(names, 1):
        sc = SCENARIOS[name]
        progress(f"[{i}/{len(names)}] {name}: {sc.proves} ...")
        result = run_scenario(cfg, sc, bundle)
        why = "; ".join(f"{c.name}: {c.detail}" for c in result.failures) or result.message
        progress(
            f"[{i}/{len(names)}] {name}: {result.status} ({result.seconds:.1f} s){' - ' + why if why else ''}"
        )
        report.scenarios.append(result)
    return report
