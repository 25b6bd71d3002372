"""The low-dimensional ``state`` observation: lidar-like readings in the robot frame.

Like Safety-Gymnasium's pseudo-lidar: each object group gets ``LIDAR_BINS`` angular bins around
the robot, a bin holds max(exp(-distance)) of the objects in it, so 1 means touching, 0 far.
"""

from __future__ import annotations

import numpy as np

LIDAR_BINS = 16
STATE_DIM = 3 * LIDAR_BINS + 2  # goal, hazard, obstacle lidars + (forward speed, turn rate)


def lidar(points: np.ndarray, xy: np.ndarray, yaw: float, offsets: np.ndarray | float = 0.0) -> np.ndarray:
    """Bins of exp(-d) for ``points`` (N, 2); ``offsets`` are subtracted from distances (radii)."""
    out = np.zeros(LIDAR_BINS, dtype=np.float32)
    if len(points) == 0:
        return out
    rel = points - xy
    d = np.maximum(np.linalg.norm(rel, axis=1) - offsets, 0.0)
    ang = (np.arctan2(rel[:, 1], rel[:, 0]) - yaw) % (2 * np.pi)
    bins = (ang / (2 * np.pi) * LIDAR_BINS).astype(int) % LIDAR_BINS
    np.maximum.at(out, bins, np.exp(-d).astype(np.float32))
    return out


def wall_points(xy: np.ndarray, half: float) -> np.ndarray:
    """The nearest point on each of the four walls."""
    x, y = float(xy[0]), float(xy[1])
    return np.array([[half, y], [-half, y], [x, half], [x, -half]])


def state_vector(
    xy: np.ndarray,
    yaw: float,
    velocity: np.ndarray,
    goal_xy: np.ndarray,
    goal_visibility: float,
    hazards: np.ndarray,
    hazard_radii: np.ndarray,
    obstacles: np.ndarray,
    obstacle_radii: np.ndarray,
    half: float,
) -> np.ndarray:
    goal = lidar(goal_xy[None, :], xy, yaw) * np.float32(goal_visibility)
    haz = lidar(hazards, xy, yaw, hazard_radii)
    obs_pts = np.concatenate([obstacles.reshape(-1, 2), wall_points(xy, half)])
    obs_off = np.concatenate([obstacle_radii, np.zeros(4)])
    obst = lidar(obs_pts, xy, yaw, obs_off)
    return np.concatenate([goal, haz, obst, velocity.astype(np.float32)]).astype(np.float32)
