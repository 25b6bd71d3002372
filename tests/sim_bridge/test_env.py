"""The PyBullet tasks: gymnasium conformance, determinism, splits, reward and cost rules."""

from __future__ import annotations

import dataclasses
import math
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import reachsafe.sim_bridge  # noqa: F401  (registers the tasks)
from reachsafe.sim_bridge.env import SafeNavEnv
from reachsafe.sim_bridge.layout import PILLAR_RADIUS, ROBOT_RADIUS
from reachsafe.sim_bridge.policies import POLICIES, make_policy
from reachsafe.sim_bridge.sensors import STATE_DIM
from reachsafe.sim_bridge.tasks import SPLITS, TASKS, jitter_palette

GOAL1 = "reachsafe/SafeGoal1-v0"


def _make(task: str = GOAL1, **kw: object) -> SafeNavEnv:
    return gym.make(task, **kw).unwrapped  # type: ignore[return-value]


@pytest.mark.parametrize("task", sorted(TASKS))
@pytest.mark.parametrize("split", SPLITS)
def test_check_env_passes_for_every_mode(task: str, split: str) -> None:
    for mode in ("image", "state", "both"):
        env = gym.make(task, split=split, obs_mode=mode, episode_steps=10)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the checker's complaints are warnings: make them fail
            check_env(env.unwrapped)
        env.close()


def test_observation_modes_have_the_documented_shapes() -> None:
    env = gym.make(GOAL1, obs_mode="both")
    obs, _ = env.reset(seed=0)
    assert obs["image"].shape == (64, 64, 3) and obs["image"].dtype == np.uint8
    assert obs["state"].shape == (STATE_DIM,) and obs["state"].dtype == np.float32
    obs, reward, terminated, truncated, info = env.step(np.array([0.5, 0.0], dtype=np.float32))
    assert isinstance(reward, float) and info["cost"] in (0.0, 1.0)
    assert not terminated and not truncated
    env.close()


def _rollout(
    task: str, seed: int, split: str = "train", steps: int = 40
) -> tuple[np.ndarray, np.ndarray, list]:
    env = gym.make(task, split=split, obs_mode="both", episode_steps=steps)
    obs, _ = env.reset(seed=seed)
    policy = make_policy("noisy")
    policy.reset(np.random.default_rng(seed))
    frames, states, signals = [obs["image"]], [obs["state"]], []
    done = False
    while not done:
        obs, r, term, trunc, info = env.step(policy.act(env.unwrapped.nav_state()))
        frames.append(obs["image"])
        states.append(obs["state"])
        signals.append((r, info["cost"]))
        done = term or trunc
    env.close()
    return np.stack(frames), np.stack(states), signals


@pytest.mark.parametrize("task", [GOAL1, "reachsafe/SafeButton1-v0"])
def test_same_seed_same_episode_other_seed_other_episode(task: str) -> None:
    f1, s1, sig1 = _rollout(task, seed=7)
    f2, s2, sig2 = _rollout(task, seed=7)
    np.testing.assert_array_equal(f1, f2)
    np.testing.assert_array_equal(s1, s2)
    assert sig1 == sig2
    f3, _, _ = _rollout(task, seed=8)
    assert not np.array_equal(f1, f3)


def test_unseen_split_differs_in_arena_hazards_and_colours() -> None:
    for task in TASKS:
        train, unseen = TASKS[task].params("train"), TASKS[task].params("unseen")
        assert unseen.arena_half > train.arena_half
        assert unseen.n_hazards > train.n_hazards
        assert unseen.palette != train.palette
    a, b = _make(split="train"), _make(split="unseen")
    oa, _ = a.reset(seed=3)
    ob, _ = b.reset(seed=3)
    sa, sb = a.nav_state(), b.nav_state()
    assert len(sb.hazards) > len(sa.hazards)
    assert sb.arena_half > sa.arena_half
    floor_a, floor_b = oa[-1].reshape(-1, 3).mean(0), ob[-1].reshape(-1, 3).mean(0)  # bottom row: floor
    assert np.abs(floor_a - floor_b).max() > 20
    a.close()
    b.close()


def test_palette_repaints_a_split_without_moving_anything() -> None:
    spec = TASKS[GOAL1]
    repainted = spec.params("unseen", "train")
    assert repainted.palette == spec.params("train").palette
    assert repainted == dataclasses.replace(spec.params("unseen"), palette=repainted.palette)
    with pytest.raises(ValueError, match="palette"):
        spec.params("unseen", "night")
    own, other = _make(split="unseen"), _make(split="unseen", palette="train")
    oa, _ = own.reset(seed=3)
    ob, _ = other.reset(seed=3)
    np.testing.assert_array_equal(own.nav_state().hazards, other.nav_state().hazards)
    floor_a, floor_b = oa[-1].reshape(-1, 3).mean(0), ob[-1].reshape(-1, 3).mean(0)  # bottom row: floor
    assert np.abs(floor_a - floor_b).max() > 20
    own.close()
    other.close()


def test_jitter_palette_stays_within_its_strength_and_sometimes_draws_a_grid() -> None:
    base = TASKS[GOAL1].params("train").palette
    rng = np.random.default_rng(0)
    drawn = [jitter_palette(base, rng, 0.1) for _ in range(40)]
    for p in drawn:
        for name in ("floor", "wall", "hazard", "goal", "pillar", "button"):
            c, b = np.array(getattr(p, name)), np.array(getattr(base, name))
            assert np.all(np.abs(c - b) <= 0.1 + 1e-9) and np.all((c >= 0) & (c <= 1))
    grids = [p.floor_lines is not None for p in drawn]
    assert 5 < sum(grids) < 35
    assert jitter_palette(base, np.random.default_rng(0), 0.1) == drawn[0]


def test_palette_jitter_repaints_every_episode_on_the_seed_s_layout() -> None:
    with pytest.raises(ValueError, match="palette_jitter"):
        _make(palette_jitter=1.5)
    plain, jittered = _make(), _make(palette_jitter=0.2)
    frames = {}
    for seed in (3, 4):
        op, _ = plain.reset(seed=seed)
        oj, _ = jittered.reset(seed=seed)
        np.testing.assert_array_equal(plain.nav_state().hazards, jittered.nav_state().hazards)
        assert not np.array_equal(op, oj)
        frames[seed] = oj
    oj, _ = jittered.reset(seed=3)
    np.testing.assert_array_equal(oj, frames[3])  # the same seed paints the same colours
    assert not np.array_equal(frames[3][-1], frames[4][-1])  # another seed, another floor
    plain.close()
    jittered.close()


def test_hazard_placement_on_unseen_crowds_the_way_to_the_goal() -> None:
    """Unseen puts a share of hazards across the start-goal segment: they sit closer to it."""

    def mean_path_distance(split: str) -> float:
        env = _make(split=split)
        dists = []
        for seed in range(20):
            env.reset(seed=seed)
            s = env.nav_state()
            a, b = s.xy, s.goal_xy
            t = np.clip(((s.hazards - a) @ (b - a)) / max((b - a) @ (b - a), 1e-9), 0, 1)
            closest = a + t[:, None] * (b - a)
            dists.append(np.linalg.norm(s.hazards - closest, axis=1).min() / s.arena_half)
        env.close()
        return float(np.mean(dists))

    assert mean_path_distance("unseen") < mean_path_distance("train")


def test_cost_is_one_inside_a_hazard_and_zero_outside() -> None:
    env = _make()
    env.reset(seed=1)
    s = env.nav_state()
    centre, radius = s.hazards[0], s.hazard_radii[0]
    env.place_robot(centre, 0.0)
    _, _, _, _, info = env.step(np.zeros(2, dtype=np.float32))
    assert info["cost"] == 1.0 and info["cost_hazard"] == 1.0
    # a free spot: far from every hazard, away from the walls
    free = next(
        p
        for p in (np.array([x, y]) for x in np.linspace(-1.5, 1.5, 13) for y in np.linspace(-1.5, 1.5, 13))
        if np.all(np.linalg.norm(s.hazards - p, axis=1) > s.hazard_radii + 0.2)
    )
    env.place_robot(free, 0.0)
    _, _, _, _, info = env.step(np.zeros(2, dtype=np.float32))
    assert info["cost"] == 0.0
    assert radius > 0
    env.close()


def test_a_hazard_crossed_between_substeps_costs() -> None:
    """The robot grazes a hazard: inside after the first 25 ms sub-step, outside again after the second.
    Neither end of the step lies in the hazard, and the step still costs."""
    env = _make()
    env.reset(seed=1)
    s = env.nav_state()
    centre, radius = s.hazards[0], s.hazard_radii[0]
    per_substep = 1.0 / (20 * env.action_repeat)  # metres at full speed (1 m/s, 20 Hz)
    half_chord = 0.6 * per_substep  # the chord the path cuts through the disc: shorter than a sub-step
    start = centre + np.array([-per_substep, math.sqrt(radius**2 - half_chord**2)])
    env.place_robot(start, 0.0)  # heading +x, along the chord
    assert not env.in_hazard()
    _, _, _, _, info = env.step(np.array([1.0, 0.0], dtype=np.float32))
    assert not env.in_hazard() and np.linalg.norm(env.nav_state().xy - start - [2 * per_substep, 0]) < 1e-9
    assert info["cost_hazard"] == 1.0 and info["cost"] == 1.0
    env.close()


def test_touching_a_pillar_costs_and_the_robot_cannot_pass_through() -> None:
    env = _make("reachsafe/SafeGoal2-v0")
    env.reset(seed=2)
    pillar = env.nav_state().obstacles[0]
    start = pillar - np.array([ROBOT_RADIUS + PILLAR_RADIUS + 0.05, 0.0])
    env.place_robot(start, 0.0)  # facing the pillar
    infos = [env.step(np.array([1.0, 0.0], dtype=np.float32))[4] for _ in range(5)]
    assert max(i["cost_collision"] for i in infos) == 1.0
    assert [i["cost"] for i in infos] == [max(i["cost_collision"], i["cost_hazard"]) for i in infos]
    gap = np.linalg.norm(env.nav_state().xy - pillar)
    assert gap >= ROBOT_RADIUS + PILLAR_RADIUS - 1e-6
    env.close()


def test_driving_into_a_wall_is_reported_but_costs_nothing() -> None:
    env = _make("reachsafe/SafeGoal1-v0")
    env.reset(seed=2)
    lim = env.params.arena_half - ROBOT_RADIUS
    env.place_robot(np.array([lim - 0.05, 0.0]), 0.0)  # facing the +x wall, 5 cm from touching it
    infos = [env.step(np.array([1.0, 0.0], dtype=np.float32))[4] for _ in range(4)]
    assert [i["at_wall"] for i in infos][-1] is True
    assert all(i["cost"] == 0.0 for i in infos)
    assert env.nav_state().xy[0] == pytest.approx(lim)
    env.step(np.array([-1.0, 0.0], dtype=np.float32))  # backing away leaves the wall
    assert env.step(np.array([-1.0, 0.0], dtype=np.float32))[4]["at_wall"] is False
    env.close()


def test_reward_is_progress_toward_the_goal() -> None:
    env = _make()
    env.reset(seed=4)
    s = env.nav_state()
    heading = math.atan2(*(s.goal_xy - s.xy)[::-1])
    env.place_robot(s.xy, heading)
    _, toward, *_ = env.step(np.array([1.0, 0.0], dtype=np.float32))
    assert toward == pytest.approx(1.0 / 20, abs=0.01)  # 1 m/s for one 20 Hz step
    env.place_robot(env.nav_state().xy, heading + math.pi)
    _, away, *_ = env.step(np.array([1.0, 0.0], dtype=np.float32))
    assert away < -0.04
    env.close()


def test_reaching_the_goal_pays_the_bonus_and_moves_the_goal() -> None:
    env = _make()
    env.reset(seed=5)
    goal = env.nav_state().goal_xy
    inward = -goal / np.linalg.norm(goal)  # approach from the arena's centre side, clear of walls
    env.place_robot(goal + 0.33 * inward, math.atan2(-inward[1], -inward[0]))
    _, reward, _, _, info = env.step(np.array([1.0, 0.0], dtype=np.float32))
    assert info["goal_met"] and reward > 1.0
    assert np.linalg.norm(env.nav_state().goal_xy - goal) > 0.5
    env.close()


def test_wrong_button_costs_and_the_right_one_pays() -> None:
    env = _make("reachsafe/SafeButton1-v0")
    env.reset(seed=0)
    s = env.nav_state()
    wrong = s.obstacles[-1]  # wrong buttons follow the pillars
    env.place_robot(wrong - np.array([0.3, 0.0]), 0.0)
    infos = [env.step(np.array([1.0, 0.0], dtype=np.float32))[4] for _ in range(4)]
    assert max(i["cost_collision"] for i in infos) == 1.0
    assert [i["cost"] for i in infos] == [max(i["cost_collision"], i["cost_hazard"]) for i in infos]
    env.place_robot(s.goal_xy - np.array([0.35, 0.0]), 0.0)
    _, reward, _, _, info = env.step(np.array([1.0, 0.0], dtype=np.float32))
    assert info["goal_met"] and reward > 1.0
    # the pressed button is now a wrong one under the robot: no cost while the buttons re-arm
    infos = [env.step(np.array([1.0, 0.0], dtype=np.float32))[4] for _ in range(5)]
    assert [(i["cost_collision"], i["cost"]) for i in infos] == [(0.0, 0.0)] * 5
    # ... but only that button: another wrong one still costs during the re-arm window
    other = next(
        o for o in env.nav_state().obstacles[len(s.obstacles) - 3 :] if np.linalg.norm(o - s.goal_xy) > 0.1
    )
    env.place_robot(other - np.array([0.3, 0.0]), 0.0)
    infos = [env.step(np.array([1.0, 0.0], dtype=np.float32))[4] for _ in range(3)]
    assert max(i["cost_collision"] for i in infos) == max(i["cost"] for i in infos) == 1.0
    env.close()


def test_fading_goal_disappears_from_image_and_state_after_first_sight() -> None:
    env = _make("reachsafe/SafeFadingHard-v0", obs_mode="both")
    env.reset(seed=0)
    s = env.nav_state()
    env.place_robot(s.xy, math.atan2(*(s.goal_xy - s.xy)[::-1]))  # look at the goal
    obs, *_ = env.step(np.zeros(2, dtype=np.float32))
    green = lambda img: int(((img[..., 1] > 150) & (img[..., 0] < 100)).sum())  # noqa: E731
    assert green(obs["image"]) > 0 and obs["state"][:16].max() > 0
    for _ in range(env.params.fade_steps + 1):
        obs, *_ = env.step(np.zeros(2, dtype=np.float32))
    assert env.goal_visibility() == 0.0
    assert green(obs["image"]) == 0 and obs["state"][:16].max() == 0
    env.close()


def test_episode_truncates_at_the_fixed_length() -> None:
    env = gym.make(GOAL1, obs_mode="state", episode_steps=15)
    env.reset(seed=0)
    flags = [env.step(np.zeros(2, dtype=np.float32))[3] for _ in range(15)]
    assert flags == [False] * 14 + [True]
    env.close()


@pytest.mark.parametrize("name", ["careful", "reckless"])
def test_experts_search_by_turning_in_place_only_while_the_goal_is_out_of_view(name: str) -> None:
    """Goal 0.3 m away at a bearing of 60° (outside the 90° camera cone): the searching expert turns
    left in place, the map-steering one already drives; at 30° (inside the cone) both steer alike."""
    env = gym.make(GOAL1, obs_mode="state")
    env.reset(seed=0)
    s = env.unwrapped.nav_state()
    env.close()
    acts = {}
    for bearing in (60, 30):
        away = math.radians(bearing)
        xy = s.goal_xy - 0.3 * np.array([math.cos(away), math.sin(away)])
        state = dataclasses.replace(s, xy=xy, yaw=0.0)
        for search in (True, False):
            policy = make_policy(name, search=search)
            policy.reset(np.random.default_rng(0))
            acts[bearing, search] = policy.act(state)
    np.testing.assert_array_equal(acts[60, True], [0.0, 1.0])
    assert acts[60, False][0] > 0.4  # cos(60°) forward
    np.testing.assert_array_equal(acts[30, True], acts[30, False])
    assert acts[30, True][0] > 0.8


@pytest.mark.parametrize(("task", "seed"), [(GOAL1, 4), ("reachsafe/SafeButton1-v0", 0)])
def test_searching_expert_does_not_loop_at_the_edge_of_the_view(task: str, seed: int) -> None:
    """Layouts where the careful expert's detour leads the goal out of view: a search keyed on the goal
    turned it back, the detour turned it away again, and the robot spun on the spot for the episode."""
    env = gym.make(task, obs_mode="state", episode_steps=300)
    env.reset(seed=seed)
    policy = make_policy("careful")
    policy.reset(np.random.default_rng(seed))
    for _ in range(300):
        *_, info = env.step(policy.act(env.unwrapped.nav_state()))
    env.close()
    assert info["goals_reached"] >= 3


def test_policies_span_the_reward_cost_plane() -> None:
    """Careful pays less cost than reckless; both beat random on return (state mode, fast)."""
    env = gym.make(GOAL1, obs_mode="state", episode_steps=200)
    totals = {}
    for name in ("careful", "reckless", "random"):
        policy = make_policy(name)
        ret = cost = 0.0
        for seed in range(4):
            env.reset(seed=seed)
            policy.reset(np.random.default_rng(seed))
            for _ in range(200):
                _, r, _, _, info = env.step(policy.act(env.unwrapped.nav_state()))
                ret, cost = ret + r, cost + info["cost"]
        totals[name] = (ret, cost)
    assert totals["careful"][1] < totals["reckless"][1]
    assert min(totals["careful"][0], totals["reckless"][0]) > totals["random"][0]
    assert set(POLICIES) >= {"careful", "reckless", "noisy", "random", "mixed"}
    env.close()


@pytest.mark.parametrize("task", ["reachsafe/SafeGoal1-v0", "reachsafe/SafeButton1-v0"])
def test_a_snapshot_restored_into_another_env_continues_the_episode_exactly(task: str) -> None:
    a = SafeNavEnv(task, split="unseen", obs_mode="both", image_size=32, palette_jitter=0.3)
    b = SafeNavEnv(task, split="unseen", obs_mode="both", image_size=32, palette_jitter=0.3)
    rng = np.random.default_rng(0)
    try:
        a.reset(seed=5)
        b.reset(seed=99)  # another layout and palette: everything must come from the snapshot
        for action in rng.uniform(-1, 1, (60, 2)):
            a.step(action)
        restored = b.restore(a.snapshot())
        np.testing.assert_array_equal(restored["image"], a._observe()["image"])
        for action in rng.uniform(-1, 1, (200, 2)):
            (oa, ra, _, ta, ia), (ob, rb, _, tb, ib) = a.step(action), b.step(action)
            np.testing.assert_array_equal(oa["image"], ob["image"])
            np.testing.assert_array_equal(oa["state"], ob["state"])
            assert (ra, ta, ia) == (rb, tb, ib)
    finally:
        a.close()
        b.close()


def test_a_snapshot_of_another_split_is_refused() -> None:
    a = SafeNavEnv("reachsafe/SafeGoal1-v0", split="train", image_size=16)
    b = SafeNavEnv("reachsafe/SafeGoal1-v0", split="unseen", image_size=16)
    try:
        a.reset(seed=0)
        b.reset(seed=0)
        with pytest.raises(ValueError, match="cannot be restored"):
            b.restore(a.snapshot())
    finally:
        a.close()
        b.close()
