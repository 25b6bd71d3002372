"""The control loop: one fixed-rate scheduler, per-stage timing, deadlines, brake fallbacks, watchdog.

Every tick: camera → inference → select → shield → drive → signals → uplink (docs/architecture.md). All
timing goes through the injected `Clock` and `Metrics`; nothing else in the runtime keeps time.
A stale frame, an inference failure (NaN/inf included), a drive error, a held emergency stop
(`Signals.estop`), a streak of failed task-signal reads (cost and the e-stop unseen) or a streak of
missed deadlines brakes the robot (Simplex fallback) and is counted under `edge/brakes/<reason>`. A
separate watchdog thread brakes the drive when no tick completes for `watchdog_periods` periods.
Brake ticks are recorded too (policy = fallback), so rewards, costs and episode ends are never lost.
A declared reset (a simulator between episodes: `Frame.resetting` / `Signals.resetting`) brakes
too, but a reset tick whose signals carry nothing is not a step of any episode and is not recorded
(counted under `edge/reset_ticks`).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import numpy as np

from reachsafe.edge_runtime.config import EdgeConfig
from reachsafe.edge_runtime.inference import AgentSession, InferenceError, NonFiniteOutputError
from reachsafe.edge_runtime.metrics import Metrics
from reachsafe.edge_runtime.select import SelectionParams, select
from reachsafe.edge_runtime.shield import shield
from reachsafe.edge_runtime.steps import Step
from reachsafe.hardware.base import Signals
from reachsafe.hardware.errors import HardwareError, StaleFrameError
from reachsafe.hardware.factory import Robot
from reachsafe.protocol.constants import POLICY_FALLBACK

log = logging.getLogger(__name__)

LOG_INTERVAL = 1.0  # seconds between log lines for the same repeated fault
#: Brakes that are part of normal operation: logged at INFO, not as a fault.
ROUTINE_BRAKES = ("resetting", "shutdown")


class Clock(Protocol):
    def now(self) -> float: ...

    def wait(self, seconds: float, stop: threading.Event) -> bool:
        """Sleep up to `seconds`, returning early (True) when `stop` is set."""
        ...


class MonotonicClock:
    def now(self) -> float:
        return time.monotonic()

    def wait(self, seconds: float, stop: threading.Event) -> bool:
        return stop.wait(max(0.0, seconds))


class _Fault(NamedTuple):
    """Why this tick brakes instead of acting."""

    reason: str
    detail: object


@dataclass(frozen=True)
class _Decision:
    """What the tick executes: the shielded action, the policy's proposal, which policy, shield flag."""

    action: np.ndarray
    proposed: np.ndarray
    policy: int
    shielded: bool


INFERENCE_FAULTS = ("nonfinite", "inference_error")


@dataclass(frozen=True)
class ActivePolicy:
    """The policy the loop runs this tick."""

    session: AgentSession
    version: int
    shield_threshold: float
    selection: SelectionParams = SelectionParams()  # the bundle's κ_T, κ_c (the config may override)


class PolicySource(Protocol):
    def at_tick_boundary(self) -> ActivePolicy | None:
        """Swap in a pending policy if one is ready; return the one to run (None: brake)."""
        ...

    def observe(self, step: Step, inference_failed: bool) -> None:
        """See every executed step and whether the policy's inference failed on it (rollback monitoring)."""
        ...


class StepSink(Protocol):
    def add(self, step: Step) -> None:
        """Take a step without blocking."""
        ...


@dataclass
class EpisodeStats:
    """Returns and costs of finished episodes, and of the one in progress."""

    returns: list[float]
    costs: list[float]
    current_return: float = 0.0
    current_cost: float = 0.0
    steps: int = 0

    def add(self, step: Step) -> None:
        self.steps += 1
        self.current_return += step.reward
        self.current_cost += step.cost
        if step.terminated or step.truncated:
            self.returns.append(self.current_return)
            self.costs.append(self.current_cost)
            self.current_return = self.current_cost = 0.0

    @property
    def episodes(self) -> int:
        return len(self.returns)


class ControlLoop:
    """Runs ticks at `cfg.rate_hz` until stopped, a number of episodes is done or time is up."""

    def __init__(
        self,
        robot: Robot,
        policies: PolicySource,
        sink: StepSink,
        cfg: EdgeConfig,
        metrics: Metrics,
        clock: Clock | None = None,
        rng: np.random.Generator | None = None,
    ) -> None:
        self.robot = robot
        self.policies = policies
        self.sink = sink
        self.cfg = cfg
        self.metrics = metrics
        self.clock = clock or MonotonicClock()
        self.rng = rng or np.random.default_rng()
        self.stats = EpisodeStats([], [])
        self.drive_lock = threading.Lock()
        self.last_tick_end = self.clock.now()
        self._miss_streak = 0
        self._signals_fail_streak = 0
        self._estop = False
        self._in_violation = False  # the last read task signals carried a cost (the shield defers)
        self._last_logged: dict[str, float] = {}
        self._episode = 0
        self._obs_shape = tuple(robot.camera.features.get("image_shape", (64, 64, 3)))
        self._action_dim = int(robot.drive.features["action_dim"])
        self._last_image = np.zeros(self._obs_shape, np.uint8)
        brake = np.zeros(self._action_dim, np.float32)
        brake.flags.writeable = False  # shared by every brake step
        self._brake_decision = _Decision(brake, brake, POLICY_FALLBACK, False)

    # ----- one tick -------------------------------------------------------------------
    @contextmanager
    def _stage(self, name: str) -> Iterator[None]:
        t0 = self.clock.now()
        try:
            yield
        finally:
            self.metrics.timing(f"edge/stage/{name}_ms", (self.clock.now() - t0) * 1e3)

    def _log_limited(self, level: int, key: str, msg: str, *args: object) -> None:
        """A log line at most once per LOG_INTERVAL per key: a fault held for minutes must not flood the
        log from the control thread (the counters keep every occurrence)."""
        now = self.clock.now()
        if now - self._last_logged.get(key, -math.inf) >= LOG_INTERVAL:
            self._last_logged[key] = now
            log.log(level, msg, *args)

    def brake(self, reason: str, detail: object = "", failure_level: int = logging.ERROR) -> Exception | None:
        """Stop the drive now and count why. Never raises (braking is the last resort): a drive that
        does not take the brake is counted, logged at `failure_level` and its error returned."""
        self.metrics.count(f"edge/brakes/{reason}")
        total = int(self.metrics.counter(f"edge/brakes/{reason}"))
        level = logging.INFO if reason in ROUTINE_BRAKES else logging.WARNING
        self._log_limited(
            level,
            f"brake/{reason}",
            "brake (%s, %d so far)%s",
            reason,
            total,
            f": {detail}" if detail else "",
        )
        try:
            with self.drive_lock:
                self.robot.drive.stop()
        except Exception as exc:  # a failed brake must not kill the loop
            self.metrics.count("edge/errors/brake_failed")
            log.log(failure_level, "the drive did not take the brake (%s): %s", reason, exc)
            return exc
        return None

    def tick(self) -> Step | None:
        """One control step; returns the recorded step (None if the signals could not be read, or
        if this was a declared reset tick whose signals carry nothing)."""
        t_start = self.clock.now()
        policy = self.policies.at_tick_boundary()
        image, t_obs, fault = self._read_camera(t_start)
        if fault is None and self._estop:
            fault = _Fault("estop", "emergency stop held")
        if fault is None and self._signals_fail_streak >= self.cfg.signals_streak:
            fault = _Fault("signals_lost", f"{self._signals_fail_streak} task-signal reads failed in a row")
        if fault is None and policy is None:
            fault = _Fault("no_policy", "no bundle loaded")
        decision = self._brake_decision
        if fault is None:
            assert policy is not None
            decision, fault = self._decide(policy, image)
        with self._stage("drive"):
            if fault is None:
                try:
                    with self.drive_lock:
                        self.robot.drive.apply(decision.action)
                except (HardwareError, ValueError) as exc:
                    fault = _Fault("drive_error", exc)
            if fault is not None:
                self.brake(fault.reason, fault.detail)
                decision = self._brake_decision
            t_act = self.clock.now()
        sig = self._read_signals(braked=fault is not None)
        step = None
        if sig is not None and self._reset_tick(fault, sig):
            self.metrics.count("edge/reset_ticks")
        elif sig is not None:
            step = Step(
                obs=image,
                action=decision.action,
                proposed=decision.proposed,
                reward=float(sig.reward),
                cost=float(sig.cost),
                terminated=bool(sig.terminated),
                truncated=bool(sig.truncated),
                policy=decision.policy,
                shielded=decision.shielded,
                bundle_version=policy.version if policy is not None else -1,
                episode=self._episode,
                t_obs=float(t_obs),
                t_act=float(t_act),
            )
            with self._stage("uplink"):
                self.sink.add(step)
                self.policies.observe(step, fault is not None and fault.reason in INFERENCE_FAULTS)
            self.stats.add(step)
            if step.terminated or step.truncated:
                self._episode += 1
        self._finish_tick(t_start)
        return step

    def _read_camera(self, now: float) -> tuple[np.ndarray, float, _Fault | None]:
        """The newest frame (image, capture time), or the last good image and a fault."""
        with self._stage("camera"):
            try:
                frame = self.robot.camera.read_latest(self.cfg.max_frame_age)
            except StaleFrameError as exc:
                return self._last_image, now, _Fault("stale_frame", exc)
            except HardwareError as exc:
                return self._last_image, now, _Fault("camera_error", exc)
        if frame.resetting:
            return self._last_image, now, _Fault("resetting", "the task is resetting the episode")
        self._last_image = frame.image
        return frame.image, frame.t, None

    def _reset_tick(self, fault: _Fault | None, sig: Signals) -> bool:
        """A tick inside a declared reset whose signals carry nothing: not a step of any episode."""
        in_reset = sig.resetting or (fault is not None and fault.reason == "resetting")
        return in_reset and sig.empty

    def _decide(self, policy: ActivePolicy, image: np.ndarray) -> tuple[_Decision, _Fault | None]:
        """Inference → policy expansion → shield."""
        try:
            with self._stage("inference"):
                noise = None
                if self.cfg.mode == "explore":
                    noise = (
                        self.rng.standard_normal(self._action_dim).astype(np.float32) * self.cfg.noise_scale
                    )
                out = policy.session.act(image, noise)
        except NonFiniteOutputError as exc:
            return self._brake_decision, _Fault("nonfinite", exc)
        except InferenceError as exc:
            return self._brake_decision, _Fault("inference_error", exc)
        with self._stage("select"):
            params = policy.selection.overridden(self.cfg.kappa_t, self.cfg.kappa_c)
            sel = select(out, self.cfg.mode, params.kappa_t, params.kappa_c, self.rng)
        if not self.cfg.shield_enabled:
            return _Decision(sel.action, sel.action, sel.policy, False), None
        with self._stage("shield"):
            override = self.cfg.shield_threshold
            threshold = override if override is not None else policy.shield_threshold
            d = shield(out, sel.policy, threshold, self._in_violation)
        if d.shielded:
            self.metrics.count("edge/interventions")
        if d.deferred:
            self.metrics.count("edge/shield_deferred")
        return _Decision(d.action, sel.action, sel.policy, d.shielded), None

    def _read_signals(self, braked: bool) -> Signals | None:
        with self._stage("signals"):
            try:
                sig = self.robot.signals.read()
            except HardwareError as exc:
                self._signals_fail_streak += 1
                self.metrics.count("edge/errors/signals")
                self._log_limited(
                    logging.WARNING, "signals",
                    "could not read task signals (%s, %d so far); this tick is not recorded and the next "
                    "read returns what this one missed", exc, int(self.metrics.counter("edge/errors/signals")),
                )  # fmt: skip
                return None
        if self._signals_fail_streak >= self.cfg.signals_streak:
            log.warning("task signals are back after %d failed reads", self._signals_fail_streak)
        self._signals_fail_streak = 0
        self._in_violation = sig.cost > 0 and not (sig.terminated or sig.truncated)
        if sig.estop != self._estop:
            self._estop = sig.estop
            log.warning("emergency stop %s", "pressed: braking until it clears" if sig.estop else "cleared")
            if sig.estop and not braked:
                self.brake("estop", "emergency stop pressed")
        return sig

    def _finish_tick(self, t_start: float) -> None:
        end = self.clock.now()
        self.last_tick_end = end
        tick_ms = (end - t_start) * 1e3
        self.metrics.timing("edge/tick_ms", tick_ms)
        self.metrics.count("edge/ticks")
        if tick_ms > self.cfg.period * self.cfg.deadline_fraction * 1e3:
            self._miss_streak += 1
            self.metrics.count("edge/deadline_misses")
            if self._miss_streak >= self.cfg.deadline_streak:
                self.brake(
                    "deadline_streak", f"{self._miss_streak} ticks over the deadline, last {tick_ms:.1f} ms"
                )
        else:
            self._miss_streak = 0

    # ----- scheduling -----------------------------------------------------------------
    def run(
        self,
        stop: threading.Event,
        max_episodes: int | None = None,
        duration: float | None = None,
        on_tick: Callable[[], None] | None = None,
    ) -> None:
        """Tick at the fixed rate until `stop` is set, `max_episodes` finish or `duration` passes.

        A tick that overruns by more than a whole period skips the missed slots (counted in
        `edge/skipped_ticks`) instead of bursting to catch up.
        """
        period = self.cfg.period
        start = next_t = self.clock.now()
        self.last_tick_end = start
        while not stop.is_set():
            if max_episodes is not None and self.stats.episodes >= max_episodes:
                break
            if duration is not None and self.clock.now() - start >= duration:
                break
            self.tick()
            if on_tick is not None:
                on_tick()
            next_t += period
            now = self.clock.now()
            if now > next_t + period:
                skipped = int((now - next_t) // period)
                next_t += skipped * period
                self.metrics.count("edge/skipped_ticks", skipped)
            self.clock.wait(next_t - now, stop)


class Watchdog:
    """Brakes the drive (once per stall) when the loop has not finished a tick for `periods` periods."""

    def __init__(self, loop: ControlLoop, periods: float) -> None:
        self.loop = loop
        self.limit = periods * loop.cfg.period
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="edge-watchdog", daemon=True)

    def start(self) -> Watchdog:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        braked_for = None
        while not self._stop.wait(self.limit / 4):
            last = self.loop.last_tick_end
            stalled = self.loop.clock.now() - last
            if stalled > self.limit and braked_for != last:
                braked_for = last
                self.loop.metrics.count("edge/brakes/watchdog")
                log.error("watchdog: no tick for %.0f ms; braking", stalled * 1e3)
                if self.loop.drive_lock.acquire(timeout=self.limit):
                    try:
                        self.loop.robot.drive.stop()
                    except Exception as exc:  # keep watching even if this brake failed
                        log.error("watchdog brake failed: %s", exc)
                    finally:
                        self.loop.drive_lock.release()
                else:
                    log.error("watchdog: the drive is busy in a stalled call; cannot brake")
