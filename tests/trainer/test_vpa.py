"""Value Pre-Alignment brings Q_r(π_off) closer to π_off's Monte-Carlo returns on held-out data."""

from __future__ import annotations

import numpy as np
import torch

from reachsafe.trainer.algos.online.config import OnlineConfig, OnlineWorldModelConfig, VPAConfig
from reachsafe.trainer.algos.online.learner import OnlineLearner
from reachsafe.trainer.algos.online.vpa import ValuePreAligner
from reachsafe.trainer.data.dataset import OfflineDataset
from reachsafe.trainer.models.networks import Agent, AgentSpec

GAMMA, LENGTH, GOAL = 0.8, 30, np.array([0.0, 0.8], np.float32)


def rollouts(agent: Agent, episodes: int, seed: int) -> tuple[OfflineDataset, np.ndarray]:
    """Episodes of π_off on a point task (reward: progress to the goal); returns data + MC returns."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    cols: dict[str, list] = {
        k: [] for k in ("observations", "next_observations", "actions", "rewards", "costs")
    }
    mc = []
    for _ in range(episodes):
        s = rng.uniform(-0.9, 0.9, size=2).astype(np.float32)
        rewards = []
        for _ in range(LENGTH):
            with torch.no_grad():
                a = agent.actor_off.sample(agent.encoder_off(torch.as_tensor(s[None])))[0][0].numpy()
            s2 = np.clip(s + 0.15 * a, -1, 1).astype(np.float32)
            r = float(np.linalg.norm(GOAL - s) - np.linalg.norm(GOAL - s2))
            for k, v in zip(cols, (s, s2, a, r, float(s2[0] > 0.5)), strict=True):
                cols[k].append(v)
            rewards.append(r)
            s = s2
        ret, out = 0.0, []
        for r in reversed(rewards):
            ret = r + GAMMA * ret
            out.append(ret)
        mc.extend(reversed(out))
    n = episodes * LENGTH
    timeouts = np.zeros(n, bool)
    timeouts[LENGTH - 1 :: LENGTH] = True
    arrays = {k: np.asarray(v, np.float32) for k, v in cols.items()}
    ds = OfflineDataset(**arrays, terminals=np.zeros(n, bool), timeouts=timeouts)
    return ds, np.asarray(mc, np.float32)


def q_r_error(agent: Agent, ds: OfflineDataset, mc: np.ndarray) -> float:
    early = (np.arange(len(ds)) % LENGTH) < 10  # far from the truncation, where MC is exact enough
    with torch.no_grad():
        z = agent.encoder(torch.as_tensor(ds.observations[early]))
        q = agent.q_r(z, torch.as_tensor(ds.actions[early])).min(dim=-1).values.numpy()
    return float(np.mean((q - mc[early]) ** 2))


def test_vpa_aligns_q_r_with_monte_carlo_returns_of_pi_off() -> None:
    torch.manual_seed(0)
    agent = Agent(AgentSpec(obs_shape=(2,), action_dim=2, latent_dim=16, hidden_dim=64))
    with torch.no_grad():  # a fairly deterministic π_off, so its values are well defined by few samples
        agent.actor_off.net[-1].bias[2:].fill_(-6.0)
        agent.actor_off.net[-1].weight[2:].mul_(0.01)
    agent.actor_on.load_state_dict(agent.actor_off.state_dict())  # π_on starts as π_off
    train, _ = rollouts(agent, 60, seed=1)
    held_out, mc = rollouts(agent, 20, seed=2)
    cfg = OnlineConfig(gamma=GAMMA, alpha_init=1e-4, autotune_alpha=False, lr_critic=1e-3, learn_qh=False, world_model=OnlineWorldModelConfig(enabled=False),
                       vpa=VPAConfig(steps=600, batch_size=128))  # fmt: skip
    learner = OnlineLearner(agent, cfg)
    before = q_r_error(agent, held_out, mc)
    vpa = ValuePreAligner(learner, train, cfg.vpa)
    last = vpa.run(np.random.default_rng(0))
    after = q_r_error(agent, held_out, mc)
    assert vpa.done and set(last) >= {"vpa/loss_q_r", "vpa/loss_q_c"}
    assert after < 0.5 * before, (before, after)
    # π_off and π_on are untouched by the alignment
    for p_on, p_off in zip(agent.actor_on.parameters(), agent.actor_off.parameters(), strict=True):
        assert torch.equal(p_on, p_off)
