"""Sampling a world layout (robot start, hazards, pillars, buttons, goal) from a task's params.

Pure numpy and deterministic given the generator, so the same seed gives the same world.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from reachsafe.sim_bridge.tasks import LayoutParams

ROBOT_RADIUS = 0.15
PILLAR_RADIUS = 0.15
BUTTON_RADIUS = 0.12
GOAL_RADIUS = 0.30  # reaching distance for the goal pillar
_TRIES = 200


@dataclass
class Layout:
    """Positions in metres; hazards/pillars/buttons are (N, 2) centres, hazard_radii (N,)."""

    start_xy: np.ndarray
    start_yaw: float
    hazards: np.ndarray
    hazard_radii: np.ndarray
    pillars: np.ndarray
    buttons: np.ndarray
    goal_button: int  # index into buttons, -1 for goal tasks
    goal_xy: np.ndarray


def _clear(p: np.ndarray, centres: np.ndarray, radii: np.ndarray | float, margin: float) -> bool:
    if len(centres) == 0:
        return True
    d = np.linalg.norm(centres - p, axis=1)
    return bool(np.all(d > np.asarray(radii) + margin))


def _uniform(rng: np.random.Generator, half: float, margin: float) -> np.ndarray:
    return rng.uniform(-half + margin, half - margin, size=2)


def sample_free_point(
    rng: np.random.Generator,
    params: LayoutParams,
    layout: Layout,
    margin: float,
    away_from: np.ndarray | None = None,
    min_away: float = 0.0,
) -> np.ndarray:
    """A point clear of hazards, pillars and buttons by ``margin`` (best effort after many tries)."""
    p = _uniform(rng, params.arena_half, 0.35)
    for _ in range(_TRIES):
        p = _uniform(rng, params.arena_half, 0.35)
        if (
            _clear(p, layout.hazards, layout.hazard_radii, margin)
            and _clear(p, layout.pillars, PILLAR_RADIUS, margin + 0.1)
            and _clear(p, layout.buttons, BUTTON_RADIUS, margin + 0.1)
            and (away_from is None or np.linalg.norm(p - away_from) >= min_away)
        ):
            return p
    return p


def _place_discs(
    rng: np.random.Generator,
    half: float,
    radii: np.ndarray,
    avoid: list[tuple[np.ndarray, float]],
    line: tuple[np.ndarray, np.ndarray] | None,
    n_on_line: int,
) -> np.ndarray:
    """Non-overlapping discs; the first ``n_on_line`` are centred near the segment ``line``."""
    out: list[np.ndarray] = []
    for i, r in enumerate(radii):
        p = _uniform(rng, half, r + 0.1)
        for _ in range(_TRIES):
            if line is not None and i < n_on_line:
                a, b = line
                p = a + rng.uniform(0.3, 0.7) * (b - a) + rng.normal(0.0, 0.25, size=2)
                p = np.clip(p, -half + r + 0.1, half - r - 0.1)
            else:
                p = _uniform(rng, half, r + 0.1)
            ok = all(np.linalg.norm(p - q) > r + qr for q, qr in avoid)
            ok = ok and all(np.linalg.norm(p - q) > r + radii[j] + 0.1 for j, q in enumerate(out))
            if ok:
                break
        out.append(p)
    return np.array(out, dtype=np.float64).reshape(-1, 2)


def sample_layout(rng: np.random.Generator, params: LayoutParams) -> Layout:
    half = params.arena_half
    start = _uniform(rng, half, 0.4)
    yaw = float(rng.uniform(-np.pi, np.pi))
    # Where the first goal will roughly be, so "on path" hazards can sit across the way.
    goal_hint = _uniform(rng, half, 0.4)
    while np.linalg.norm(goal_hint - start) < 1.5 * half * 0.6:
        goal_hint = _uniform(rng, half, 0.4)

    keep_clear = [(start, ROBOT_RADIUS + 0.25), (goal_hint, GOAL_RADIUS + 0.2)]
    buttons = np.zeros((0, 2))
    if params.n_buttons:
        b_radii = np.full(params.n_buttons, BUTTON_RADIUS + 0.35)
        buttons = _place_discs(rng, half, b_radii, [(start, ROBOT_RADIUS + 0.6)], None, 0)
        goal_hint = buttons[0]
        keep_clear = [(start, ROBOT_RADIUS + 0.25)] + [(b, BUTTON_RADIUS + 0.2) for b in buttons]

    radii = rng.permutation(params.hazard_radii)
    n_line = round(params.hazards_on_path * params.n_hazards)
    hazards = _place_discs(rng, half, radii, keep_clear, (start, goal_hint), n_line)
    avoid = keep_clear + [(h, r + 0.1) for h, r in zip(hazards, radii, strict=True)]
    pillars = _place_discs(rng, half, np.full(params.n_pillars, PILLAR_RADIUS + 0.2), avoid, None, 0)

    layout = Layout(
        start_xy=start,
        start_yaw=yaw,
        hazards=hazards,
        hazard_radii=radii,
        pillars=pillars,
        buttons=buttons,
        goal_button=0 if params.n_buttons else -1,
        goal_xy=goal_hint.copy(),
    )
    if not params.n_buttons and not _clear(goal_hint, hazards, radii, GOAL_RADIUS):
        layout.goal_xy = sample_free_point(rng, params, layout, GOAL_RADIUS, start, 1.0)
    return layout


def next_goal(rng: np.random.Generator, params: LayoutParams, layout: Layout, robot_xy: np.ndarray) -> None:
    """Move the goal after it was reached: a fresh free point, or another button."""
    if params.n_buttons:
        others = [i for i in range(len(layout.buttons)) if i != layout.goal_button]
        layout.goal_button = int(rng.choice(others))
        layout.goal_xy = layout.buttons[layout.goal_button].copy()
    else:
        layout.goal_xy = sample_free_point(rng, params, layout, GOAL_RADIUS + 0.1, robot_xy, 1.0)
