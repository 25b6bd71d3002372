"""Online learner: selection over each policy's own Q, SAC-Lag's (1+λ) actor loss, replay mixing, and
`train_online` end to end (with resume) on a tiny cost-reporting gymnasium env."""

from __future__ import annotations

import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from reachsafe.edge_runtime.select import selection_probabilities
from reachsafe.trainer.algos.losses import expectile_loss, hj_target, reachability_signal
from reachsafe.trainer.algos.online.config import (
    OnlineConfig,
    OnlineWorldModelConfig,
    ReplayConfig,
    VPAConfig,
)
from reachsafe.trainer.algos.online.learner import OnlineLearner, ReachabilityTarget
from reachsafe.trainer.data.dataset import Batch, load_dataset
from reachsafe.trainer.data.mixing import MixedSampler
from reachsafe.trainer.data.replay import StepReplay
from reachsafe.trainer.models.networks import Agent, AgentSpec, load_checkpoint, save_checkpoint
from reachsafe.trainer.runs.online import train_online
from reachsafe.trainer.runs.reeval import ReevalError, reevaluate
from reachsafe.trainer.runs.start import shield_for_ship
from tests.fixtures.point_dataset import make_point_dataset, write_hdf5

MODEL_FREE = OnlineWorldModelConfig(enabled=False)


def small_agent(seed: int = 0) -> Agent:
    torch.manual_seed(seed)
    return Agent(AgentSpec(obs_shape=(2,), action_dim=2, latent_dim=8, hidden_dim=32, world_model=True))


def test_each_policy_is_scored_at_its_own_action_and_selection_follows_the_formula() -> None:
    agent = small_agent()
    with torch.no_grad():  # make π_on differ from π_off so that the two actions differ
        for p in agent.actor_on.parameters():
            p.add_(0.3 * torch.randn_like(p))
        obs, noise = torch.randn(5, 2), torch.zeros(5, 2)
        a_on, a_off, q_r, q_c, *_ = agent.graph_outputs(obs, noise)
        z = agent.encoder(obs)
        for col, a in enumerate((a_on, a_off)):
            assert torch.allclose(q_r[:, col], agent.q_r(z, a).min(dim=-1).values)
            assert torch.allclose(q_c[:, col], agent.q_c(z, a).max(dim=-1).values)
    assert not torch.allclose(a_on, a_off)
    kappa_t, kappa_c = 5.0, 0.3
    for i in range(5):
        score = kappa_t * (q_r[i].numpy().astype(np.float64) - kappa_c * q_c[i].numpy())
        expected = np.exp(score) / np.exp(score).sum()
        assert selection_probabilities(q_r[i].numpy(), q_c[i].numpy(), kappa_t, kappa_c) == pytest.approx(
            expected
        )


def test_only_the_online_policy_explores_the_offline_one_proposes_its_mean() -> None:
    agent = small_agent()
    obs = torch.randn(6, 2)
    with torch.no_grad():
        greedy = agent.graph_outputs(obs, torch.zeros(6, 2))
        noisy = agent.graph_outputs(obs, torch.randn(6, 2))
        mu_off, _ = agent.actor_off.distribution_params(agent.encoder_off(obs))
    assert not torch.allclose(noisy[0], greedy[0])  # a_on samples with the noise input
    assert torch.allclose(noisy[1], greedy[1]) and torch.allclose(noisy[1], torch.tanh(mu_off))


def test_online_q_h_learns_the_offline_runs_reachability_target() -> None:
    """c_scale and γ_h come from the offline checkpoint (older checkpoints: OfflineConfig's defaults)."""
    reach = ReachabilityTarget.from_checkpoint({"config": {"c_scale": 5.0, "gamma_h": 0.5, "lr": 1e-3}})
    assert reach == ReachabilityTarget(5.0, 0.5)
    assert ReachabilityTarget.from_checkpoint({}) == ReachabilityTarget(25.0, 0.99)
    agent = small_agent()
    learner = OnlineLearner(agent, OnlineConfig(), reach)
    cost, done = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0])
    z, z_next = torch.randn(2, 8), torch.randn(2, 8)
    t = {"cost": cost, "done": done, "action": torch.zeros(2, 2)}
    with torch.no_grad():
        v_next = learner.target["v_h"](z_next)
        # h = [5, −1]; y_h = 0.5·h + 0.5·max(h, V_h(z'))
        expected = hj_target(reachability_signal(cost, 5.0), v_next, done, 0.5)
        loss, _ = learner._reach_loss(z, z_next, t)
        q_h = agent.q_h(z, t["action"])
        v_h = agent.v_h(z)
    want = torch.nn.functional.mse_loss(q_h, expected.unsqueeze(-1).expand_as(q_h)) + expectile_loss(
        v_h - q_h.max(dim=-1).values, learner.cfg.qh_expectile
    )
    assert float(loss) == pytest.approx(float(want), rel=1e-6)
    assert expected[0] == pytest.approx(0.5 * 5.0 + 0.5 * max(5.0, float(v_next[0])))


def test_actor_loss_is_normalised_by_one_plus_lambda() -> None:
    agent = small_agent()
    learner = OnlineLearner(agent, OnlineConfig(autotune_alpha=False, alpha_init=0.2, world_model=MODEL_FREE))
    learner.lagrange.lam = 3.0
    batch = make_point_dataset(episodes=2, length=16).sample(16, np.random.default_rng(0))
    with torch.no_grad():
        torch.manual_seed(7)
        z = agent.encoder(torch.as_tensor(batch.obs))
        a, logp = agent.actor_on.sample(z)
        q_r = agent.q_r(z, a).min(dim=-1).values
        q_c = agent.q_c(z, a).max(dim=-1).values
        expected = ((0.2 * logp - q_r + 3.0 * q_c) / 4.0).mean().item()
    torch.manual_seed(7)
    assert learner.actor_step(batch)["online/loss_actor"] == pytest.approx(expected, rel=1e-5)


def test_imagined_actor_loss_follows_pi_on_through_the_world_model() -> None:
    """(−R + λC)/(1 + λ) + w_h·mean_t max(0, Q_h) over an H-step imagined rollout, recomputed by hand."""
    agent = small_agent()
    horizon, gamma, alpha, lam, w_h = 3, 0.9, 0.2, 2.0, 0.5
    cfg = OnlineConfig(gamma=gamma, autotune_alpha=False, alpha_init=alpha, anchor_weight=0.0,
                       world_model=OnlineWorldModelConfig(imagine_horizon=horizon, reach_weight=w_h))  # fmt: skip
    learner = OnlineLearner(agent, cfg)
    learner.lagrange.lam = lam
    batch = make_point_dataset(episodes=2, length=16).sample(16, np.random.default_rng(0))
    wm = agent.world_model
    with torch.no_grad():
        torch.manual_seed(7)
        z = agent.encoder(torch.as_tensor(batch.obs))
        ret_r, ret_c, infeasible, disc = 0.0, 0.0, 0.0, torch.ones(16)
        for _ in range(horizon):
            a, logp = agent.actor_on.sample(z)
            infeasible = infeasible + agent.qh_max(z, a).clamp_min(0)
            z, r, c_logit, cont_logit = wm.step(z, a)
            ret_r = ret_r + disc * (r - alpha * logp)
            ret_c = ret_c + disc * wm.cost_prob(c_logit)
            disc = disc * gamma * torch.sigmoid(cont_logit)
        a, logp = agent.actor_on.sample(z)
        ret_r = ret_r + disc * (agent.q_r(z, a).min(-1).values - alpha * logp)
        ret_c = ret_c + disc * agent.q_c(z, a).max(-1).values
        expected = ((-ret_r + lam * ret_c) / (1 + lam)).mean() + w_h * (infeasible / horizon).mean()
    before = {k: v.clone() for k, v in wm.state_dict().items()}
    torch.manual_seed(7)
    m = learner.actor_step(batch)
    assert m["online/loss_actor"] == pytest.approx(expected.item(), rel=1e-5)
    assert m["online/imagine_return"] == pytest.approx(ret_r.mean().item(), rel=1e-5)
    # the actor's loss moves π_on only: the world model and the critics keep their weights and gradients
    assert all(torch.equal(before[k], v) for k, v in wm.state_dict().items())
    assert all(p.grad is None for p in wm.parameters())


def test_the_world_model_learns_the_batches_transitions_online() -> None:
    agent = small_agent()
    learner = OnlineLearner(agent, OnlineConfig(lr_critic=1e-3, world_model=OnlineWorldModelConfig(lr=3e-3)))
    assert learner.encoder_frozen  # the latent space stays π_off's and the model's
    ds = make_point_dataset(episodes=4, length=16)
    rng = np.random.default_rng(0)
    first = learner.update(ds.sample(64, rng))
    for _ in range(200):
        last = learner.update(ds.sample(64, rng))
    assert last["wm/reward"] < 0.5 * first["wm/reward"]
    assert last["wm/consistency"] < first["wm/consistency"]
    assert learner.state_dict()["opt_world_model"] is not None


def test_selection_scores_each_policy_by_an_imagined_rollout_of_itself() -> None:
    agent = small_agent()
    agent.spec.selection_horizon, agent.spec.selection_gamma = 2, 0.9
    with torch.no_grad():
        for p in agent.actor_on.parameters():
            p.add_(0.3 * torch.randn_like(p))
        obs, zero = torch.randn(4, 2), torch.zeros(4, 2)
        a_on, a_off, q_r, q_c, *_ = agent.graph_outputs(obs, zero)
        wm, z0 = agent.world_model, agent.encoder(obs)
        for col, (actor, a0) in enumerate(((agent.actor_on, a_on), (agent.actor_off, a_off))):
            z, a, r_sum, c_sum, disc = z0, a0, 0.0, 0.0, 1.0
            for _ in range(2):
                z, r, c_logit, cont_logit = wm.step(z, a)
                r_sum, c_sum = r_sum + disc * r, c_sum + disc * wm.cost_prob(c_logit)
                disc = disc * 0.9 * torch.sigmoid(cont_logit)
                a = actor(z, zero)
            assert torch.allclose(q_r[:, col], r_sum + disc * agent.q_r(z, a).min(-1).values, atol=1e-6)
            assert torch.allclose(q_c[:, col], c_sum + disc * agent.q_c(z, a).max(-1).values, atol=1e-6)


def test_an_offline_run_without_world_model_needs_the_model_free_ablation() -> None:
    agent = Agent(AgentSpec(obs_shape=(2,), action_dim=2, latent_dim=8, hidden_dim=32))
    with pytest.raises(ValueError, match="--no-world-model"):
        OnlineLearner(agent, OnlineConfig())
    assert OnlineLearner(agent, OnlineConfig(world_model=MODEL_FREE)).world_model is None
    assert agent.spec.selection_horizon == 0


def test_the_anchor_pulls_pi_on_toward_pi_offs_mean_action() -> None:
    batch = make_point_dataset(episodes=2, length=16).sample(32, np.random.default_rng(0))
    obs = torch.as_tensor(batch.obs)
    distances = {}
    for weight in (0.0, 10.0):
        agent = small_agent()
        with torch.no_grad():
            for p in agent.actor_on.parameters():
                p.add_(0.3 * torch.randn_like(p, generator=torch.Generator().manual_seed(1)))
        learner = OnlineLearner(agent, OnlineConfig(anchor_weight=weight, lr_actor=1e-3))
        with torch.no_grad():
            mu_on, _ = agent.actor_on.distribution_params(agent.encoder(obs))
            mu_off, _ = agent.actor_off.distribution_params(agent.encoder_off(obs))
            by_hand = (torch.tanh(mu_on) - torch.tanh(mu_off)).pow(2).sum(-1).mean().item()
            assert learner._anchor(obs, agent.encoder(obs)).item() == pytest.approx(by_hand, rel=1e-6)
        assert by_hand > 0.01
        for _ in range(100):
            m = learner.actor_step(batch)
        assert ("online/anchor" in m) == (weight > 0)
        with torch.no_grad():
            distances[weight] = learner._anchor(obs, agent.encoder(obs)).item()
    assert distances[10.0] < 0.2 * by_hand and distances[10.0] < distances[0.0]


def test_mixed_sampler_draws_the_configured_offline_fraction() -> None:
    offline = make_point_dataset(episodes=2, length=16)  # observations in [-1, 1]
    replay = StepReplay(64, (2,), 2)
    replay.obs = np.zeros((64, 2), np.float32)  # state replay for the test: mark online obs with 5.0
    n = 20
    replay.add_batch("s", 0, {"obs": np.full((n, 2), 5.0, np.float32), "action": np.zeros((n, 2), np.float32),
                              "reward": np.zeros(n, np.float32), "cost": np.zeros(n, np.float32),
                              "terminated": np.zeros(n, bool), "truncated": np.zeros(n, bool)})  # fmt: skip
    batch: Batch = MixedSampler(offline, replay, 0.25).sample(40, np.random.default_rng(0))
    assert int((batch.obs[:, 0] == 5.0).sum()) == 30
    assert MixedSampler(offline, StepReplay(8, (2,), 2), 0.25).sample(
        8, np.random.default_rng(0)
    ).obs.shape == (8, 2)


def test_offline_rows_of_a_mixed_batch_count_as_unshielded() -> None:
    offline = make_point_dataset(episodes=2, length=16)
    replay = StepReplay(64, (2,), 2)
    replay.obs = np.zeros((64, 2), np.float32)
    n = 20
    replay.add_batch("s", 0, {"obs": np.full((n, 2), 5.0, np.float32), "action": np.zeros((n, 2), np.float32),
                              "proposed": np.ones((n, 2), np.float32), "shielded": np.ones(n, bool),
                              "reward": np.zeros(n, np.float32), "cost": np.zeros(n, np.float32),
                              "terminated": np.zeros(n, bool), "truncated": np.zeros(n, bool)})  # fmt: skip
    batch = MixedSampler(offline, replay, 0.5).sample(40, np.random.default_rng(0))
    online = batch.obs[:, 0] == 5.0
    assert batch.shielded is not None and batch.proposed is not None
    assert np.array_equal(batch.shielded, online)
    assert np.array_equal(batch.proposed[~online], batch.actions[~online])
    assert np.all(batch.proposed[online] == 1.0)


def _shielded_batch() -> Batch:
    """Two terminal steps (targets = rewards): row 0's proposal +0.8 was replaced by the executed −0.8."""
    return Batch(
        obs=np.array([[0.5, 0.5], [-0.5, -0.5]], np.float32),
        actions=np.array([[-0.8, -0.8], [0.3, 0.3]], np.float32),
        rewards=np.array([1.0, 0.5], np.float32),
        costs=np.zeros(2, np.float32),
        next_obs=np.zeros((2, 2), np.float32),
        terminals=np.ones(2, bool),
        proposed=np.array([[0.8, 0.8], [0.3, 0.3]], np.float32),
        shielded=np.array([True, False]),
    )


@pytest.mark.parametrize("learn", [True, False])
def test_a_replaced_proposal_learns_the_executed_outcome_less_the_penalty(learn: bool) -> None:
    agent = small_agent()
    cfg = OnlineConfig(lr_critic=3e-3, learn_interventions=learn, intervention_penalty=1.5)
    learner = OnlineLearner(agent, cfg)
    batch = _shielded_batch()
    obs = torch.as_tensor(batch.obs[:1])
    for _ in range(600):
        m = learner.critic_step(batch)
    assert m["online/replaced_in_batch"] == (1.0 if learn else 0.0)
    with torch.no_grad():
        z = agent.encoder(obs)
        q_exec = agent.q_r(z, torch.as_tensor(batch.actions[:1])).min().item()
        q_prop = agent.q_r(z, torch.as_tensor(batch.proposed[:1])).min().item()
    assert q_exec == pytest.approx(1.0, abs=0.05)
    if learn:
        assert q_prop == pytest.approx(-0.5, abs=0.05)  # the executed outcome 1.0, less the penalty 1.5
    else:
        assert q_prop > 0.0  # never trained on the proposal: it sits between the two rows' values


def test_reachability_critics_learn_the_executed_actions_only() -> None:
    """Q_h models the real dynamics: the replaced proposals must not change its loss."""
    losses = []
    for learn in (True, False):
        learner = OnlineLearner(
            small_agent(), OnlineConfig(learn_interventions=learn, intervention_penalty=0.4)
        )
        m = learner.critic_step(_shielded_batch())
        losses.append((m["online/loss_q_h"], m["online/loss_v_h"], m["online/loss_q_r"]))
    assert losses[0][:2] == pytest.approx(losses[1][:2], rel=1e-6)
    assert losses[0][2] != pytest.approx(losses[1][2], rel=1e-3)  # Q_r did see the proposal


class PointCostEnv(gym.Env):
    """Point robot: reward = progress to (0, 0.8), cost 1 per step with x > 0.5, 20 steps."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.s, self.t = self.np_random.uniform(-0.9, 0.9, 2).astype(np.float32), 0
        return self.s.copy(), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        goal = np.array([0.0, 0.8], np.float32)
        s2 = np.clip(self.s + 0.15 * np.asarray(action, np.float32), -1, 1)
        reward = float(np.linalg.norm(goal - self.s) - np.linalg.norm(goal - s2))
        self.s, self.t = s2, self.t + 1
        return s2.copy(), reward, False, self.t >= 20, {"cost": float(s2[0] > 0.5)}


def test_train_online_runs_checkpoints_and_resumes(tmp_path: Path) -> None:
    gym.register("reachsafe_test/PointCost-v0", entry_point=PointCostEnv)
    write_hdf5(make_point_dataset(episodes=4, length=20), tmp_path / "ds.h5")
    save_checkpoint(tmp_path / "run" / "checkpoints" / "latest.pt", small_agent(), 0,
                    extra={"dataset": {"source": str(tmp_path / "ds.h5")},
                           "config": {"shield_threshold_floor": -100.0}})  # the raw quantile  # fmt: skip
    cfg = OnlineConfig(batch_size=16, replay=ReplayConfig(warmup_steps=20), vpa=VPAConfig(steps=5))
    out = tmp_path / "online"
    first = train_online(tmp_path / "run", "reachsafe_test/PointCost-v0", 60, cfg, out, eval_episodes=0)
    assert (first.steps, first.episodes) == (60, 3)
    rows = [json.loads(line) for line in (out / "episodes.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [20, 40, 60] and all(r["lambda"] >= 0 for r in rows)
    assert rows[-1]["cumulative_cost"] == pytest.approx(first.cumulative_cost)
    assert not (out / "evals.jsonl").read_text(), "eval_episodes=0: no evaluation at all"
    second = train_online(
        tmp_path / "run",
        "reachsafe_test/PointCost-v0",
        100,
        cfg,
        out,
        resume=True,
        eval_episodes=2,
        eval_every=30,
    )
    assert (second.steps, second.episodes) == (100, 5)
    evals = [json.loads(line) for line in (out / "evals.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evals] == [60, 90, 100]  # every 30 steps of the resumed run, and the end
    assert [e["updates"] for e in evals] == [
        60 - 19,
        90 - 19,
        100 - 19,
    ]  # updates from step 19 on and evals[-1]["episodes"] == 2
    summary = json.loads((out / "summary.json").read_text())
    assert summary["final_eval"]["episodes"] == 2 and summary["steps"] == 100
    # the shield acted with the threshold a bundle shipped now would carry: recalibrated on the current Q_h,
    # raised (never lowered) to keep within the intervention budget on the run's recent proposals
    run_ckpt = load_checkpoint(tmp_path / "run" / "checkpoints" / "latest.pt")[1]
    ship = shield_for_ship(cfg, run_ckpt, load_dataset(tmp_path / "ds.h5"))
    calibrated = ship(load_checkpoint(out / "checkpoint.pt")[0])["threshold"]
    assert summary["shield_threshold"] >= calibrated - 1e-6
    assert summary["shield_threshold"] != pytest.approx(ship(small_agent())["threshold"])  # Q_h moved
    ckpt = load_checkpoint(out / "checkpoint.pt")[1]
    assert ckpt["online"]["updates"] == 100 - 20 + 1 and ckpt["online_run"]["steps"] == 100
    # re-evaluation acts as the run's own evaluation did: on the run's seeds it reproduces the final one
    again = reevaluate(out, 2, seed_base=10_000)
    assert (again["return_mean"], again["cost_mean"]) == pytest.approx(
        (summary["final_eval"]["return_mean"], summary["final_eval"]["cost_mean"])
    )
    assert again["threshold"] == summary["shield_threshold"]
    assert reevaluate(out, 3, seed_base=50_000)["episodes"] == 3
    with pytest.raises(ReevalError, match="has not finished"):
        reevaluate(tmp_path / "run", 1, seed_base=0)
    not_online = tmp_path / "not_online"
    not_online.mkdir()
    (not_online / "summary.json").write_text((out / "summary.json").read_text())
    (not_online / "checkpoint.pt").write_bytes((tmp_path / "run" / "checkpoints" / "latest.pt").read_bytes())
    with pytest.raises(ReevalError, match="no online learner state"):
        reevaluate(not_online, 1, seed_base=0)
    (out / "summary.json").write_text(json.dumps({"steps": 100}))
    with pytest.raises(ReevalError, match="lacks"):
        reevaluate(out, 1, seed_base=0)
    (out / "summary.json").write_text("{truncated")
    with pytest.raises(ReevalError, match="not valid JSON"):
        reevaluate(out, 1, seed_base=0)


def test_online_config_reads_exponent_floats_from_the_cli_and_yaml(tmp_path: Path) -> None:
    import argparse

    from reachsafe.protocol.config import ConfigError, add_config_arguments, load_config

    parser = argparse.ArgumentParser()
    add_config_arguments(parser, OnlineConfig)
    (tmp_path / "online.yaml").write_text("kind: online\nversion: 1\nlr_actor: 3e-5\n")  # YAML 1.1: a string
    args = parser.parse_args(["--lr-alpha", "2e-3", "--lr-encoder", "0"])
    cfg = load_config(OnlineConfig, tmp_path / "online.yaml", args)
    assert (cfg.lr_actor, cfg.lr_alpha, cfg.lr_encoder) == (3e-5, 2e-3, 0.0)
    with pytest.raises(ConfigError, match="--lr-alpha: expected a number"):
        load_config(OnlineConfig, None, parser.parse_args(["--lr-alpha", "fast"]))
    with pytest.raises(ConfigError, match="lr_encoder must be ≥ 0"):
        load_config(OnlineConfig, None, parser.parse_args(["--lr-encoder", "-1"]))
