"""Faults the bridge injects on one simulated robot, reproducible by seed (``hw_fault``, docs/protocol.md §4.3).

A fault lasts ``duration_s`` on the server's monotonic clock. Dropping faults (``drive_timeout``,
``partition``) leave a share ``rate`` of the robot's matching requests unanswered; which ones comes
from a generator seeded by the message's ``seed``, so the same requests are dropped on every run. A
``camera_stall`` stops the frame from refreshing (the world keeps moving: the robot sees stale frames).
``hazard`` puts the robot before a hazard, facing it, at a place drawn from the seed.
The server accepts faults only when started with them allowed (``sim serve --faults``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from reachsafe.protocol.constants import MAX_FAULT_S
from reachsafe.protocol.messages import HwDrive, HwFault, HwStop, Message
from reachsafe.sim_bridge.layout import ROBOT_RADIUS

log = logging.getLogger(__name__)

#: Free floor left between the robot's body and the hazard it is put before, in metres.
HAZARD_GAP_M = 0.35
_PLACEMENT_TRIES = 256


class FaultError(ValueError):
    """An ``hw_fault`` the server cannot carry out; the text says what to change."""


@dataclass
class _Active:
    until: float
    rate: float
    rng: np.random.Generator

    def hits(self, now: float) -> bool:
        """Whether this request is affected (draws from the seeded generator only while in force)."""
        return now < self.until and (self.rate >= 1.0 or self.rng.random() < self.rate)


def check_fault(msg: HwFault) -> None:
    """Raise FaultError for a duration or rate out of range."""
    if not (math.isfinite(msg.duration_s) and 0.0 <= msg.duration_s <= MAX_FAULT_S):
        raise FaultError(f"hw_fault.duration_s must be within [0, {MAX_FAULT_S:g}] s, got {msg.duration_s}")
    if not (math.isfinite(msg.rate) and 0.0 <= msg.rate <= 1.0):
        raise FaultError(f"hw_fault.rate must be within [0, 1], got {msg.rate}")


class RobotFaults:
    """The faults in force on one robot."""

    def __init__(self) -> None:
        self._active: dict[str, _Active] = {}
        self.injected = 0

    def inject(self, msg: HwFault, now: float) -> None:
        """Start a timed fault (or end them all: ``clear``); ``msg`` passed `check_fault`."""
        self.injected += 1
        if msg.fault == "clear":
            self._active.clear()
            return
        self._active[msg.fault] = _Active(now + msg.duration_s, msg.rate, np.random.default_rng(msg.seed))

    def _hits(self, kind: str, now: float) -> bool:
        fault = self._active.get(kind)
        if fault is None:
            return False
        if now >= fault.until:
            del self._active[kind]
            return False
        return fault.hits(now)

    def drops(self, msg: Message, now: float) -> bool:
        """Whether ``msg`` (a request of this robot) goes unanswered."""
        if self._hits("partition", now):
            return True
        return isinstance(msg, (HwDrive, HwStop)) and self._hits("drive_timeout", now)

    def camera_stalled(self, now: float) -> bool:
        return self._hits("camera_stall", now)


def place_before_hazard(env: object, rng: np.random.Generator) -> tuple[np.ndarray, float, int]:
    """Put the robot of a SafeNav env ``HAZARD_GAP_M`` before a hazard, facing its centre; returns (xy,
    yaw, hazard index). The hazard and the approach direction come from ``rng``; a place inside the
    arena, clear of solids and of the other hazards, is searched for. FaultError if none is found."""
    nav = env.unwrapped.nav_state()  # type: ignore[attr-defined]
    if len(nav.hazards) == 0:
        raise FaultError("this task has no hazards to place the robot before")
    robot_r = ROBOT_RADIUS
    for _ in range(_PLACEMENT_TRIES):
        i = int(rng.integers(len(nav.hazards)))
        angle = float(rng.uniform(-math.pi, math.pi))
        centre, radius = nav.hazards[i], float(nav.hazard_radii[i])
        direction = np.array([math.cos(angle), math.sin(angle)])
        xy = centre + direction * (radius + robot_r + HAZARD_GAP_M)
        if np.any(np.abs(xy) > nav.arena_half - robot_r - 0.05):
            continue
        others = np.delete(np.arange(len(nav.hazards)), i)
        d_haz = np.linalg.norm(nav.hazards[others] - xy, axis=1) - nav.hazard_radii[others]
        d_obs = np.linalg.norm(nav.obstacles - xy, axis=1) - nav.obstacle_radii
        if np.any(d_haz < robot_r + 0.05) or np.any(d_obs < robot_r + 0.1):
            continue
        yaw = angle + math.pi
        env.unwrapped.place_robot(xy, yaw)  # type: ignore[attr-defined]
        return xy, yaw, i
    raise FaultError(f"found no free place before a hazard in {_PLACEMENT_TRIES} tries; try another seed")
