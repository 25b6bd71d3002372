"""Scripted behaviour policies with privileged state, for datasets that span the reward-cost plane.

- ``careful``: follows a cost-to-go field (``sim_bridge.planner``) that keeps clear of hazards and solids.
- ``reckless``: the same controller with hazards ignored, so it cuts straight through them.
- ``noisy``: a random caution level (mostly low) and Gaussian action noise, per episode.
- ``random``: smooth random actions (an Ornstein-Uhlenbeck process).
- ``mixed``: one of the above per episode (weights ``MIX_WEIGHTS``).
Every policy draws randomness only from the generator given to ``reset``.
"""

from __future__ import annotations

import math

import numpy as np

from sim_bridge.env import NavState
from sim_bridge.planner import CostToGo

POLICIES: tuple[str, ...] = ("careful", "reckless", "noisy", "random", "mixed")
MIX_WEIGHTS: dict[str, float] = {"careful": 0.35, "reckless": 0.25, "noisy": 0.25, "random": 0.15}
_LOOKAHEAD = 0.15  # metres ahead the careful expert checks for a hazard before moving on
_DIRECT = 0.4  # within this distance of the goal, head straight for it


def _wrap(a: float) -> float:
    return (a + math.pi) % (2 * math.pi) - math.pi


class ExpertPolicy:
    """Follows a cost-to-go field to the goal; ``caution`` in [0, 1] scales the hazard penalty
    (1: go around hazards, 0: straight through them). Solids are always avoided."""

    def __init__(self, name: str, caution: float, noise: float = 0.0) -> None:
        self.name = name
        self.caution = caution
        self.noise = noise
        self._rng = np.random.default_rng(0)
        self._field: CostToGo | None = None
        self._field_key: bytes = b""

    def reset(self, rng: np.random.Generator) -> None:
        self._rng = rng
        self._field = None
        self._field_key = b""

    def _plan(self, s: NavState) -> CostToGo:
        key = s.goal_xy.tobytes() + s.hazards.tobytes() + s.obstacles.tobytes()
        if self._field is None or key != self._field_key:
            self._field, self._field_key = CostToGo(s, self.caution), key
        return self._field

    def _hazard_ahead(self, s: NavState) -> bool:
        ahead = s.xy + _LOOKAHEAD * np.array([math.cos(s.yaw), math.sin(s.yaw)])
        return bool(np.any(np.linalg.norm(s.hazards - ahead, axis=1) < s.hazard_radii))

    def act(self, s: NavState) -> np.ndarray:
        if np.linalg.norm(s.goal_xy - s.xy) < _DIRECT:
            target = s.goal_xy
        else:
            target = self._plan(s).waypoint(s.xy)
        rel = target - s.xy
        err = _wrap(math.atan2(rel[1], rel[0]) - s.yaw)
        turn = float(np.clip(2.0 * err, -1.0, 1.0))
        forward = float(np.clip(math.cos(err), 0.0, 1.0))
        if self.caution > 0.5 and len(s.hazards) and self._hazard_ahead(s):
            forward = 0.0  # turn in place rather than roll into a hazard
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
        # caution ~ U(0,1)^3: most noisy episodes lean reckless, so costs spread between the experts
        self._inner = ExpertPolicy("noisy", float(rng.uniform(0.0, 1.0) ** 3), float(rng.uniform(0.25, 0.6)))
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
