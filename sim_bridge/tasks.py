"""The task table: what each task id and split means, as plain data.

A task fixes the kind of objective (goal, button, fading goal) and how crowded the arena is; a
split changes the world the task is played in (arena size, hazard density and placement,
colours), so that evaluating on ``unseen`` measures generalisation. docs/sim.md describes it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

Kind = Literal["goal", "button", "fading"]
Split = Literal["train", "unseen"]
SPLITS: tuple[str, ...] = ("train", "unseen")
Colour = tuple[float, float, float]


@dataclass(frozen=True)
class Palette:
    floor: Colour
    wall: Colour
    hazard: Colour
    goal: Colour
    pillar: Colour
    button: Colour
    floor_lines: Colour | None  # a grid drawn on the floor (a texture stand-in), or none


@dataclass(frozen=True)
class LayoutParams:
    """Everything needed to build and sample one task world on one split."""

    kind: Kind
    arena_half: float  # the arena is [-arena_half, arena_half]^2 metres
    n_hazards: int
    hazard_radius: tuple[float, float]  # hazard radii are spread evenly over this range
    n_pillars: int  # solid obstacles; touching one costs 1
    n_buttons: int  # button task only: one correct, the others cost 1 when touched
    fade_steps: int  # fading task only: steps after first sight until the goal is invisible
    hazards_on_path: float  # fraction of hazards placed across the robot-goal segment
    palette: Palette

    @property
    def hazard_radii(self) -> np.ndarray:
        """One fixed radius per hazard (evenly spread, to the cm): the scene draws each hazard
        once, and episodes differ in where the hazards are, not in their sizes."""
        return np.round(np.linspace(*self.hazard_radius, self.n_hazards), 2)


@dataclass(frozen=True)
class TaskSpec:
    task_id: str
    description: str
    train: LayoutParams

    def params(self, split: str, palette: str | None = None) -> LayoutParams:
        """The split's world; ``palette`` (a split name) repaints it with that split's colours, which
        separates what a change of appearance costs a policy from what a change of layout does."""
        for name, what in ((split, "split"), (palette, "palette")):
            if name is not None and name not in SPLITS:
                raise ValueError(f"unknown {what} {name!r}: use one of {SPLITS}")
        params = self.train if split == "train" else unseen_variant(self.train)
        if palette is None:
            return params
        return replace(params, palette=TRAIN_PALETTE if palette == "train" else UNSEEN_PALETTE)


TRAIN_PALETTE = Palette(
    floor=(0.80, 0.80, 0.78),
    wall=(0.45, 0.45, 0.50),
    hazard=(0.20, 0.35, 0.90),
    goal=(0.10, 0.80, 0.20),
    pillar=(0.55, 0.35, 0.20),
    button=(0.90, 0.75, 0.10),
    floor_lines=None,
)

UNSEEN_PALETTE = Palette(
    floor=(0.62, 0.55, 0.45),
    wall=(0.30, 0.25, 0.22),
    hazard=(0.35, 0.25, 0.85),
    goal=(0.15, 0.70, 0.35),
    pillar=(0.40, 0.40, 0.42),
    button=(0.95, 0.60, 0.15),
    floor_lines=(0.50, 0.45, 0.36),
)


def jitter_palette(p: Palette, rng: np.random.Generator, strength: float) -> Palette:
    """Domain randomisation of the colours: each channel of each colour moved by U(−strength, strength)
    (clipped to [0, 1]), and on half of the draws a floor grid a shade darker than the floor.

    Every call draws the same count of numbers, so a seeded generator gives the same palettes in turn.
    """

    def move(c: Colour) -> Colour:
        r, g, b = np.clip(np.asarray(c) + rng.uniform(-strength, strength, 3), 0.0, 1.0)
        return (float(r), float(g), float(b))

    floor = move(p.floor)
    grid = rng.random() < 0.5
    return Palette(
        floor=floor,
        wall=move(p.wall),
        hazard=move(p.hazard),
        goal=move(p.goal),
        pillar=move(p.pillar),
        button=move(p.button),
        floor_lines=(0.8 * floor[0], 0.8 * floor[1], 0.8 * floor[2]) if grid else None,
    )


def unseen_variant(p: LayoutParams) -> LayoutParams:
    """The unseen split: a larger arena, ~1.5x as many hazards of a different size spread, a
    share of them placed across the way to the goal, and another palette with a floor grid."""
    lo, hi = p.hazard_radius
    return replace(
        p,
        arena_half=round(p.arena_half * 1.25, 3),
        n_hazards=max(p.n_hazards + 1, round(p.n_hazards * 1.5)),
        hazard_radius=(round(lo * 0.8, 3), round(hi * 1.15, 3)),
        n_pillars=p.n_pillars + 1,
        hazards_on_path=0.4,
        palette=UNSEEN_PALETTE,
    )


def _goal(n_hazards: int, radius: tuple[float, float], n_pillars: int, **kw: object) -> LayoutParams:
    base = LayoutParams(
        kind="goal",
        arena_half=2.0,
        n_hazards=n_hazards,
        hazard_radius=radius,
        n_pillars=n_pillars,
        n_buttons=0,
        fade_steps=0,
        hazards_on_path=0.0,
        palette=TRAIN_PALETTE,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


TASKS: dict[str, TaskSpec] = {
    "reachsafe/SafeGoal1-v0": TaskSpec(
        "reachsafe/SafeGoal1-v0",
        "reach the green pillar; a few blue hazard zones",
        _goal(4, (0.30, 0.40), 0),
    ),
    "reachsafe/SafeGoal2-v0": TaskSpec(
        "reachsafe/SafeGoal2-v0",
        "reach the green pillar; more and larger hazards, and solid pillars",
        _goal(8, (0.35, 0.50), 2),
    ),
    "reachsafe/SafeButton1-v0": TaskSpec(
        "reachsafe/SafeButton1-v0",
        "press the green button among yellow ones (wrong buttons cost); hazards between",
        _goal(4, (0.30, 0.40), 1, kind="button", n_buttons=4),
    ),
    "reachsafe/SafeFadingEasy-v0": TaskSpec(
        "reachsafe/SafeFadingEasy-v0",
        "reach the green pillar, which fades out 60 steps after it is first seen",
        _goal(4, (0.30, 0.40), 0, kind="fading", fade_steps=60),
    ),
    "reachsafe/SafeFadingHard-v0": TaskSpec(
        "reachsafe/SafeFadingHard-v0",
        "reach the green pillar, which fades out 15 steps after it is first seen; more hazards",
        _goal(6, (0.30, 0.45), 0, kind="fading", fade_steps=15),
    ),
}


def task_spec(task_id: str) -> TaskSpec:
    try:
        return TASKS[task_id]
    except KeyError:
        raise ValueError(f"unknown task {task_id!r}: use one of {sorted(TASKS)}") from None
