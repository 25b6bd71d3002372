"""A robot server as a gymnasium env (``--env remote:tcp://HOST:PORT[/ROBOT][?keys=DIR]``).

Any server of the hardware protocol (docs/robots.md: reachsafe's sim, the Safety-Gymnasium bridge, a
real robot) is driven through the runtime's own client (:mod:`reachsafe.hardware.sim`), so ``train
online`` and ``eval`` run on it as on an in-process env. The server, not this env, owns the world:
it steps in real time at its ``rate_hz`` and resets episodes itself. So ``step`` sends the action and
waits for the server's next frame (one server step), and ``reset`` waits for a live episode from its
start: at once after an episode ended (or when no step was taken in it here), else braking until the
server ends the current one (so the first reset joins a running server at its next episode). Seeds cannot be chosen; the server's own sequence of episodes is what runs. One process holds
one client per robot (:meth:`RemoteEnv.shared`): two would read the same robot's signals, and each
would take the other's acknowledged answers for lost ones.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np

logger = logging.getLogger(__name__)


class RemoteEnv(gym.Env):
    """The robot at ``uri`` (``tcp://HOST:PORT[/ROBOT][?keys=DIR]``); ``info["cost"]`` is the step's cost."""

    metadata = {"render_modes": []}
    _open: ClassVar[dict[str, tuple[RemoteEnv, int]]] = {}  # uri -> (the env, how many users hold it)

    @classmethod
    def shared(cls, uri: str) -> RemoteEnv:
        """The process's env for ``uri`` (connected on first use; :meth:`close` by the last user)."""
        env, users = cls._open.get(uri) or (cls(uri), 0)
        cls._open[uri] = (env, users + 1)
        return env

    def __init__(self, uri: str, episode_timeout_s: float = 600.0) -> None:
        from reachsafe.hardware.factory import make_robot

        self.uri = uri
        self.robot = make_robot(f"sim:{uri}")
        self.robot.connect()
        features = self.robot.features
        self.observation_space = gym.spaces.Box(0, 255, tuple(features["image_shape"]), np.uint8)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (int(features["action_dim"]),), np.float32)
        self.period = 1.0 / float(features["rate_hz"])
        self.episode_timeout_s = episode_timeout_s
        self.frame_id = -1
        self.mid_episode = True  # what a server ran before we came is not ours

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        if self.mid_episode:
            logger.info("reset: braking until the server ends the running episode")
            self.robot.drive.stop()
            self._wait(lambda: self._ended(self.robot.signals.read()), "the episode's end")
        frame = self._wait(self._live_frame, "the next episode's first frame")
        self.robot.signals.read()  # the steps braked through while waiting are no episode's
        self.frame_id, self.mid_episode = frame.frame_id, False
        return np.asarray(frame.image), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        self.robot.drive.apply(np.asarray(action, np.float32))
        frame = self._wait(self._new_frame, "the server's next step")
        signals = self.robot.signals.read()
        self.frame_id, self.mid_episode = frame.frame_id, not self._ended(signals)
        info = {"cost": float(signals.cost), "episode": signals.episode}
        return np.asarray(frame.image), float(signals.reward), signals.terminated, signals.truncated, info

    def close(self) -> None:
        env, users = self._open.get(self.uri, (self, 1))
        if users > 1:
            self._open[self.uri] = (env, users - 1)
            return
        self._open.pop(self.uri, None)
        if self.robot.is_connected:
            self.robot.disconnect()

    # ----- waiting on the server ---------------------------------------------------------------
    def _ended(self, signals: Any) -> bool:
        return bool(signals.terminated or signals.truncated)

    def _live_frame(self) -> Any:
        frame = self.robot.camera.read_latest()
        return None if frame.resetting else frame

    def _new_frame(self) -> Any:
        """The frame after our last one, or one marked ``resetting`` (the step ended the episode)."""
        frame = self.robot.camera.read_latest()
        return frame if frame.frame_id != self.frame_id or frame.resetting else None

    def _wait(self, ready: Callable[[], Any], what: str) -> Any:
        deadline = time.monotonic() + self.episode_timeout_s
        while True:
            value = ready()
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"the robot server gave no {what} within {self.episode_timeout_s:.0f} s")
            time.sleep(self.period / 10)
