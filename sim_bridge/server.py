"""The hardware server: simulated robots behind one ZeroMQ ROUTER (the ``hw_*`` messages).

Each robot is one env stepped in real time at its control rate (``--speed`` multiplies the rate),
paced on ``time.monotonic``. Between steps the last commanded action is held (a robot that gets
no command for ``hold_timeout_s`` wall seconds brakes, like a real drive's watchdog); reward and
cost are kept in a `SignalLedger` until the client confirms it received them; an episode that
ends is reset by the server, and with ``reset_s`` > 0 the reset takes that long, declared as
``resetting`` in the frame and signal answers (a slow simulator, modelled: the server keeps
answering meanwhile, as docs/protocol.md's timing contract asks).
Requests are answered between steps from the same thread, so no locks are needed.
With ``keys`` the socket uses CURVE with the robot's trainer-link keys (docs/sim.md).
With ``faults`` the server also takes ``hw_fault`` requests, the HIL suite's seeded fault injection
(`reachsafe.sim_bridge.faults`, docs/hil.md).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import gymnasium as gym
import numpy as np
import zmq

from reachsafe.protocol.codec import decode, encode
from reachsafe.protocol.errors import ProtocolError, TransportSecurityError
from reachsafe.protocol.messages import (
    ErrorMessage,
    HwDrive,
    HwFault,
    HwFrame,
    HwHello,
    HwOk,
    HwReadFrame,
    HwReadSignals,
    HwSpec,
    HwStop,
    Message,
)
from reachsafe.protocol.sockets import ServerCurve, is_loopback_endpoint, server_socket
from reachsafe.robot_server import SignalLedger, Totals
from reachsafe.signals import stop_on_signals
from reachsafe.sim_bridge.faults import FaultError, RobotFaults, check_fault, place_before_hazard
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
    reset_s: float = 0.0  # wall seconds an episode reset takes, declared as `resetting`
    keys: Path | None = None  # CURVE: KEYS/trainer.key_secret, robots' keys in KEYS/robots/ or KEYS/robot.key
    faults: bool = False  # take `hw_fault` requests (HIL fault injection); refused otherwise


def robot_ids(n: int) -> list[str]:
    return [f"robot{i}" for i in range(n)]


@dataclass
class SimRobot:
    """One simulated robot: its env, the held action and the signals not yet confirmed."""

    robot_id: str
    env: gym.Env
    image: np.ndarray
    action: np.ndarray
    t_capture: float
    t_command: float
    frame_id: int = 0
    episode: int = 0
    step_in_episode: int = 0
    signals: SignalLedger = field(default_factory=SignalLedger)
    reset_until: float | None = None  # while set, a declared reset is under way (the world holds still)
    steps_total: int = field(default=0)
    faults: RobotFaults = field(default_factory=RobotFaults)

    @property
    def resetting(self) -> bool:
        """Until the first step after `reset_until` captures the new episode's first frame."""
        return self.reset_until is not None

    def step(self, now: float, hold_timeout_s: float, reset_s: float) -> None:
        if self.reset_until is not None:
            if now < self.reset_until:
                return
            self.reset_until = None  # the reset is over: the new episode's first frame is live from now
            self._capture(self.image, now)
            return
        if now - self.t_command > hold_timeout_s:
            self.action[:] = 0.0
        obs, reward, terminated, truncated, info = self.env.step(self.action)
        if self.faults.camera_stalled(now):
            obs = None  # the camera froze: the last frame is served, ageing
        self.signals.add(Totals(float(reward), float(info["cost"]), bool(terminated), bool(truncated)))
        self.step_in_episode += 1
        self.steps_total += 1
        if terminated or truncated:
            self.episode += 1
            self.step_in_episode = 0
            obs, _ = self.env.reset()
            if reset_s > 0:
                self.reset_until = now + reset_s
                self.image = obs  # served, stale and flagged `resetting`, until the reset is over
                return
        if obs is not None:
            self._capture(obs, now)

    def _capture(self, obs: np.ndarray, now: float) -> None:
        self.image = obs
        self.t_capture = now
        self.frame_id += 1


def bind_socket(ctx: zmq.Context, bind: str, keys: Path | None) -> tuple[zmq.Socket, ServerCurve | None]:
    """The ROUTER socket; a plain one only on loopback. With ``keys``, CURVE with the key files a robot
    uses for the trainer: this server holds KEYS/trainer.key_secret (robots trust KEYS/trainer.key) and
    admits the robot keys in KEYS/robots/*.key, else KEYS/robot.key, the layout `reachsafe daemon serve
    --keys` reads."""
    if keys is None:
        if not is_loopback_endpoint(bind):
            raise TransportSecurityError(
                f"refusing a plain (unencrypted, unauthenticated) sim server on non-loopback {bind}: pass "
                "`--keys DIR` (the folder `reachsafe keys generate` wrote; robots then connect with "
                "sim:tcp://HOST:PORT/ROBOT?keys=DIR) or bind 127.0.0.1"
            )
        return server_socket(ctx, zmq.ROUTER, bind), None
    curve = ServerCurve.from_key_dir(ctx, keys)
    try:
        return server_socket(ctx, zmq.ROUTER, bind, curve=curve), curve
    except BaseException:
        curve.close()
        raise


class SimServer:
    """The robots and the ROUTER socket; ``run()`` until ``stop()`` (or a signal)."""

    def __init__(self, cfg: ServerConfig) -> None:
        if cfg.robots < 1 or cfg.speed <= 0 or cfg.reset_s < 0:
            raise ValueError("need robots >= 1, speed > 0 and reset_s >= 0")
        register_envs()
        self.cfg = cfg
        self.robots: dict[str, SimRobot] = {}
        now = time.monotonic()
        for i, rid in enumerate(robot_ids(cfg.robots)):
            env = gym.make(cfg.task, split=cfg.split, obs_mode="image", episode_steps=cfg.episode_steps)
            obs, _ = env.reset(seed=cfg.seed + 10007 * i)
            self.robots[rid] = SimRobot(rid, env, obs, np.zeros(2, dtype=np.float32), now, now)
        first = next(iter(self.robots.values())).env.unwrapped
        self.rate_hz = float(first.control_hz)
        self.period = 1.0 / (self.rate_hz * cfg.speed)
        self._ctx = zmq.Context()  # its own: a CURVE authenticator serves one context
        try:
            self._sock, self._curve = bind_socket(self._ctx, cfg.bind, cfg.keys)
        except BaseException:
            self._ctx.term()
            for r in self.robots.values():
                r.env.close()
            raise
        self.endpoint = self._sock.getsockopt(zmq.LAST_ENDPOINT).decode()
        self._running = True
        self.errors = 0
        self.late_steps = 0

    def stop(self) -> None:
        self._running = False

    def close(self) -> None:
        self._sock.close(linger=0)
        if self._curve is not None:
            self._curve.close()
        self._ctx.term()
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
            return HwFrame(
                image=r.image,
                t_capture=r.t_capture,
                t_now=now,
                frame_id=r.frame_id,
                resetting=r.resetting,
            )
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
            r = self._robot(msg.robot)
            return r.signals.answer(msg, r.episode, r.step_in_episode, r.resetting)
        if isinstance(msg, HwStop):
            r = self._robot(msg.robot)
            r.action[:] = 0.0
            r.t_command = now
            return HwOk()
        if isinstance(msg, HwFault):
            return self._inject(msg, now)
        if isinstance(msg, HwHello):
            r = self._robot(msg.robot)
            log.info("robot %s: client connected", msg.robot)
            # rate in frames per wall second, which is what the client sees
            wall_rate = self.rate_hz * self.cfg.speed
            return HwSpec(robot=msg.robot, obs_shape=tuple(r.image.shape), action_dim=2, rate_hz=wall_rate)
        return ErrorMessage(
            code="unexpected_type", message=f"{msg.TYPE} is not a hardware request", ref_type=msg.TYPE
        )

    def _inject(self, msg: HwFault, now: float) -> Message:
        if not self.cfg.faults:
            raise RequestError(
                "faults_disabled",
                "this sim server takes no hw_fault requests: start it with `reachsafe sim serve --faults` "
                "(a HIL bridge only, never one that robots use for training)",
            )
        r = self._robot(msg.robot)
        try:
            check_fault(msg)
            if msg.fault == "hazard":
                xy, yaw, i = place_before_hazard(r.env, np.random.default_rng(msg.seed))
                detail = f"placed at ({xy[0]:.2f}, {xy[1]:.2f}) facing hazard {i}"
            else:
                r.faults.inject(msg, now)
                detail = f"for {msg.duration_s:g} s, rate {msg.rate:g}"
        except FaultError as exc:
            raise RequestError("bad_fault", str(exc)) from None
        log.warning("fault %s on %s (seed %d): %s", msg.fault, msg.robot, msg.seed, detail)
        return HwOk()

    def _drops(self, msg: Message) -> bool:
        """A request an injected fault leaves unanswered (a robot named in it, not an `hw_fault`)."""
        r = self.robots.get(getattr(msg, "robot", ""))
        return r is not None and not isinstance(msg, HwFault) and r.faults.drops(msg, time.monotonic())

    def _serve_pending(self) -> None:
        while True:
            try:
                ident, payload = self._sock.recv_multipart(zmq.NOBLOCK)[-2:]
            except zmq.Again:
                return
            try:
                msg = decode(payload)
                if self._drops(msg):
                    continue
                reply = self.handle(msg)
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
                r.step(now, self.cfg.hold_timeout_s, self.cfg.reset_s)
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
