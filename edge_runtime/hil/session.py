"""One run of the robot's runtime under a scenario: started in this process on its own thread, probed
through its metrics while the scenario injects faults, stopped (brake, drain the spool) at the end."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from reachsafe.edge_runtime.hil.config import HilConfig
from reachsafe.edge_runtime.hil.faults import BridgeControl, EstopSwitch, TrainerRelay
from reachsafe.edge_runtime.hil.report import Check
from reachsafe.edge_runtime.loop import ROUTINE_BRAKES
from reachsafe.edge_runtime.runtime import EdgeRuntime
from reachsafe.hardware.factory import Robot, hardware_config, make_robot
from reachsafe.protocol.bundle import load_bundle
from reachsafe.protocol.keys import load_trusted_keys
from reachsafe.protocol.messages import BundleMessage

log = logging.getLogger(__name__)

BRAKES = "edge/brakes/"
_POLL_S = 0.05


class SessionError(RuntimeError):
    """The runtime did not start or stopped by itself; the text says why."""


class Window:
    """Counters of the runtime between two instants (a scenario's phase)."""

    def __init__(self, session: Session, name: str) -> None:
        self.session = session
        self.name = name
        self.start = session.probe()
        self.end: dict[str, float] | None = None

    def close(self) -> Window:
        self.end = self.session.probe()
        return self

    def delta(self, key: str) -> float:
        end = self.end if self.end is not None else self.session.probe()
        return end.get(key, 0.0) - self.start.get(key, 0.0)

    def brakes(self, routine: bool = False) -> dict[str, int]:
        """Brakes by reason in the window (without the routine ones: resets, shutdown, unless asked)."""
        end = self.end if self.end is not None else self.session.probe()
        out = {}
        for key, value in end.items():
            reason = key[len(BRAKES) :]
            if key.startswith(BRAKES) and (routine or reason not in ROUTINE_BRAKES):
                n = int(value - self.start.get(key, 0.0))
                if n:
                    out[reason] = n
        return out

    def __enter__(self) -> Window:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Session:
    """The suite's handle on one runtime run: its probes, the faults it may inject, its checks."""

    def __init__(
        self, cfg: HilConfig, name: str, workdir: Path, bundle: Path, seed: int, relay: TrainerRelay | None
    ) -> None:
        self.cfg = cfg
        self.relay = relay
        self.name = name
        self.seed = seed
        self.checks: list[Check] = []
        self.numbers: dict[str, Any] = {}
        hw = hardware_config(cfg.bridge)
        devices = make_robot(hw)
        self.estop = EstopSwitch(devices.signals)
        edge = cfg.edge.replace(robot_id=hw.robot_id, state_dir=workdir / "state", spool_dir=None)
        self.runtime = EdgeRuntime(
            edge,
            Robot(devices.camera, devices.drive, self.estop),
            relay.endpoint if relay is not None else cfg.trainer,
            cfg.keys,
            bundle,
        )
        self.bridge = BridgeControl(hw.sim, hw.robot_id)
        self.summary: dict[str, Any] | None = None
        self._error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"hil-{name}", daemon=True)

    # ----- lifecycle ------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self.summary = self.runtime.run(self._stop)
        except BaseException as exc:  # reported by start() / finish(), never lost
            self._error = exc

    def start(self) -> Session:
        self._thread.start()
        if not self.wait_for(lambda: self.runtime.started.is_set(), self.cfg.wait_s):
            self._stop.set()
            self._thread.join(self.cfg.edge.drain_timeout + self.cfg.wait_s)
            self.bridge.close()
            why = self._error if self._error is not None else f"not running within {self.cfg.wait_s:g} s"
            raise SessionError(f"the runtime did not start: {why}")
        return self

    def finish(self) -> dict[str, Any]:
        """Stop the runtime (brake, drain, close) and return its summary."""
        self._stop.set()
        self._thread.join(self.cfg.edge.drain_timeout + self.cfg.wait_s)
        self.bridge.close()
        if self._thread.is_alive():
            raise SessionError("the runtime did not stop within its drain timeout")
        if self._error is not None:
            raise SessionError(f"the runtime failed: {self._error}") from self._error
        assert self.summary is not None
        return self.summary

    # ----- probes ---------------------------------------------------------------------
    def probe(self) -> dict[str, float]:
        """The runtime's metrics now, with the loop's step count and cost so far."""
        out = self.runtime.metrics.snapshot()
        loop = self.runtime.loop
        if loop is not None:
            stats = loop.stats
            out |= {"steps": float(stats.steps), "cost": sum(stats.costs) + stats.current_cost}
        return out

    def window(self, name: str) -> Window:
        return Window(self, name)

    def bundle_message(self, path: Path | None) -> BundleMessage:
        """The bundle at ``path`` as the trainer would send it (verified here first: a scenario pushes
        a good bundle, or alters a good one on purpose)."""
        assert path is not None
        trusted = load_trusted_keys(self.cfg.keys) if self.cfg.keys is not None else []
        return load_bundle(path, trusted).to_message()

    def push(self, msg: BundleMessage) -> None:
        """Hand ``msg`` to the runtime the way its uplink hands over a received `bundle` message."""
        assert self.runtime.bundles is not None  # set once started
        self.runtime.bundles.submit(msg)

    @property
    def versions_seen(self) -> list[int]:
        return list(self.runtime.bundles.versions_seen) if self.runtime.bundles is not None else []

    @property
    def version(self) -> int | None:
        """The running bundle's version."""
        bundles = self.runtime.bundles
        return bundles.active.version if bundles is not None and bundles.active is not None else None

    def wait(self, seconds: float) -> None:
        """Let the runtime run for ``seconds`` (a timed phase); SessionError if it stops meanwhile."""
        self._thread.join(seconds)
        if not self._thread.is_alive():
            raise SessionError(f"the runtime stopped by itself: {self._error or 'no error'}")

    def wait_for(self, predicate: Callable[[], Any], timeout: float) -> bool:
        """Poll ``predicate`` until true (True) or ``timeout`` s pass or the runtime stops (False)."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline or not self._thread.is_alive():
                return False
            time.sleep(_POLL_S)
        return True

    def check(self, name: str, passed: bool, detail: str) -> bool:
        self.checks.append(Check(name, bool(passed), detail))
        return passed

    def check_recovered(self, fault: Window) -> None:
        """After the ``fault`` window: `grace_s`, then `recover_s` with no brake and steps recorded."""
        self.wait(self.cfg.grace_s)
        with self.window("recover") as w:
            self.wait(self.cfg.recover_s)
        self.check(
            "recovers",
            not w.brakes() and w.delta("steps") > 0,
            f"{self.cfg.recover_s:g} s after the fault (+{self.cfg.grace_s:g} s grace): brakes {w.brakes() or 'none'}, "
            f"{int(w.delta('steps'))} steps",
        )
        self.numbers["fault_brakes"] = fault.brakes()
