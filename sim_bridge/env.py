"""``SafeNavEnv``: the gymnasium env behind every reachsafe task.

A differential-drive robot moved kinematically (forward speed, turn rate) with 2-D collision
handling against walls, pillars and buttons; PyBullet only draws the egocentric camera.
Reward = progress toward the goal (metres) + ``GOAL_BONUS`` on reaching it, after which a new
goal appears; ``info["cost"]`` = 1 for a step that ends or passes inside a hazard, touches a pillar
or a wrong button, else 0. Episodes never terminate early; they truncate after ``episode_steps``.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

from reachsafe.sim_bridge.layout import (
    BUTTON_RADIUS,
    GOAL_RADIUS,
    PILLAR_RADIUS,
    ROBOT_RADIUS,
    next_goal,
    sample_layout,
)
from reachsafe.sim_bridge.scene import CAMERA_FOV_DEG, Scene
from reachsafe.sim_bridge.sensors import STATE_DIM, state_vector
from reachsafe.sim_bridge.tasks import jitter_palette, task_spec

log = logging.getLogger(__name__)

OBS_MODES = ("image", "state", "both")
CONTROL_HZ = 20.0  # env steps per second of simulated time
MAX_SPEED = 1.0  # m/s at action[0] = 1
MAX_TURN = 2.5  # rad/s at action[1] = 1
GOAL_BONUS = 1.0
BUTTON_COOLDOWN = 10  # steps after a correct press in which touching *that* button costs nothing
SIGHT_RANGE = 6.0
_PALETTE_STREAM = 0x9A1E77E  # second seed word of the palette generator, apart from the layouts' stream


#: the attributes of a SafeNavEnv that make up where an episode stands (``snapshot``/``restore``)
_EPISODE_STATE = (
    "task_id", "split", "_layout", "_xy", "_yaw", "_velocity", "_steps", "_prev_dist", "_goals", "_seen_at",
    "_cooldown", "_pressed", "_np_random", "_palette_rng", "_palette",
)  # fmt: skip


@dataclass(frozen=True)
class EnvSnapshot:
    """An opaque copy of a SafeNavEnv's episode state (:meth:`SafeNavEnv.snapshot`)."""

    state: dict[str, Any]


@dataclass(frozen=True)
class NavState:
    """Privileged ground truth for scripted policies and drawing (not an observation)."""

    xy: np.ndarray
    yaw: float
    goal_xy: np.ndarray
    hazards: np.ndarray
    hazard_radii: np.ndarray
    obstacles: np.ndarray  # pillars and wrong buttons: solid, costly to touch
    obstacle_radii: np.ndarray
    arena_half: float


def _wrap(a: float) -> float:
    return (a + math.pi) % (2 * math.pi) - math.pi


def in_fov(xy: np.ndarray, yaw: float, point: np.ndarray) -> bool:
    """Whether ``point``'s bearing is inside the camera's horizontal field of view (at any range)."""
    rel = point - xy
    return abs(_wrap(math.atan2(rel[1], rel[0]) - yaw)) < math.radians(CAMERA_FOV_DEG) / 2


def goal_in_view(xy: np.ndarray, yaw: float, goal_xy: np.ndarray) -> bool:
    """Whether the goal is inside the camera's horizontal field of view and within ``SIGHT_RANGE``."""
    return in_fov(xy, yaw, goal_xy) and bool(np.hypot(*(goal_xy - xy)) < SIGHT_RANGE)


class SafeNavEnv(gym.Env):
    """One SafeNav task on one split; ``palette`` (a split name) repaints the split's world with that
    split's colours (default: its own), see :meth:`reachsafe.sim_bridge.tasks.TaskSpec.params`.

    ``palette_jitter`` > 0 randomises the colours every episode (:func:`reachsafe.sim_bridge.tasks.jitter_palette`
    at that strength), from a generator of its own seeded by ``reset(seed=…)``: the layouts, and so a
    scripted expert's actions, are the ones the same seed gives without it.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": int(CONTROL_HZ)}

    def __init__(
        self,
        task_id: str = "reachsafe/SafeGoal1-v0",
        split: str = "train",
        obs_mode: str = "image",
        image_size: int = 64,
        episode_steps: int = 300,
        action_repeat: int = 2,
        render_mode: str | None = None,
        palette: str | None = None,
        palette_jitter: float = 0.0,
    ) -> None:
        if obs_mode not in OBS_MODES:
            raise ValueError(f"obs_mode {obs_mode!r} is not one of {OBS_MODES}")
        if not 0.0 <= palette_jitter <= 1.0:
            raise ValueError(f"palette_jitter must lie in [0, 1], got {palette_jitter}")
        self.spec_ = task_spec(task_id)
        self.task_id = task_id
        self.split = split
        self.params = self.spec_.params(split, palette)
        self.obs_mode = obs_mode
        self.image_size = image_size
        self.episode_steps = episode_steps
        self.action_repeat = action_repeat
        self.render_mode = render_mode
        self.control_hz = CONTROL_HZ
        self._dt = 1.0 / (CONTROL_HZ * action_repeat)

        image_space = gym.spaces.Box(0, 255, (image_size, image_size, 3), np.uint8)
        state_space = gym.spaces.Box(-1.0, 1.0, (STATE_DIM,), np.float32)
        self.observation_space = {
            "image": image_space,
            "state": state_space,
            "both": gym.spaces.Dict({"image": image_space, "state": state_space}),
        }[obs_mode]
        self.action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)

        self.palette_jitter = palette_jitter
        self._palette_rng = np.random.default_rng()
        self._palette = self.params.palette
        self._scene = Scene(self.params, image_size, repaintable=palette_jitter > 0)
        self._layout = sample_layout(np.random.default_rng(0), self.params)
        self._xy = np.zeros(2)
        self._yaw = 0.0
        self._velocity = np.zeros(2, dtype=np.float32)
        self._steps = 0
        self._prev_dist = 0.0
        self._goals = 0
        self._seen_at: int | None = None
        self._cooldown = 0
        self._pressed: int | None = None  # the button just pressed (still under the robot)

    # -- gymnasium API --------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict]:
        super().reset(seed=seed)
        if self.palette_jitter > 0:
            if seed is not None:
                self._palette_rng = np.random.default_rng([seed, _PALETTE_STREAM])
            self._palette = jitter_palette(self.params.palette, self._palette_rng, self.palette_jitter)
            self._scene.repaint(self._palette)
        self._layout = sample_layout(self.np_random, self.params)
        self._scene.load_layout(self._layout)
        self._xy = self._layout.start_xy.astype(np.float64).copy()
        self._yaw = float(self._layout.start_yaw)
        self._velocity[:] = 0.0
        self._steps = 0
        self._goals = 0
        self._cooldown = 0
        self._pressed = None
        self._new_goal_started()
        return self._observe(), {"cost": 0.0, "goals_reached": 0}

    def step(self, action: np.ndarray) -> tuple[Any, float, bool, bool, dict]:
        a = np.clip(np.asarray(action, dtype=np.float64).reshape(2), -1.0, 1.0)
        v, w = a[0] * MAX_SPEED, a[1] * MAX_TURN
        in_hazard = collided = at_wall = False
        for _ in range(self.action_repeat):
            self._yaw = _wrap(self._yaw + w * self._dt)
            self._xy += v * self._dt * np.array([math.cos(self._yaw), math.sin(self._yaw)])
            touched_solid, touched_wall = self._resolve_collisions()
            collided |= touched_solid
            at_wall |= touched_wall
            in_hazard |= self.in_hazard()
        self._velocity[:] = a
        self._steps += 1
        self._cooldown = max(0, self._cooldown - 1)

        dist = float(np.linalg.norm(self._layout.goal_xy - self._xy))
        reward = self._prev_dist - dist
        goal_met = dist < self._reach_distance()
        if goal_met:
            reward += GOAL_BONUS
            self._goals += 1
            self._cooldown = BUTTON_COOLDOWN  # the pressed button turns wrong under the robot
            self._pressed = self._layout.goal_button
            next_goal(self.np_random, self.params, self._layout, self._xy)
            self._new_goal_started()
        else:
            self._prev_dist = dist
        cost = float(in_hazard or collided)
        truncated = self._steps >= self.episode_steps
        info = {
            "cost": cost,
            "cost_hazard": float(in_hazard),
            "cost_collision": float(collided),
            "at_wall": at_wall,
            "goal_met": goal_met,
            "goals_reached": self._goals,
        }
        return self._observe(), float(reward), False, truncated, info

    def render(self) -> np.ndarray | None:
        if self.render_mode != "rgb_array":
            return None
        self._sync_scene(self.goal_visibility())
        return self._scene.top_down()

    def close(self) -> None:
        self._scene.close()

    # -- ground truth and manual placement (policies, tests, drawing) ----------------------
    def nav_state(self) -> NavState:
        lay = self._layout
        wrong = [b for i, b in enumerate(lay.buttons) if i != lay.goal_button]
        obstacles = np.concatenate([lay.pillars.reshape(-1, 2), np.array(wrong).reshape(-1, 2)])
        radii = np.concatenate([np.full(len(lay.pillars), PILLAR_RADIUS), np.full(len(wrong), BUTTON_RADIUS)])
        return NavState(
            xy=self._xy.copy(),
            yaw=self._yaw,
            goal_xy=lay.goal_xy.copy(),
            hazards=lay.hazards.copy(),
            hazard_radii=lay.hazard_radii.copy(),
            obstacles=obstacles,
            obstacle_radii=radii,
            arena_half=self.params.arena_half,
        )

    def place_robot(self, xy: np.ndarray, yaw: float) -> None:
        """Put the robot somewhere by hand (tests, demos); progress is measured from there."""
        self._xy = np.asarray(xy, dtype=np.float64).copy()
        self._yaw = float(yaw)
        self._prev_dist = float(np.linalg.norm(self._layout.goal_xy - self._xy))

    def snapshot(self) -> EnvSnapshot:
        """Everything a step depends on, copied: :meth:`restore` on this env or on another one of the
        same task and split continues the episode exactly from here (the trainer's selection probe
        branches an evaluation episode this way)."""
        return EnvSnapshot(copy.deepcopy({k: getattr(self, k) for k in _EPISODE_STATE}))

    def restore(self, snap: EnvSnapshot) -> Any:
        """Continue from ``snap`` (a :meth:`snapshot` of an env of the same task and split); returns
        the observation there."""
        state = copy.deepcopy(snap.state)
        if state["task_id"] != self.task_id or state["split"] != self.split:
            raise ValueError(
                f"a snapshot of {state['task_id']} ({state['split']}) cannot be restored into "
                f"{self.task_id} ({self.split})"
            )
        for k, v in state.items():
            setattr(self, k, v)
        self._scene.load_layout(self._layout)
        if self.palette_jitter > 0:
            self._scene.repaint(self._palette)
        return self._observe()

    def in_hazard(self) -> bool:
        d = np.linalg.norm(self._layout.hazards - self._xy, axis=1)
        return bool(np.any(d < self._layout.hazard_radii))

    def goal_visibility(self) -> float:
        if self.params.fade_steps <= 0 or self._seen_at is None:
            return 1.0
        return float(np.clip(1.0 - (self._steps - self._seen_at) / self.params.fade_steps, 0.0, 1.0))

    # -- internals ------------------------------------------------------------------------
    def _reach_distance(self) -> float:
        return ROBOT_RADIUS + BUTTON_RADIUS + 0.05 if self.params.n_buttons else GOAL_RADIUS

    def _new_goal_started(self) -> None:
        self._prev_dist = float(np.linalg.norm(self._layout.goal_xy - self._xy))
        self._seen_at = None

    def _resolve_collisions(self) -> tuple[bool, bool]:
        """Push the robot out of walls and solid objects; (touched a costly one, touched a wall)."""
        lim = self.params.arena_half - ROBOT_RADIUS
        touched_wall = bool(np.any(np.abs(self._xy) > lim))
        np.clip(self._xy, -lim, lim, out=self._xy)  # walls stop the robot but cost nothing
        lay = self._layout
        solids = [(p, PILLAR_RADIUS, True) for p in lay.pillars]
        solids += [
            (b, BUTTON_RADIUS, i != lay.goal_button and not (self._cooldown and i == self._pressed))
            for i, b in enumerate(lay.buttons)
        ]
        touched = False
        for centre, radius, costly in solids:
            rel = self._xy - centre
            d = float(np.hypot(rel[0], rel[1]))
            if d < ROBOT_RADIUS + radius:
                self._xy = centre + rel / max(d, 1e-9) * (ROBOT_RADIUS + radius + 1e-6)
                touched |= costly
        return touched, touched_wall

    def _update_fading(self) -> float:
        if self.params.fade_steps > 0 and self._seen_at is None:
            if goal_in_view(self._xy, self._yaw, self._layout.goal_xy):
                self._seen_at = self._steps
        return self.goal_visibility()

    def _sync_scene(self, visibility: float) -> None:
        self._scene.set_goal(self._layout, visibility)
        self._scene.set_robot(self._xy, self._yaw)

    def _observe(self) -> Any:
        visibility = self._update_fading()
        obs: dict[str, np.ndarray] = {}
        if self.obs_mode in ("image", "both"):
            self._sync_scene(visibility)
            obs["image"] = self._scene.camera(self._xy, self._yaw)
        if self.obs_mode in ("state", "both"):
            ns = self.nav_state()
            obs["state"] = state_vector(
                ns.xy,
                ns.yaw,
                self._velocity,
                ns.goal_xy,
                visibility,
                ns.hazards,
                ns.hazard_radii,
                ns.obstacles,
                ns.obstacle_radii,
                ns.arena_half,
            )
        return obs if self.obs_mode == "both" else obs[self.obs_mode]
