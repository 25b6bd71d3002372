"""Serve a Safety-Gymnasium task as a robot over reachsafe's hardware protocol (docs/robots.md).

Safety-Gymnasium 1.0.0 needs gymnasium 0.28 and, through gymnasium-robotics, numpy < 1.24, so it lives in its own environment
(``make safety-gym``: .venv-safety-gym). From reachsafe this imports only ``reachsafe.protocol`` and
``reachsafe.robot_server`` (numpy, msgpack), installed there without dependencies::

    MUJOCO_GL=egl .venv-safety-gym/bin/python scripts/safety_gym_server.py --port 5600 \\
        --task SafetyPointGoal1-v0 --size 64
    reachsafe edge run --hardware sim:tcp://127.0.0.1:5600 ...

Any task works: its camera (``vision``, SIZE×SIZE) is switched on and is the robot's frame; the
step's sixth value (Safety-Gymnasium's cost) is its cost; actions in [-1, 1] are mapped onto the
task's action box. A task process steps the env at ``--rate`` Hz with the last command held (and
brakes after ``--hold-timeout`` s without one) and sends each frame and step's signals; the
answering loop only serves the latest of them, so MuJoCo's rendering and its resets (seconds, with
the GIL held) never delay an answer: during a reset, frames and signals say ``resetting``
(docs/protocol.md §4.2, timing contract). Plain TCP on
loopback only: reach it from another machine through an SSH tunnel.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import multiprocessing as mp
import signal
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

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
    HwSpec,
    HwStop,
    Message,
)
from reachsafe.robot_server import SignalLedger, Totals

log = logging.getLogger(__name__)

_HELD_SLOTS = 33  # the held command shared with the task process: up to 32 action values, then its time


@dataclass
class RobotState:
    """What the answering loop serves, updated from the task process's messages."""

    image: np.ndarray
    t_capture: float = 0.0
    frame_id: int = 0
    episode: int = 0
    step: int = 0
    resetting: bool = True  # until the first episode's first frame
    ledger: SignalLedger = field(default_factory=SignalLedger)

    def update(self, event: tuple[Any, ...]) -> None:
        """One message of :func:`run_task`."""
        kind, *rest = event
        if kind == "frame":
            self.image, self.t_capture = rest  # captured at the task's time.monotonic() (one clock per host)
            self.frame_id, self.resetting = self.frame_id + 1, False
        elif kind == "step":
            reward, cost, terminated, truncated = rest
            self.ledger.add(Totals(reward, cost, terminated, truncated))
            self.step += 1
            if terminated or truncated:
                self.episode, self.step, self.resetting = self.episode + 1, 0, True


def make_task(task: str, size: int, episode_steps: int | None = None) -> Any:
    """``task`` with its camera on at ``size``×``size`` and dict observations (the image under ``vision``);
    ``episode_steps`` replaces the task's time limit."""
    import gymnasium
    import safety_gymnasium

    config = dict(gymnasium.spec(task).kwargs.get("config") or {})
    config.update(
        {"observe_vision": True, "observation_flatten": False, "vision_env_conf.vision_size": (size, size)}
    )
    limit = {} if episode_steps is None else {"max_episode_steps": episode_steps}
    return safety_gymnasium.make(task, config=config, **limit)


def run_task(conn: Connection, held: Any, args: argparse.Namespace) -> None:
    """The task process: steps the env at ``args.rate`` Hz with the held action (``held``: the action in
    its first slots, the command's ``time.monotonic()`` in the last) and resets it when an episode ends.
    A process, not a thread: MuJoCo's model compilation on reset holds the GIL for seconds, which would
    stall the answers."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server stops us
    _log_to_stderr()
    env = make_task(args.task, args.size, args.episode_steps)
    low, high = np.asarray(env.action_space.low, np.float64), np.asarray(env.action_space.high, np.float64)
    if len(low) >= _HELD_SLOTS:
        raise ValueError(
            f"{args.task}: {len(low)} action values; the held command has room for {_HELD_SLOTS - 1}"
        )
    conn.send(("spec", len(low)))
    episode, period = 0, 1.0 / args.rate
    while True:
        t0 = time.monotonic()
        obs, _ = env.reset(seed=args.seed + episode)
        conn.send(("frame", obs["vision"], time.monotonic()))
        log.info("episode %d: reset in %.2f s", episode, time.monotonic() - t0)
        ended, due = False, time.monotonic()
        while not ended:
            if conn.poll(max(0.0, due - time.monotonic())):
                return  # the server asks us to stop
            due = max(due + period, time.monotonic() - 5 * period)  # fell behind: do not burst to catch up
            command = np.array(held[:])
            fresh = time.monotonic() - command[-1] <= args.hold_timeout  # else brake, like a drive's watchdog
            action = command[: len(low)] if fresh else np.zeros(len(low))
            obs, reward, cost, terminated, truncated, _ = env.step(low + (action + 1.0) / 2.0 * (high - low))
            ended = bool(terminated or truncated)
            conn.send(("step", float(reward), float(cost), bool(terminated), bool(truncated)))
            if not ended:
                conn.send(("frame", obs["vision"], time.monotonic()))
        episode += 1


def answer(state: RobotState, held: Any, action_dim: int, msg: Message, rate_hz: float) -> Message:
    """The reply to one request, from the state as it is: never waits for the simulator."""
    if isinstance(msg, HwHello):
        return HwSpec(
            robot=msg.robot, obs_shape=tuple(state.image.shape), action_dim=action_dim, rate_hz=rate_hz
        )
    if isinstance(msg, HwReadFrame):
        return HwFrame(image=state.image, t_capture=state.t_capture, t_now=time.monotonic(),
                       frame_id=state.frame_id, resetting=state.resetting)  # fmt: skip
    if isinstance(msg, HwDrive) and (
        msg.action.shape != (action_dim,) or not np.all(np.isfinite(msg.action))
    ):
        return ErrorMessage(
            code="bad_action", message=f"action must be {action_dim} finite floats", ref_type=msg.TYPE
        )
    if isinstance(msg, (HwDrive, HwStop)):
        action = np.clip(msg.action, -1.0, 1.0) if isinstance(msg, HwDrive) else np.zeros(action_dim)
        held[:action_dim] = action.tolist()
        held[-1] = time.monotonic()
        return HwOk()
    if isinstance(msg, HwReadSignals):
        return state.ledger.answer(msg, state.episode, state.step, state.resetting)
    return ErrorMessage(
        code="unexpected_type", message=f"{msg.TYPE} is not a hardware request", ref_type=msg.TYPE
    )


def serve(args: argparse.Namespace) -> None:
    """Answer requests on 127.0.0.1:PORT while the task process runs; SIGTERM / SIGINT end both."""
    ctx = mp.get_context("spawn")
    conn, child_conn = ctx.Pipe()
    state = RobotState(image=np.zeros((args.size, args.size, 3), np.uint8))
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    held = ctx.Array("d", _HELD_SLOTS, lock=False)
    task = ctx.Process(target=run_task, args=(child_conn, held, args), name="safety-gym-task", daemon=True)
    task.start()
    child_conn.close()  # the task's end: ours alone would keep recv() waiting on a task that died
    sock = zmq.Context.instance().socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        _, action_dim = conn.recv()
        sock.bind(f"tcp://127.0.0.1:{args.port}")  # once the task is built: an open port means ready
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(conn.fileno(), zmq.POLLIN)
        log.info("serving %s (%d×%d, action dim %d) at %.1f Hz on tcp://127.0.0.1:%d",
                 args.task, args.size, args.size, action_dim, args.rate, args.port)  # fmt: skip
        while not stop.is_set() and task.is_alive():
            ready = dict(poller.poll(100))
            while conn.poll():
                state.update(conn.recv())
            if sock not in ready:
                continue
            ident, payload = sock.recv_multipart()[-2:]
            try:
                reply = answer(state, held, action_dim, decode(payload), args.rate)
            except ProtocolError as exc:
                log.warning("bad request: %s", exc)
                reply = ErrorMessage.from_exception(exc)
            sock.send_multipart([ident, encode(reply)])
    except EOFError:
        pass  # the task process ended: reported below
    finally:
        if task.is_alive():
            with contextlib.suppress(OSError):  # it may be ending on its own
                conn.send("stop")
            task.join(10.0)
            if task.is_alive():
                task.terminate()
        sock.close()
    if not stop.is_set():
        raise SystemExit(f"the task process ended (exit code {task.exitcode}); its error is logged above")


def _log_to_stderr() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(processName)s: %(message)s")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, required=True, help="TCP port on 127.0.0.1")
    p.add_argument(
        "--task", default="SafetyPointGoal1-v0", help="Safety-Gymnasium id [default: SafetyPointGoal1-v0]"
    )
    p.add_argument("--size", type=int, default=64, help="camera image side in pixels [default: 64]")
    p.add_argument(
        "--rate", type=float, default=20.0, help="control rate in Hz, advertised in hw_spec [default: 20]"
    )
    p.add_argument("--episode-steps", type=int, help="episode length [default: the task's, 1000]")
    p.add_argument("--seed", type=int, default=0, help="episode i is reset with seed SEED + i [default: 0]")
    p.add_argument(
        "--hold-timeout", type=float, default=1.0, help="brake after this many s without a command"
    )
    args = p.parse_args(argv)
    _log_to_stderr()
    serve(args)


if __name__ == "__main__":
    main()
