"""The selection probe branches greedy evaluation episodes without disturbing them."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import reachsafe.sim_bridge  # noqa: F401  (registers the tasks)
from reachsafe.edge_runtime.inference import AgentOutput
from reachsafe.trainer.runs.online import evaluate
from reachsafe.trainer.runs.rollout import ActingPolicy
from reachsafe.trainer.runs.selection_probe import SelectionProbe, _agreement, can_branch

TASK = "reachsafe/SafeGoal1-v0"


def fixed_policy(score_on: float, score_off: float) -> ActingPolicy:
    """π_on drives straight ahead, π_off stands still; the graph scores them as given."""

    def outputs(frame: np.ndarray, noise: np.ndarray) -> AgentOutput:
        a_on, a_off = np.array([[0.8, 0.0]], np.float32), np.zeros((1, 2), np.float32)
        cands = np.stack([a_on, a_off, np.zeros((1, 2), np.float32)], axis=1)
        return AgentOutput(a_on[0], a_off[0], np.array([score_on, score_off], np.float32),
                           np.zeros(2, np.float32), np.full(3, -1.0, np.float32), cands[0])  # fmt: skip

    return ActingPolicy(outputs, 2, kappa_t=5.0, threshold=None)


def make(split: str = "unseen") -> gym.Env:
    return gym.make(TASK, split=split, image_size=16)


@pytest.mark.parametrize("online_first", [True, False])
def test_probe_measures_both_branches_and_leaves_the_episode_alone(online_first: bool) -> None:
    policy = fixed_policy(1.0, 0.0) if online_first else fixed_policy(0.0, 1.0)
    env, branch = make(), make()
    try:
        plain = evaluate(policy, env, None, 1, 0.1, seed=3)
        probe = SelectionProbe(policy, branch, None, gamma=0.9, horizon=10, every=50)
        probed = evaluate(policy, env, None, 1, 0.1, seed=3, probe=probe)
    finally:
        env.close()
        branch.close()
    assert probed["return_mean"] == plain["return_mean"] and probed["cost_mean"] == plain["cost_mean"]
    assert probed["selection/points"] == 6  # steps 0, 50, …, 250 of a 300-step episode
    assert probed["selection/online_share"] == (1.0 if online_first else 0.0)
    assert all(p.ret[1] == 0.0 and p.cost[1] == 0.0 for p in probe.points)  # standing still
    moved = [p.ret[0] for p in probe.points]
    assert any(r != 0.0 for r in moved)
    right = np.mean([(r > 0) == online_first for r in moved if r != 0.0])
    assert probed["selection/right_by_return"] == pytest.approx(right)


def test_agreement_counts_only_decisive_points() -> None:
    picks = np.array([True, True, False, False])
    out = _agreement("x", picks, np.array([1.0, -1.0, -2.0, 0.0]))
    assert out == {"selection/right_by_x": pytest.approx(2 / 3), "selection/decisive_by_x": 3.0}
    assert np.isnan(_agreement("x", picks, np.zeros(4))["selection/right_by_x"])


def test_only_envs_that_copy_their_state_can_branch() -> None:
    env = make()
    try:
        assert can_branch(env)
    finally:
        env.close()
    assert not can_branch(gym.make("Pendulum-v1"))
