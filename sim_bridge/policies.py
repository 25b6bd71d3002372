"""Scripted behaviour policies with privileged state, for datasets that span the reward-cost plane.

- ``careful``: follows a cost-to-go field (``reachsafe.sim_bridge.planner``) that keeps clear of hazards and solids.
- ``reckless``: the same controller with hazards ignored, so it cuts straight through them.
- ``noisy``: a random caution level (mostly low) and Gaussian action noise, per episode.
- ``random``: smooth random actions (an Ornstein-Uhlenbeck process).
- ``mixed``: one of the above per episode (weights ``MIX_WEIGHTS``).
Every policy draws randomness only from the generator given to ``reset``.

The experts (all but ``random``) *search* by default: while the next waypoint of their plan (the goal
itself when nothing is in the way) lies outside the camera's field of view, they turn left in place
(plus their noise) instead of steering by the privileged map. A
vision policy cloned from them sees a frame without the goal and an action it can infer from that frame;
without search the same goal-less frames come with actions that depend on where the unseen goal is, which
averages out to driving forward, and the cloned policy ends up pressed against the arena wall.
"""

from __future__ import annotations

import math

import numpy as np

from reachsafe.sim_bridge.env import NavState, in_fov
from reachsafe.sim_bridge.planner import CostToGo

POLICIES: tuple[str, ...] = ("careful", "reckless", "noisy", "random", "mixed")
MIX_WEIGHTS: dict[str, float] = {"careful": 0.35, "reckless": 0.25, "noisy": 0.25, "random": 0.15}
_LOOKAHEAD = 0.15  # metres ahead the careful expert checks for a hazard before moving on
_DIRECT = 0.4  # within this distance of the goal, head straight for it


def _wrap(a: float) -> float:
    return (a + math.pi) % (2 * math.pi) - math.pi


class ExpertPolicy:
    """Follows a cost-to-go field to the goal; ``caution`` in [0, 1] scales the hazard penalty
    (1: go around hazards, 0: straight through them). Solids are always avoided. With ``search``,
    it turns left in place while its target (the next waypoint, or the goal when close) is outside the
    camera's field of view, and steers only towards a target in view. Steering centres the target, so
    the two never undo each other (keying on the goal instead loops at the edge of the view whenever a
    detour's waypoint lies on the other side)."""

    def __init__(self, name: str, caution: float, noise: float = 0.0, search: bool = True) -> None:
        self.name = name
        self.caution = caution
        self.noise = noise
        self.search = search
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

    def _target(self, s: NavState) -> np.ndarray:
        """The goal when close, else the next waypoint of the cost-to-go field."""
        if np.linalg.norm(s.goal_xy - s.xy) < _DIRECT:
            return s.goal_xy
        return self._plan(s).waypoint(s.xy)

    def _steer(self, s: NavState, target: np.ndarray) -> tuple[float, float]:
        """(forward, turn) towards ``target``."""
        rel = target - s.xy
        err = _wrap(math.atan2(rel[1], rel[0]) - s.yaw)
        turn = float(np.clip(2.0 * err, -1.0, 1.0))
        forward = float(np.clip(math.cos(err), 0.0, 1.0))
        if self.caution > 0.5 and len(s.hazards) and self._hazard_ahead(s):
            forward = 0.0  # turn in place rather than roll into a hazard
        return forward, turn

    def act(self, s: NavState) -> np.ndarray:
        target = self._target(s)
        lost = self.search and not in_fov(s.xy, s.yaw, target)
        a = np.array([0.0, 1.0]) if lost else np.array(self._steer(s, target))
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

    def __init__(self, search: bool = True) -> None:
        self.search = search
        self._inner = ExpertPolicy("noisy", 0.5, 0.4, search)

    def reset(self, rng: np.random.Generator) -> None:
        # caution ~ U(0,1)^3: most noisy episodes lean reckless, so costs spread between the experts
        caution, noise = float(rng.uniform(0.0, 1.0) ** 3), float(rng.uniform(0.25, 0.6))
        self._inner = ExpertPolicy("noisy", caution, noise, self.search)
        self._inner.reset(rng)

    def act(self, s: NavState) -> np.ndarray:
        return self._inner.act(s)


class MixedPolicy:
    """One component policy per episode; ``name`` is the current component's (for labelling)."""

    def __init__(self, search: bool = True) -> None:
        self._components = {k: make_policy(k, search) for k in MIX_WEIGHTS}
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


def make_policy(name: str, search: bool = True) -> Policy:
    """A scripted policy by name (one of ``POLICIES``); call ``reset(rng)`` before each episode.
    ``search``: the experts turn in place while their target is out of the camera's view (module docstring)."""
    if name == "careful":
        return ExpertPolicy("careful", 1.0, search=search)
    if name == "reckless":
        return ExpertPolicy("reckless", 0.0, search=search)
    if name == "noisy":
        return NoisyPolicy(search)
    if name == "random":
        return RandomPolicy()
    if name == "mixed":
        return MixedPolicy(search)
    raise ValueError(f"unknown policy {name!r}: use one of {POLICIES}")
