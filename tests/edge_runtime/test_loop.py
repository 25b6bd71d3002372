"""The control loop with real onnxruntime sessions and in-memory hardware fakes."""

from __future__ import annotations

import threading
import time

import numpy as np

from reachsafe.edge_runtime.config import EdgeConfig
from reachsafe.edge_runtime.inference import AgentSession, SessionOptions
from reachsafe.edge_runtime.loop import ActivePolicy, ControlLoop, Watchdog
from reachsafe.edge_runtime.metrics import Metrics
from reachsafe.edge_runtime.steps import Step, to_columns
from reachsafe.hardware.factory import Robot
from reachsafe.protocol.constants import POLICY_FALLBACK, validate_step_columns
from tests.fixtures.edge_support import FakeCamera, FakeDrive, FakeSignals, make_agent_onnx

CPU = SessionOptions(providers=("cpu",), warmup_runs=1)


class FixedPolicy:
    def __init__(self, policy: ActivePolicy | None) -> None:
        self.policy = policy
        self.seen: list[Step] = []

    def at_tick_boundary(self) -> ActivePolicy | None:
        return self.policy

    def observe(self, step: Step, inference_failed: bool) -> None:
        self.seen.append(step)


class ListSink:
    def __init__(self) -> None:
        self.steps: list[Step] = []

    def add(self, step: Step) -> None:
        self.steps.append(step)


def make_loop(model: bytes | None = None, cfg: EdgeConfig | None = None, **signals_kw):
    robot = Robot(FakeCamera(), FakeDrive(), FakeSignals(**signals_kw))
    robot.connect()
    session = AgentSession(model or make_agent_onnx(), CPU)
    policy = FixedPolicy(ActivePolicy(session, version=7, shield_threshold=0.0))
    sink = ListSink()
    cfg = cfg or EdgeConfig(rate_hz=200.0, max_frame_age=1.0)
    loop = ControlLoop(robot, policy, sink, cfg, Metrics(), rng=np.random.default_rng(0))
    return loop, robot, sink


def test_ticks_drive_the_robot_and_record_steps_with_episodes() -> None:
    loop, robot, sink = make_loop(episode_len=5)
    loop.run(threading.Event(), max_episodes=2)
    assert loop.stats.episodes == 2 and len(sink.steps) == 10
    assert [s.episode for s in sink.steps] == [0] * 5 + [1] * 5
    assert all(s.bundle_version == 7 and s.policy in (0, 1) for s in sink.steps)
    applied = [a for kind, a in robot.drive.commands if kind == "apply"]
    assert len(applied) == 10
    np.testing.assert_allclose(applied[-1], sink.steps[-1].action)
    cols = to_columns(sink.steps)
    assert validate_step_columns(cols, obs_shape=(16, 16, 3), action_dim=2) == 10
    assert loop.metrics.snapshot()["edge/tick_ms_p99"] > 0


def test_nan_bundle_brakes_and_is_counted() -> None:
    loop, robot, sink = make_loop(model=make_agent_onnx(nan_above=0.0))  # NaN on any non-black frame
    for _ in range(3):
        step = loop.tick()
        assert step.policy == POLICY_FALLBACK and not step.action.any()
    assert loop.metrics.counter("edge/brakes/nonfinite") == 3
    assert robot.drive.stops == 3 and not any(kind == "apply" for kind, _ in robot.drive.commands)


def test_stale_camera_brakes_but_still_records_signals() -> None:
    loop, robot, sink = make_loop(
        cfg=EdgeConfig(rate_hz=100.0, max_frame_age=0.02), episode_len=1000, cost=1.0
    )
    loop.tick()
    robot.camera.stall()
    deadline = time.monotonic() + 2
    while loop.metrics.counter("edge/brakes/stale_frame") < 2 and time.monotonic() < deadline:
        loop.tick()
    assert loop.metrics.counter("edge/brakes/stale_frame") >= 2
    assert robot.drive.commands[-1][0] == "stop"
    assert sink.steps[-1].policy == POLICY_FALLBACK and sink.steps[-1].cost == 1.0


def test_shield_intervenes_on_unsafe_online_actions() -> None:
    model = make_agent_onnx(q_h_bias=(5.0, 5.0, -3.0, 1.0, 1.0))
    loop, robot, sink = make_loop(model=model)
    for _ in range(5):
        loop.tick()
    assert all(s.shielded for s in sink.steps)
    assert all(not s.action.any() for s in sink.steps)  # the brake candidate has the lowest Q_h
    assert all(s.proposed.any() for s in sink.steps)
    assert loop.metrics.counter("edge/interventions") == 5


def test_shield_defers_after_a_step_that_cost_and_intervenes_again_once_it_is_clear() -> None:
    model = make_agent_onnx(q_h_bias=(5.0, 5.0, -3.0, 1.0, 1.0))
    loop, robot, sink = make_loop(model=model, episode_len=1000, cost=1.0)
    loop.tick()  # nothing read yet: not in violation, so the shield intervenes
    loop.tick()
    loop.tick()
    assert [s.shielded for s in sink.steps] == [True, False, False]
    assert loop.metrics.counter("edge/shield_deferred") == 2
    np.testing.assert_allclose(sink.steps[-1].action, sink.steps[-1].proposed)
    robot.signals.cost = 0.0
    loop.tick()  # the last read cost 1: still deferred
    loop.tick()  # the last read cost 0: the shield is back
    assert [s.shielded for s in sink.steps[3:]] == [False, True]
    assert loop.metrics.counter("edge/interventions") == 2


def test_missed_deadline_streak_brakes() -> None:
    class SlowSink(ListSink):
        def add(self, step: Step) -> None:
            time.sleep(0.012)
            super().add(step)

    loop, robot, _ = make_loop(cfg=EdgeConfig(rate_hz=100.0, max_frame_age=1.0, deadline_streak=3))
    loop.sink = SlowSink()
    for _ in range(4):
        loop.tick()
    assert loop.metrics.counter("edge/deadline_misses") == 4
    assert loop.metrics.counter("edge/brakes/deadline_streak") == 2


def test_watchdog_brakes_a_stalled_loop() -> None:
    loop, robot, _ = make_loop(cfg=EdgeConfig(rate_hz=100.0, max_frame_age=1.0))
    loop.tick()
    dog = Watchdog(loop, periods=2).start()
    try:
        deadline = time.monotonic() + 2
        while robot.drive.stops == 0 and time.monotonic() < deadline:
            time.sleep(0.005)
    finally:
        dog.stop()
    assert robot.drive.stops == 1 and loop.metrics.counter("edge/brakes/watchdog") == 1


def test_emergency_stop_brakes_until_it_clears() -> None:
    loop, robot, sink = make_loop()
    loop.tick()
    robot.signals.estop = True
    loop.tick()  # the stop is seen after this tick's command: brake at once
    assert robot.drive.commands[-1][0] == "stop"
    applies = sum(1 for kind, _ in robot.drive.commands if kind == "apply")
    for _ in range(3):
        step = loop.tick()
        assert step.policy == POLICY_FALLBACK
    assert sum(1 for kind, _ in robot.drive.commands if kind == "apply") == applies  # no command while held
    robot.signals.estop = False
    loop.tick()  # clears after this tick's signals
    loop.tick()
    assert robot.drive.commands[-1][0] == "apply" and sink.steps[-1].policy != POLICY_FALLBACK
    assert loop.metrics.counter("edge/brakes/estop") == 5


def test_lost_task_signals_brake_until_they_return(caplog) -> None:
    from reachsafe.hardware.errors import DeviceTimeoutError

    loop, robot, sink = make_loop(cfg=EdgeConfig(rate_hz=200.0, max_frame_age=1.0, signals_streak=3))
    real_read = robot.signals._read
    robot.signals._read = lambda: (_ for _ in ()).throw(DeviceTimeoutError("referee silent"))
    for _ in range(5):
        loop.tick()
    # three silent reads are tolerated while driving, then the loop brakes: it cannot see cost or an e-stop
    assert loop.metrics.counter("edge/errors/signals") == 5
    assert loop.metrics.counter("edge/brakes/signals_lost") == 2
    assert robot.drive.commands[-1][0] == "stop" and not sink.steps
    # held faults are rate-limited in the log (the control thread must not write a line per tick)
    assert sum("could not read task signals" in r.message for r in caplog.records) == 1
    assert sum("brake (signals_lost" in r.message for r in caplog.records) == 1
    robot.signals._read = real_read
    loop.tick()  # signals are back: this tick's read succeeds (still braked), the next one drives again
    loop.tick()
    assert robot.drive.commands[-1][0] == "apply" and len(sink.steps) == 2
    assert loop.metrics.counter("edge/brakes/signals_lost") == 3
