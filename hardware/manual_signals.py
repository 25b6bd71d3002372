"""Task signals typed by an operator on a terminal (the robot's console, or an ssh session).

Single key presses, no Enter: `n` ends the episode (truncated), `f` ends it as a failure
(terminated), `c` adds a cost of 1 (the robot is in a hazard), `r` adds a reward of 1, space
toggles the emergency stop (keys configurable). The terminal is put in cbreak mode (no echo, no
line buffering) while connected and restored on disconnect. Reading never blocks the control loop.
"""

from __future__ import annotations

import logging
import os
import termios
import tty
from typing import TYPE_CHECKING, Any

from reachsafe.hardware.base import Signals, TaskSignals
from reachsafe.hardware.errors import DeviceUnavailableError

if TYPE_CHECKING:
    from reachsafe.hardware.config import HardwareConfig

log = logging.getLogger(__name__)


class ManualSignals(TaskSignals):
    def __init__(
        self,
        tty_path: str = "/dev/tty",
        end_key: str = "n",
        fail_key: str = "f",
        cost_key: str = "c",
        reward_key: str = "r",
        estop_key: str = " ",
    ) -> None:
        super().__init__()
        self.tty_path = tty_path
        self.keys = {
            end_key: "end",
            fail_key: "fail",
            cost_key: "cost",
            reward_key: "reward",
            estop_key: "estop",
        }
        self._fd: int | None = None
        self._saved: list[Any] | None = None
        self._episode = 0
        self._estop = False

    @classmethod
    def from_config(cls, hw: HardwareConfig) -> ManualSignals:
        s = hw.signals
        return cls(s.tty, s.end_key, s.fail_key, s.cost_key, s.reward_key, s.estop_key)

    @property
    def features(self) -> dict[str, Any]:
        return {}

    def _open(self) -> None:
        try:
            fd = os.open(self.tty_path, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)
        except OSError as e:
            raise DeviceUnavailableError(
                f"cannot open terminal {self.tty_path} for manual signals: {e.strerror}; run the runtime in a "
                "terminal (not as a service) or set signals.tty"
            ) from e
        try:
            self._saved = termios.tcgetattr(fd)
            tty.setcbreak(fd)
        except termios.error as e:
            os.close(fd)
            raise DeviceUnavailableError(f"{self.tty_path} is not a terminal: {e}") from e
        self._fd, self._episode, self._estop = fd, 0, False
        help_text = ", ".join(f"{k!r}={v}" for k, v in self.keys.items())
        log.warning("manual signals on %s: keys %s", self.tty_path, help_text)

    def _close(self) -> None:
        fd, self._fd = self._fd, None
        try:
            if self._saved is not None:
                termios.tcsetattr(fd, termios.TCSADRAIN, self._saved)
        finally:
            os.close(fd)

    def _read(self) -> Signals:
        try:
            data = os.read(self._fd, 1024)
        except BlockingIOError:
            data = b""
        except OSError as e:
            raise DeviceUnavailableError(f"terminal {self.tty_path} went away: {e.strerror}") from e
        reward = cost = 0.0
        terminated = truncated = False
        for ch in data.decode(errors="ignore"):
            action = self.keys.get(ch)
            if action == "end" or action == "fail":
                terminated |= action == "fail"
                truncated |= action == "end"
                self._episode += 1
                log.info(
                    "manual signals: episode %s (%s)",
                    self._episode,
                    "failure" if action == "fail" else "ended",
                )
            elif action == "cost":
                cost += 1.0
            elif action == "reward":
                reward += 1.0
            elif action == "estop":
                self._estop = not self._estop
                log.warning("manual signals: emergency stop %s", "ENGAGED" if self._estop else "released")
        return Signals(reward, cost, terminated, truncated, self._episode, self._estop)
