"""Cost-to-go fields on a grid, for the scripted experts (privileged planning, not learning).

The arena is cut into ``CELL``-sized cells; solids (pillars, wrong buttons) block, hazards add a
per-metre penalty scaled by the expert's caution, and a value-iteration sweep (vectorised over
the 8 neighbour shifts) gives every cell its cheapest cost to the goal. Following the field
around the robot steers around hazards without the dead ends of a potential field.
"""

from __future__ import annotations

import math

import numpy as np

from reachsafe.sim_bridge.env import NavState
from reachsafe.sim_bridge.layout import ROBOT_RADIUS

CELL = 0.1
HAZARD_PENALTY = 40.0  # extra cost per metre inside an inflated hazard at caution 1
HAZARD_MARGIN = 0.12  # metres of clearance the careful expert keeps from a hazard's edge
_SHIFTS = [(dx, dy) for dx in (-1, 0, 1) for dy in (-1, 0, 1) if dx or dy]


class CostToGo:
    def __init__(self, s: NavState, caution: float) -> None:
        self.half = s.arena_half
        self.n = int(math.ceil(2 * self.half / CELL))
        centres = -self.half + (np.arange(self.n) + 0.5) * CELL
        self.xs, self.ys = np.meshgrid(centres, centres, indexing="ij")
        pts = np.stack([self.xs, self.ys], axis=-1)
        step_cost = np.ones((self.n, self.n))
        for c, r in zip(s.hazards, s.hazard_radii, strict=True):
            inside = np.linalg.norm(pts - c, axis=-1) < r + HAZARD_MARGIN
            step_cost[inside] += HAZARD_PENALTY * caution
        near_wall = np.maximum(np.abs(self.xs), np.abs(self.ys)) > self.half - ROBOT_RADIUS - 0.05
        step_cost[near_wall] += 2.0
        for c, r in zip(s.obstacles, s.obstacle_radii, strict=True):
            step_cost[np.linalg.norm(pts - c, axis=-1) < r + ROBOT_RADIUS + 0.08] = np.inf
        self.value = self._solve(step_cost, self.cell_of(s.goal_xy))

    def cell_of(self, xy: np.ndarray) -> tuple[int, int]:
        i = np.clip(((np.asarray(xy) + self.half) / CELL).astype(int), 0, self.n - 1)
        return int(i[0]), int(i[1])

    def _solve(self, step_cost: np.ndarray, goal: tuple[int, int]) -> np.ndarray:
        value = np.full((self.n + 2, self.n + 2), np.inf)  # padded by one cell of +inf
        cost = np.full_like(value, np.inf)
        cost[1:-1, 1:-1] = step_cost
        value[goal[0] + 1, goal[1] + 1] = 0.0
        for _ in range(4 * self.n):
            best = value[1:-1, 1:-1].copy()
            for dx, dy in _SHIFTS:
                nb = value[1 + dx : self.n + 1 + dx, 1 + dy : self.n + 1 + dy]
                nb_cost = cost[1 + dx : self.n + 1 + dx, 1 + dy : self.n + 1 + dy]
                edge = CELL * math.hypot(dx, dy) * 0.5 * (cost[1:-1, 1:-1] + nb_cost)
                np.minimum(best, nb + edge, out=best)
            if np.array_equal(best, value[1:-1, 1:-1]):
                break
            value[1:-1, 1:-1] = best
        return value[1:-1, 1:-1]

    def waypoint(self, xy: np.ndarray, radius: float = 0.3) -> np.ndarray:
        """The centre of the cheapest cell within ``radius`` of ``xy``: where to head next."""
        d2 = (self.xs - xy[0]) ** 2 + (self.ys - xy[1]) ** 2
        masked = np.where(d2 <= radius**2, self.value, np.inf)
        i, j = np.unravel_index(int(np.argmin(masked)), masked.shape)
        return np.array([self.xs[i, j], self.ys[i, j]])
