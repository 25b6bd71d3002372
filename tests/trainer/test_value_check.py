"""The value check of VPA: Monte-Carlo values of π_off's rollouts, the fit statistics, and `train online`
writing the check before and after VPA."""

from __future__ import annotations

import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

from reachsafe.trainer.algos.online.config import (
    OnlineConfig,
    OnlineWorldModelConfig,
    ReplayConfig,
    VPAConfig,
)
from reachsafe.trainer.models.networks import Agent, AgentSpec, load_checkpoint, save_checkpoint
from reachsafe.trainer.runs.envs import make_env
from reachsafe.trainer.runs.online import train_online
from reachsafe.trainer.runs.value_check import (
    CriticFit,
    ValueCheck,
    critic_fit,
    discounted_to_go,
    horizon_steps,
    lengthened_env,
    rankdata,
    roll_out_pi_off,
    spearman,
)
from tests.fixtures.point_dataset import make_point_dataset, write_hdf5
from tests.trainer.test_online import PointCostEnv


class Countdown(gym.Env):
    """obs [k, 0] with k the steps left; reward 1 and cost 2 per step; terminates after ``3 + seed`` steps
    (``terminate``), else never ends by itself."""

    observation_space = gym.spaces.Box(-100.0, 100.0, (2,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)

    def __init__(self, terminate: bool = True, own_limit: int | None = None) -> None:
        self.terminate, self.own_limit = terminate, own_limit

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.left, self.t = 3 + (seed or 0), 0
        return self._obs(), {}

    def _obs(self) -> np.ndarray:
        return np.array([self.left, 0.0], np.float32)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        self.left, self.t = self.left - 1, self.t + 1
        terminated = self.terminate and self.left == 0
        truncated = self.own_limit is not None and self.t >= self.own_limit
        return self._obs(), 1.0, terminated, truncated, {"cost": 2.0}


gym.register("reachsafe_test/Countdown-v0", entry_point=Countdown)
gym.register(
    "reachsafe_test/Endless-v0", entry_point=Countdown, kwargs={"terminate": False}, max_episode_steps=10
)
gym.register(
    "reachsafe_test/OwnLimit-v0", entry_point=Countdown, kwargs={"terminate": False, "own_limit": 10}
)


class PointNoLimit(PointCostEnv):
    """PointCostEnv with its 20 steps left to a TimeLimit, so the value check can lengthen them."""

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        obs, reward, terminated, _, info = super().step(action)
        return obs, reward, terminated, False, info


gym.register("reachsafe_test/PointNoLimit-v0", entry_point=PointNoLimit, max_episode_steps=20)


def small_agent(seed: int = 0) -> Agent:
    torch.manual_seed(seed)
    return Agent(AgentSpec(obs_shape=(2,), action_dim=2, latent_dim=8, hidden_dim=32))


class PadEncoder(nn.Module):
    """The observation itself as the latent (zero-padded)."""

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        self.latent_dim = latent_dim

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return F.pad(obs.float(), (0, self.latent_dim - obs.shape[-1]))


class ExactTwins(nn.Module):
    """Twin heads at scale·(1 − γ^k)/(1 − γ), k = z[..., 0], one of them off by ``offset``."""

    def __init__(self, scale: float, gamma: float, offset: float) -> None:
        super().__init__()
        self.scale, self.gamma, self.offset = scale, gamma, offset

    def forward(self, z: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        v = self.scale * (1 - self.gamma ** z[..., 0]) / (1 - self.gamma)
        return torch.stack([v, v + self.offset], dim=-1)


def test_discounted_to_go_matches_a_hand_computed_sequence() -> None:
    # G_3 = −4, G_2 = 2 + 0.5·G_3, G_1 = 0 + 0.5·G_2, G_0 = 1 + 0.5·G_1, written out
    got = discounted_to_go(np.array([1.0, 0.0, 2.0, -4.0]), 0.5)
    assert got == pytest.approx(
        [1.0 + 0.5 * 0 + 0.25 * 2 - 0.125 * 4, 0 + 0.5 * 2 - 0.25 * 4, 2 - 0.5 * 4, -4]
    )
    assert discounted_to_go(np.zeros(0), 0.9).shape == (0,)


def test_spearman_on_known_cases() -> None:
    assert rankdata(np.array([10.0, 20.0, 20.0, 5.0])) == pytest.approx([2.0, 3.5, 3.5, 1.0])
    x = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    # no ties: ρ = 1 − 6 Σd² / (n(n² − 1)) with d = (1, 1, 1, 1, 0): 1 − 24/120
    assert spearman(x, np.array([2.0, 1.0, 4.0, 3.0, 5.0])) == pytest.approx(0.8)
    assert spearman(x, np.exp(x)) == pytest.approx(1.0) and spearman(x, -(x**3)) == pytest.approx(-1.0)
    # ties: Pearson's r of the tie-averaged ranks (1, 2, 3.5, 5, 3.5) against (1 … 5)
    ry = np.array([1.0, 2.0, 3.5, 5.0, 3.5])
    by_hand = np.sum((x - 3) * (ry - 3)) / np.sqrt(np.sum((x - 3) ** 2) * np.sum((ry - 3) ** 2))
    assert spearman(x, np.array([5.0, 6.0, 7.0, 8.0, 7.0])) == pytest.approx(by_hand)
    assert np.isnan(spearman(x, np.ones(5)))
    # undefined (a critic or a return that never varies) is null in the JSON, not NaN
    flat = CriticFit.of(np.zeros(3), np.zeros(3))
    assert ValueCheck(flat, flat, 1, 6).to_dict()["q_c"]["spearman"] is None


def test_a_critic_at_the_monte_carlo_values_fits_exactly() -> None:
    mc = np.array([0.0, 1.5, -2.0, 4.0])
    exact = CriticFit.of(mc, mc)
    assert (exact.bias, exact.rmse, exact.spearman, exact.q_mean, exact.points) == pytest.approx(
        (0.0, 0.0, 1.0, 0.875, 4)
    )
    shifted = CriticFit.of(mc + 2.0, mc)
    assert (shifted.bias, shifted.rmse, shifted.spearman) == pytest.approx((2.0, 2.0, 1.0))


def test_exact_critics_fit_pi_offs_returns_with_zero_bias_and_rank_correlation_one() -> None:
    """Q_r is the min of its twins and Q_c the max: the exact twin wins, the other is off by ±1."""
    gamma = 0.9
    agent = small_agent()
    agent.encoder = PadEncoder(agent.spec.latent_dim)
    agent.q_r, agent.q_c = ExactTwins(1.0, gamma, 1.0), ExactTwins(2.0, gamma, -1.0)
    env = make_env("reachsafe_test/Countdown-v0", None, 0)
    rollouts = roll_out_pi_off(agent, env, 3, gamma, seed=2)
    # episodes of 5, 6, 7 steps that terminate: every step is kept, its Monte-Carlo value exact
    assert (rollouts.env_steps, len(rollouts.actions)) == (18, 18)
    assert rollouts.mc_reward[:5] == pytest.approx([(1 - gamma**k) / (1 - gamma) for k in (5, 4, 3, 2, 1)])
    assert rollouts.mc_cost == pytest.approx(2 * rollouts.mc_reward)
    check = critic_fit(agent, rollouts, batch_size=4)  # batches that split episodes
    for fit in (check.q_r, check.q_c):
        assert fit.points == 18 and abs(fit.bias) < 1e-5 and fit.rmse < 1e-5
        assert fit.spearman == pytest.approx(1.0)
    # π_off acted with its mean action, unshielded
    with torch.no_grad():
        mu_off, _ = agent.actor_off.distribution_params(agent.encoder_off(torch.as_tensor(rollouts.frames)))
    assert rollouts.actions == pytest.approx(torch.tanh(mu_off).numpy(), abs=1e-6)


def test_only_steps_with_the_horizon_ahead_count_and_lengthened_episodes_keep_every_usual_step() -> None:
    gamma = 0.5
    assert horizon_steps(gamma) == 6 and horizon_steps(0.99) == 300 and horizon_steps(0.9) == 30
    agent = small_agent()
    own = roll_out_pi_off(agent, make_env("reachsafe_test/OwnLimit-v0", None, 0), 2, gamma, seed=0)
    assert (own.env_steps, len(own.mc_reward)) == (20, 2 * (10 - 6))  # truncated at 10: 4 steps see 6 ahead
    env = lengthened_env("reachsafe_test/Endless-v0", None, 0, "cost", horizon_steps(gamma))
    long = roll_out_pi_off(agent, env, 2, gamma, seed=0)
    assert (long.env_steps, len(long.mc_reward)) == (2 * 16, 2 * 10)
    # each kept value misses at most γ^7 of the infinite-horizon value 1/(1 − γ) = 2
    assert np.all(2.0 - long.mc_reward <= 2.0 * gamma**7 + 1e-9) and np.all(long.mc_reward < 2.0)


def test_train_online_checks_the_critics_before_and_after_vpa_without_changing_the_run(
    tmp_path: Path,
) -> None:
    write_hdf5(make_point_dataset(episodes=4, length=20), tmp_path / "ds.h5")
    save_checkpoint(tmp_path / "run" / "checkpoints" / "latest.pt", small_agent(), 0,
                    extra={"dataset": {"source": str(tmp_path / "ds.h5")}})  # fmt: skip
    outs = {}
    for episodes in (0, 1):
        cfg = OnlineConfig(gamma=0.9, batch_size=16, replay=ReplayConfig(warmup_steps=10),
                           vpa=VPAConfig(steps=30, check_episodes=episodes),
                           world_model=OnlineWorldModelConfig(enabled=False))  # fmt: skip
        outs[episodes] = tmp_path / f"online{episodes}"
        train_online(
            tmp_path / "run", "reachsafe_test/PointNoLimit-v0", 20, cfg, outs[episodes], eval_episodes=0
        )
    assert not (outs[0] / "vpa_check.json").exists()
    check = json.loads((outs[1] / "vpa_check.json").read_text())
    assert check["vpa_steps"] == 30 and set(check) == {"vpa_steps", "before", "after"}
    for phase in ("before", "after"):
        assert check[phase]["horizon"] == 30 and check[phase]["episodes"] == 1
        for critic in ("q_r", "q_c"):
            assert check[phase][critic]["points"] == 20  # the 20 usual steps, each with 30 ahead
    assert check["before"]["q_r"]["mc_mean"] == check["after"]["q_r"]["mc_mean"]  # the same rollout
    assert check["before"]["q_r"]["q_mean"] != check["after"]["q_r"]["q_mean"]  # VPA moved Q_r
    assert json.loads((outs[1] / "summary.json").read_text())["vpa_check"] == check
    scalars = EventAccumulator(str(outs[1] / "tb"))
    scalars.Reload()
    logged = scalars.Scalars("vpa_check/q_r_spearman_after")
    assert [e.value for e in logged] == pytest.approx([check["after"]["q_r"]["spearman"]])
    # the check only watches: the same run without it ends with the same weights
    agents = [load_checkpoint(outs[e] / "checkpoint.pt")[0].state_dict() for e in (0, 1)]
    assert all(torch.equal(agents[0][k], agents[1][k]) for k in agents[0])
