"""Scripted behaviour policies with privileged state, for datasets that span the reward-cost plane.

- ``careful``: steers to the goal along a potential field that keeps clear of hazards and solids.
- ``reckless``: the same controller with hazards ignored, so it cuts straight through them.
- ``noisy``: a random caution level and Gaussian action noise, per episode.
- ``random``: smooth random actions (an Ornstein-Uhlenbeck process).
- ``mixed``: one of the above per episode (weights ``MIX_WEIGHTS``).
Every policy draws randomness only from the generator given to ``reset``.
"""

from __future__ import annotations

import math

import numpy as np

from sim_bridge.env import NavState
from sim_bridge.layout import ROBOT_RADIUS

POLICIES: tuple[str, ...] = ("careful", "reckless", "noisy", "random", "mixed")
MIX_WEIGHTS: dict[str, float] = {"careful": 0.35, "reckless": 0.25, "noisy": 0.25, "random": 0.15}
_INFLUENCE = 0.45  # metres of clearance inside which an object pushes the robot away


def _unit(v: np.ndarray) -> np.ndarray:
    n = float(np.hypot(v[0], v[1]))
    return v / n if n > 1e-9 else np.zeros(2)


def _wrap(a: float) -> float:
    return (a + math.pi) % (2 * math.pi) - math.pi


class ExpertPolicy:
    """Potential-field steering; ``caution`` in [0, 1] scales how strongly hazards repel."""

    def __init__(self, name: str, caution: float, noise: float = 0.0) -> None:
        self.name = name
        self.caution = caution
        self.noise = noise
        self._rng = np.random.default_rng(0)

    def reset(self, rng: np.random.Generator) -> None:
        self._rng = rng

    def _repulsion(self, s: NavState, to_goal: np.ndarray) -> np.ndarray:
        push = np.zeros(2)
        groups = [(s.obstacles, s.obstacle_radii, 1.5)]
        if self.caution > 0:
            groups.append((s.hazards, s.hazard_radii, 2.5 * self.caution))
        for centres, radii, gain in groups:
            for c, r in zip(centres, radii, strict=True):
                rel = s.xy - c
                clearance = float(np.hypot(rel[0], rel[1])) - r - ROBOT_RADIUS
                if clearance >= _INFLUENCE:
                    continue
                away = _unit(rel)
                # slide around the object on the side the goal is on, not just straight back
                tangent = np.array([-away[1], away[0]])
                if float(tangent @ to_goal) < 0:
                    tangent = -tangent
                k = gain * (_INFLUENCE - max(clearance, 0.0)) / _INFLUENCE
                push += k * (0.6 * away + 0.8 * tangent)
        for axis in (0, 1):  # walls
            for sign in (-1.0, 1.0):
                clearance = s.arena_half - sign * s.xy[axis] - ROBOT_RADIUS
                if clearance < _INFLUENCE:
                    push[axis] -= sign * (_INFLUENCE - clearance) / _INFLUENCE
        return push

    def act(self, s: NavState) -> np.ndarray:
        to_goal = _unit(s.goal_xy - s.xy)
        direction = to_goal + self._repulsion(s, to_goal)
        heading = math.atan2(direction[1], direction[0])
        err = _wrap(heading - s.yaw)
        turn = float(np.clip(2.0 * err, -1.0, 1.0))
        forward = float(np.clip(math.cos(err), 0.0, 1.0)) * (0.9 if self.caution > 0.5 else 1.0)
        a = np.array([forward, turn])
        if self.noise > 0:
            a = a + self._rng.normal(0.0, self.noise, size=2)
        return np.clip(a, -1.0, 1.0).astype(np.float32)


class RandomPolicy:
    """Smooth random actions: an Ornstein-Uhlenbeck process with a forward bias."""

    name = "random"

    def __init__(self) -> None:
        self._rng = np.random.default_rng(0)
        self._a = np.zeros(2)

    def reset(self, rng: np.random.Generator) -> None:
        self._rng = rng
        self._a = np.zeros(2)

    def act(self, s: NavState) -> np.ndarray:
        self._a += 0.15 * (np.array([0.3, 0.0]) - self._a) + 0.3 * self._rng.normal(size=2)
        return np.clip(self._a, -1.0, 1.0).astype(np.float32)


class NoisyPolicy:
    """Per episode: an expert with a random caution level and action noise."""

    name = "noisy"

    def __init__(self) -> None:
        self._inner = ExpertPolicy("noisy", 0.5, 0.4)

    def reset(self, rng: np.random.Generator) -> None:
        self._inner = ExpertPolicy("noisy", float(rng.uniform(0.0, 1.0)), float(rng.uniform(0.25, 0.6)))
        self._inner.reset(rng)

    def act(self, s: NavState) -> np.ndarray:
        return self._inner.act(s)


class MixedPolicy:
    """One component policy per episode; ``name`` is the current component's (for labelling)."""

    def __init__(self) -> None:
        self._components = {k: make_policy(k) for k in MIX_WEIGHTS}
        self._current = self._components["careful"]

    @property
    def name(self) -> str:
        return self._current.name

    def reset(self, rng: np.random.Generator) -> None:
        names = list(MIX_WEIGHTS)
        p = np.array([MIX_WEIGHTS[k] for k in names])
        self._current = self._components[names[int(rng.choice(len(names), p=p / p.sum()))]]
        self._current.reset(rng)

    def act(self, s: NavState) -> np.ndarray:
        return self._current.act(s)


Policy = ExpertPolicy | RandomPolicy | NoisyPolicy | MixedPolicy


def make_policy(name: str) -> Policy:
    """A scripted policy by name (one of ``POLICIES``); call ``reset(rng)`` before each episode."""
    if name == "careful":
        return ExpertPolicy("careful", 1.0)
    if name == "reckless":
        return ExpertPolicy("reckless", 0.0)
    if name == "noisy":
        return NoisyPolicy()
    if name == "random":
        return RandomPolicy()
    if name == "mixed":
        return MixedPolicy()
    raise ValueError(f"unknown policy {name!r}: use one of {POLICIES}")
