"""The hardware server: simulated robots behind one ZeroMQ ROUTER (the ``hw_*`` messages).

Each robot is one env stepped in real time at its control rate (``--speed`` multiplies the rate),
paced on ``time.monotonic``. Between steps the last commanded action is held (a robot that gets
no command for ``hold_timeout_s`` wall seconds brakes, like a real drive's watchdog); reward and
cost are summed between ``hw_read_signals`` requests; an episode that ends is reset by the server.
Requests are answered between steps from the same thread, so no locks are needed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np
import zmq

from reachsafe.protocol.codec import decode, encode
from reachsafe.protocol.errors import ProtocolError
from reachsafe.protocol.messages import (
    ErrorMessage,
    HwDrive,
    HwFrame,
    HwHello,
    HwOk,
    HwReadFrame,
    HwReadSignals,
    HwSignals,
    HwSpec,
    HwStop,
    Message,
)
from reachsafe.protocol.sockets import server_socket
from reachsafe.signals import stop_on_signals
from reachsafe.sim_bridge.registration import register_envs

log = logging.getLogger(__name__)

_STATS_EVERY_S = 10.0


class RequestError(Exception):
    """A well-formed request the server cannot serve; answered with an ``error`` message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class ServerConfig:
    bind: str
    task: str = "reachsafe/SafeGoal1-v0"
    split: str = "train"
    robots: int = 1
    speed: float = 1.0
    seed: int = 0
    episode_steps: int = 300
    hold_timeout_s: float = 1.0


def robot_ids(n: int) -> list[str]:
    return [f"robot{i}" for i in range(n)]


@dataclass
class SimRobot:
    """One simulated robot: its env, the held action and the signals since the last read."""

    robot_id: str
    env: gym.Env
    image: np.ndarray
    action: np.ndarray
    t_capture: float
    t_command: float
    frame_id: int = 0
    episode: int = 0
    step_in_episode: int = 0
    reward: float = 0.0
    cost: float = 0.0
    terminated: bool = False
    truncated: bool = False
    steps_total: int = field(default=0)

    def step(self, now: float, hold_timeout_s: float) -> None:
        if now - self.t_command > hold_timeout_s:
            self.action[:] = 0.0
        obs, reward, terminated, truncated, info = self.env.step(self.action)
        self.reward += reward
        self.cost += info["cost"]
        self.step_in_episode += 1
        self.steps_total += 1
        if terminated or truncated:
            self.terminated |= terminated
            self.truncated |= truncated
            self.episode += 1
            self.step_in_episode = 0
            obs, _ = self.env.reset()
        self.image = obs
        self.t_capture = now
        self.frame_id += 1

    def read_signals(self) -> HwSignals:
        msg = HwSignals(
            reward=float(self.reward),
            cost=float(self.cost),
            terminated=self.terminated,
            truncated=self.truncated,
            episode=self.episode,
            step=self.step_in_episode,
        )
        self.reward = self.cost = 0.0
        self.terminated = self.truncated = False
        return msg


class SimServer:
    """The robots and the ROUTER socket; ``run()`` until ``stop()`` (or a signal)."""

    def __init__(self, cfg: ServerConfig, ctx: zmq.Context | None = None) -> None:
        if cfg.robots < 1 or cfg.speed <= 0:
            raise ValueError("need robots >= 1 and speed > 0")
        register_envs()
        self.cfg = cfg
        self._ctx = ctx or zmq.Context.instance()
        self.robots: dict[str, SimRobot] = {}
        now = time.monotonic()
        for i, rid in enumerate(robot_ids(cfg.robots)):
            env = gym.make(cfg.task, split=cfg.split, obs_mode="image", episode_steps=cfg.episode_steps)
            obs, _ = env.reset(seed=cfg.seed + 10007 * i)
            self.robots[rid] = SimRobot(rid, env, obs, np.zeros(2, dtype=np.float32), now, now)
        first = next(iter(self.robots.values())).env.unwrapped
        self.rate_hz = float(first.control_hz)
        self.period = 1.0 / (self.rate_hz * cfg.speed)
        self._sock = server_socket(self._ctx, zmq.ROUTER, cfg.bind)
        self.endpoint = self._sock.getsockopt(zmq.LAST_ENDPOINT).decode()
        self._running = True
        self.errors = 0
        self.late_steps = 0

    def stop(self) -> None:
        self._running = False

    def close(self) -> None:
        self._sock.close(linger=0)
        for r in self.robots.values():
            r.env.close()

    # -- requests -------------------------------------------------------------------------
    def _robot(self, rid: str) -> SimRobot:
        try:
            return self.robots[rid]
        except KeyError:
            raise RequestError(
                "unknown_robot", f"unknown robot {rid!r}: this server has {sorted(self.robots)}"
            ) from None

    def handle(self, msg: Message) -> Message:
        now = time.monotonic()
        if isinstance(msg, HwReadFrame):
            r = self._robot(msg.robot)
            return HwFrame(image=r.image, t_capture=r.t_capture, t_now=now, frame_id=r.frame_id)
        if isinstance(msg, HwDrive):
            r = self._robot(msg.robot)
            if msg.action.shape != r.action.shape or not np.all(np.isfinite(msg.action)):
                raise RequestError(
                    "bad_action", f"action must be {r.action.size} finite floats, got {msg.action}"
                )
            r.action[:] = np.clip(msg.action, -1.0, 1.0)
            r.t_command = now
            return HwOk()
        if isinstance(msg, HwReadSignals):
            return self._robot(msg.robot).read_signals()
        if isinstance(msg, HwStop):
            r = self._robot(msg.robot)
            r.action[:] = 0.0
            r.t_command = now
            return HwOk()
        if isinstance(msg, HwHello):
            r = self._robot(msg.robot)
            log.info("robot %s: client connected", msg.robot)
            # rate in frames per wall second, which is what the client sees
            wall_rate = self.rate_hz * self.cfg.speed
            return HwSpec(robot=msg.robot, obs_shape=tuple(r.image.shape), action_dim=2, rate_hz=wall_rate)
        return ErrorMessage(
            code="unexpected_type", message=f"{msg.TYPE} is not a hardware request", ref_type=msg.TYPE
        )

    def _serve_pending(self) -> None:
        while True:
            try:
                ident, payload = self._sock.recv_multipart(zmq.NOBLOCK)[-2:]
            except zmq.Again:
                return
            try:
                reply = self.handle(decode(payload))
            except ProtocolError as e:
                self.errors += 1
                log.warning("bad request: %s", e)
                reply = ErrorMessage.from_exception(e)
            except RequestError as e:
                self.errors += 1
                log.warning("refused request: %s", e.message)
                reply = ErrorMessage(code=e.code, message=e.message, ref_type="")
            self._sock.send_multipart([ident, encode(reply)])

    # -- the loop -------------------------------------------------------------------------
    def run(self) -> None:
        log.info(
            "sim server %s: %d robot(s) %s on %s at %.1f Hz x%.2g",
            self.cfg.task,
            len(self.robots),
            ",".join(self.robots),
            self.endpoint,
            self.rate_hz,
            self.cfg.speed,
        )
        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        next_due = time.monotonic() + self.period
        next_stats = time.monotonic() + _STATS_EVERY_S
        steps_at_stats = 0
        while self._running:
            wait = max(0.0, next_due - time.monotonic())
            if poller.poll(timeout=wait * 1000.0):
                self._serve_pending()
            now = time.monotonic()
            if now < next_due:
                continue
            for r in self.robots.values():
                r.step(now, self.cfg.hold_timeout_s)
            next_due += self.period
            if now - next_due > 5 * self.period:  # fell behind (CPU starved): do not burst to catch up
                self.late_steps += 1
                next_due = now + self.period
            if now >= next_stats:
                total = sum(r.steps_total for r in self.robots.values())
                log.info(
                    "sim/steps_per_s=%.1f sim/late=%d sim/errors=%d",
                    (total - steps_at_stats) / _STATS_EVERY_S,
                    self.late_steps,
                    self.errors,
                )
                steps_at_stats, next_stats = total, now + _STATS_EVERY_S


@contextmanager
def running(cfg: ServerConfig) -> Iterator[SimServer]:
    """A server stepping in a background thread of this process (tests, benchmarks, notebooks)."""
    server = SimServer(cfg)
    thread = threading.Thread(target=server.run, name="sim-server", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.stop()
        thread.join(5)
        server.close()


def serve(cfg: ServerConfig) -> int:
    """Entry point of ``reachsafe sim serve``: run until SIGTERM/SIGINT, then exit 0."""
    server = SimServer(cfg)

    try:
        with stop_on_signals(server.stop, "stopping the sim server"):
            server.run()
    finally:
        server.close()
    return 0
