"""The control loop with real onnxruntime sessions and in-memory hardware fakes."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

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


def loop_on(robot: Robot, cfg: EdgeConfig, model: bytes | None = None) -> tuple[ControlLoop, ListSink]:
    """A loop running a `make_agent_onnx` graph (frames of the robot camera's shape) on a connected robot."""
    shape = robot.camera.features["image_shape"]
    session = AgentSession(model or make_agent_onnx(obs_shape=shape), CPU)
    policy = FixedPolicy(ActivePolicy(session, version=7, shield_threshold=0.0))
    sink = ListSink()
    return ControlLoop(robot, policy, sink, cfg, Metrics(), rng=np.random.default_rng(0)), sink


def make_loop(model: bytes | None = None, cfg: EdgeConfig | None = None, **signals_kw):
    robot = Robot(FakeCamera(), FakeDrive(), FakeSignals(**signals_kw))
    robot.connect()
    loop, sink = loop_on(robot, cfg or EdgeConfig(rate_hz=200.0, max_frame_age=1.0), model)
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


def test_a_declared_reset_brakes_and_records_no_step_unless_its_signals_carry_something() -> None:
    loop, robot, sink = make_loop(episode_len=3)
    for _ in range(3):
        loop.tick()  # one whole episode
    robot.camera.resetting = robot.signals.resetting = True
    robot.camera.stall()  # a resetting source's frame is old by nature: not a stale-frame fault
    for _ in range(4):
        assert loop.tick() is None
    assert robot.drive.commands[-1][0] == "stop"
    assert loop.metrics.counter("edge/reset_ticks") == loop.metrics.counter("edge/brakes/resetting") == 4
    assert loop.metrics.counter("edge/brakes/stale_frame") == 0
    robot.signals.resetting = False  # the camera still says resetting, but this read carries a reward
    step = loop.tick()
    assert step is not None and step.policy == POLICY_FALLBACK and step.reward == 1.0  # nothing lost
    robot.camera.resetting, robot.camera.stalled_at = False, None
    for _ in range(2):
        loop.tick()
    assert [s.episode for s in sink.steps] == [0, 0, 0, 1, 1, 1] and loop.stats.episodes == 2
    assert loop.stats.steps == 6


def test_task_signals_survive_late_replies_and_slow_resets_of_a_sim_server() -> None:
    """Signal replies at episode ends come after the client gave up, and every reset takes 0.4 s:
    the loop still sees every episode end, reward and cost the simulator produced, once, and records
    no step while the server resets."""
    from reachsafe.hardware import make_robot
    from reachsafe.protocol.messages import HwSignals
    from reachsafe.sim_bridge.server import ServerConfig, running
    from tests.conftest import free_tcp_port

    steps = 20
    cfg = ServerConfig(bind=f"tcp://127.0.0.1:{free_tcp_port()}", speed=2.0, episode_steps=steps, reset_s=0.4)
    with running(cfg) as server:
        sim = server.robots["robot0"]
        truth: list = []
        ledger_add = sim.signals.add
        sim.signals.add = lambda totals: (truth.append(totals), ledger_add(totals))
        handle, delayed = server.handle, set()

        def late_at_episode_ends(msg):  # noqa: ANN001, ANN202
            reply = handle(msg)
            if isinstance(reply, HwSignals) and reply.truncated and reply.read_id not in delayed:
                delayed.add(reply.read_id)
                time.sleep(0.25)  # the fault injected: a slow server, past the client's 0.1 s
            return reply

        server.handle = late_at_episode_ends
        with make_robot(f"sim:{server.endpoint}/robot0?timeout_s=0.1") as robot:
            loop, sink = loop_on(robot, EdgeConfig(rate_hz=40.0, max_frame_age=0.5))
            loop.run(threading.Event(), duration=5.0)
            sim.step = lambda *args: None  # the world stops: what it produced must all arrive
            server.handle = handle
            for _ in range(5):
                loop.tick()
    ends = sum(t.truncated for t in truth)
    assert ends >= 3 and len(delayed) >= 2 and robot.signals.link.timeouts >= 2
    assert loop.stats.episodes == ends
    assert sum(s.reward for s in sink.steps) == pytest.approx(sum(t.reward for t in truth), abs=1e-6)
    assert sum(s.cost for s in sink.steps) == sum(t.cost for t in truth)
    assert loop.metrics.counter("edge/reset_ticks") >= 5
    # no brake tick of a reset is a step: an episode of 20 simulator steps has about 20 runtime steps
    # (21-22 measured; ticks and simulator steps are not locked together, and a loaded machine can make
    # the server fall behind; recording the reset's ticks made it ~36)
    per_episode = np.bincount([s.episode for s in sink.steps])[1:ends]
    assert per_episode.size and per_episode.max() <= steps + 8, per_episode
