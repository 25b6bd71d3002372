"""The PyBullet scene: builds the bodies once per env and renders the egocentric camera.

The robot is driven kinematically (see ``sim_bridge.kinematics``), so PyBullet is used only to
draw the world: bodies are created once with the maximum counts of the split and moved on reset.
Each scene owns its own DIRECT client, so several envs can live in one process (the server).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import functools
import math
import os
import sys
from typing import Any

import numpy as np


@contextlib.contextmanager
def _stdout_to_stderr():
    """PyBullet's C code prints a build banner on stdout at import; keep stdout for our output
    (``sim collect`` prints its statistics there as JSON)."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        sys.stdout.flush()
        ctypes.CDLL(None).fflush(None)  # C stdio buffers the banner when stdout is a pipe
        os.dup2(saved, 1)
        os.close(saved)


with _stdout_to_stderr():
    import pybullet

from reachsafe.sim_bridge.layout import BUTTON_RADIUS, PILLAR_RADIUS, ROBOT_RADIUS, Layout  # noqa: E402
from reachsafe.sim_bridge.tasks import Colour, LayoutParams, Palette  # noqa: E402

CAMERA_FOV_DEG = 90.0
CAMERA_HEIGHT = 0.18
_HIDDEN = (0.0, 0.0, -20.0)
_GOAL_HEIGHT = 0.6
_WALL_HEIGHT = 0.4
_UNIT_QUAT = (0.0, 0.0, 0.0, 1.0)


class _Client:
    """pybullet calls bound to one DIRECT client (like pybullet_utils' BulletClient, which passes an
    ``options`` string to ``connect`` that makes pybullet print ``argv[0]=`` on stdout)."""

    def __init__(self) -> None:
        self.cid = pybullet.connect(pybullet.DIRECT)

    def __getattr__(self, name: str) -> Any:
        return functools.partial(getattr(pybullet, name), physicsClientId=self.cid)

    def disconnect(self) -> None:
        pybullet.disconnect(physicsClientId=self.cid)


def _rgba(c: Colour, a: float = 1.0) -> list[float]:
    return [c[0], c[1], c[2], a]


class Scene:
    """``repaintable``: also build the floor grid when the palette has none, so that :meth:`repaint`
    can show it (domain randomisation of the colours)."""

    def __init__(self, params: LayoutParams, image_size: int = 64, repaintable: bool = False) -> None:
        self.params = params
        self.image_size = image_size
        self._pb = _Client()
        self._closed = False
        self._heights: dict[int, float] = {}
        pal = params.palette
        half = params.arena_half
        self._floor = self._box((half + 0.5, half + 0.5, 0.01), (0, 0, -0.01), pal.floor)  # past the walls
        self._lines: list[tuple[int, tuple[float, float, float]]] = []
        if pal.floor_lines is not None or repaintable:  # shown or hidden by repaint() below
            for k in np.arange(-half + 0.5, half, 0.5):
                for ext, pos in (
                    ((0.01, half, 0.001), (k, 0, 0.0005)),
                    ((half, 0.01, 0.001), (0, k, 0.0005)),
                ):
                    self._lines.append((self._box(ext, pos, pal.floor), pos))
        self._walls = []
        for sx, sy in ((1, 0), (-1, 0), (0, 1), (0, -1)):
            ext = (0.05, half + 0.05, _WALL_HEIGHT / 2) if sx else (half + 0.05, 0.05, _WALL_HEIGHT / 2)
            self._walls.append(
                self._box(ext, (sx * (half + 0.05), sy * (half + 0.05), _WALL_HEIGHT / 2), pal.wall)
            )
        # one disc per fixed radius; a layout assigns each hazard position a disc of its radius
        self.hazard_radii = params.hazard_radii
        self.hazards = [self._cylinder(float(r), 0.002, pal.hazard) for r in self.hazard_radii]
        self.pillars = [self._cylinder(PILLAR_RADIUS, 0.5, pal.pillar) for _ in range(params.n_pillars)]
        self.buttons = [self._cylinder(BUTTON_RADIUS, 0.1, pal.button) for _ in range(params.n_buttons)]
        self.goal = -1 if params.n_buttons else self._cylinder(0.12, _GOAL_HEIGHT, pal.goal)
        self.robot = self._cylinder(ROBOT_RADIUS, 0.12, (0.85, 0.15, 0.15))
        self.repaint(pal)
        self._hazard_shapes: list[int] = []
        self._goal_alpha = -1.0
        self._lit_button = -1
        self._proj = self._pb.computeProjectionMatrixFOV(CAMERA_FOV_DEG, 1.0, 0.03, 15.0)

    # -- building -------------------------------------------------------------------------
    def _body(self, visual: int, pos: tuple[float, float, float]) -> int:
        return self._pb.createMultiBody(baseMass=0, baseVisualShapeIndex=visual, basePosition=pos)

    def _box(self, half_ext: tuple[float, float, float], pos: tuple[float, float, float], c: Colour) -> int:
        vis = self._pb.createVisualShape(pybullet.GEOM_BOX, halfExtents=half_ext, rgbaColor=_rgba(c))
        return self._body(vis, pos)

    def _cylinder(self, radius: float, height: float, c: Colour) -> int:
        vis = self._pb.createVisualShape(
            pybullet.GEOM_CYLINDER, radius=radius, length=height, rgbaColor=_rgba(c)
        )
        body = self._body(vis, _HIDDEN)
        self._heights[body] = height
        return body

    def _place(self, body: int, xy: np.ndarray, z_base: float = 0.0) -> None:
        z = z_base + self._heights[body] / 2
        self._pb.resetBasePositionAndOrientation(body, (float(xy[0]), float(xy[1]), z), _UNIT_QUAT)

    # -- updating -------------------------------------------------------------------------
    def repaint(self, palette: Palette) -> None:
        """Recolour every body; the floor grid shows only where ``palette`` has one (build the scene
        ``repaintable`` to add a grid the split's own palette lacks). Call :meth:`load_layout` next: it
        recolours the goal and the buttons."""
        if palette.floor_lines is not None and not self._lines:
            raise ValueError("this scene has no floor grid to show: build it with repaintable=True")
        self.params = dataclasses.replace(self.params, palette=palette)
        paint = [(self._floor, palette.floor), *((b, palette.wall) for b in self._walls)]
        paint += [(b, palette.hazard) for b in self.hazards] + [(b, palette.pillar) for b in self.pillars]
        paint += [(b, palette.button) for b in self.buttons]
        for body, colour in paint:
            self._pb.changeVisualShape(body, -1, rgbaColor=_rgba(colour))
        for body, pos in self._lines:
            if palette.floor_lines is None:
                self._pb.resetBasePositionAndOrientation(body, _HIDDEN, _UNIT_QUAT)
            else:
                self._pb.resetBasePositionAndOrientation(body, pos, _UNIT_QUAT)
                self._pb.changeVisualShape(body, -1, rgbaColor=_rgba(palette.floor_lines))

    def load_layout(self, layout: Layout) -> None:
        free = list(range(len(self.hazards)))
        for xy, r in zip(layout.hazards, layout.hazard_radii, strict=True):
            slot = next(i for i in free if self.hazard_radii[i] == r)
            free.remove(slot)
            self._place(self.hazards[slot], xy, 0.001)
        for body, xy in zip(self.pillars, layout.pillars, strict=True):
            self._place(body, xy)
        for body, xy in zip(self.buttons, layout.buttons, strict=True):
            self._place(body, xy)
        self._goal_alpha = -1.0
        self._lit_button = -1
        self.set_goal(layout, 1.0)

    def set_goal(self, layout: Layout, visibility: float) -> None:
        """Show the goal; ``visibility`` in [0, 1] blends its colour into the floor (fading tasks)."""
        pal = self.params.palette
        if self.buttons:
            if layout.goal_button != self._lit_button:
                for i, body in enumerate(self.buttons):
                    colour = pal.goal if i == layout.goal_button else pal.button
                    self._pb.changeVisualShape(body, -1, rgbaColor=_rgba(colour))
                self._lit_button = layout.goal_button
            return
        if visibility <= 0.0:
            self._pb.resetBasePositionAndOrientation(self.goal, _HIDDEN, _UNIT_QUAT)
        else:
            self._place(self.goal, layout.goal_xy)
        if visibility != self._goal_alpha:
            mix = tuple(
                visibility * g + (1 - visibility) * f for g, f in zip(pal.goal, pal.floor, strict=True)
            )
            self._pb.changeVisualShape(self.goal, -1, rgbaColor=_rgba(mix))  # type: ignore[arg-type]
            self._goal_alpha = visibility

    def set_robot(self, xy: np.ndarray, yaw: float) -> None:
        quat = self._pb.getQuaternionFromEuler((0.0, 0.0, yaw))
        self._pb.resetBasePositionAndOrientation(self.robot, (float(xy[0]), float(xy[1]), 0.06), quat)

    # -- rendering ------------------------------------------------------------------------
    def _render(self, size: int, view: list[float], proj: list[float]) -> np.ndarray:
        _, _, rgba, _, _ = self._pb.getCameraImage(
            size,
            size,
            viewMatrix=view,
            projectionMatrix=proj,
            renderer=pybullet.ER_TINY_RENDERER,
            flags=pybullet.ER_NO_SEGMENTATION_MASK,
            shadow=0,
        )
        return np.asarray(rgba, dtype=np.uint8).reshape(size, size, 4)[:, :, :3].copy()

    def camera(self, xy: np.ndarray, yaw: float) -> np.ndarray:
        """The egocentric RGB frame, uint8 (S, S, 3), from just in front of the robot body."""
        c, s = math.cos(yaw), math.sin(yaw)
        eye = (
            float(xy[0]) + c * (ROBOT_RADIUS + 0.01),
            float(xy[1]) + s * (ROBOT_RADIUS + 0.01),
            CAMERA_HEIGHT,
        )
        target = (eye[0] + c, eye[1] + s, CAMERA_HEIGHT - 0.35)
        view = self._pb.computeViewMatrix(eye, target, (0.0, 0.0, 1.0))
        return self._render(self.image_size, view, self._proj)

    def top_down(self, size: int = 256) -> np.ndarray:
        """A top-down RGB view of the whole arena (for animations and ``render()``)."""
        half = self.params.arena_half + 0.15
        view = self._pb.computeViewMatrix((0.0, 0.0, 10.0), (0.0, 0.0, 0.0), (0.0, 1.0, 0.0))
        k = 1.0 / 10.0  # frustum edges at the near plane (1 m) for +-half at the floor (10 m)
        proj = self._pb.computeProjectionMatrix(-half * k, half * k, -half * k, half * k, 1.0, 20.0)
        return self._render(size, view, proj)

    def close(self) -> None:
        if not self._closed:
            self._pb.disconnect()
            self._closed = True
