"""Each loss / target of the offline method against values worked out by hand."""

import math

import pytest
import torch

from reachsafe.trainer.algos.losses import (
    effective_sample_share,
    expectile_loss,
    feasibility_weights,
    feasible_advantage,
    hj_target,
    imagined_targets,
    reachability_signal,
    td_target,
    weighted_bc_loss,
)
from reachsafe.trainer.models.networks import TanhGaussianActor


def t(*values):
    return torch.tensor(values, dtype=torch.float32)


def test_expectile_loss_weights_each_side():
    # diff = [1, -2], tau 0.9: 0.9·1² and 0.1·(−2)² → mean (0.9 + 0.4) / 2
    assert expectile_loss(t(1.0, -2.0), 0.9).item() == pytest.approx(0.65)
    # tau 0.5 is half the mean squared error
    assert expectile_loss(t(1.0, -2.0), 0.5).item() == pytest.approx(0.5 * (1 + 4) / 2)


def test_lower_expectile_pushes_value_down():
    """V_h's form expectile(v − q, τ_h): minimising over v lands below the mean of q."""
    q = t(-1.0, 1.0)
    v = torch.zeros((), requires_grad=True)
    opt = torch.optim.SGD([v], lr=0.5)
    for _ in range(60):
        opt.zero_grad()
        expectile_loss(v - q, 0.9).backward()
        opt.step()
    # stationary point: 0.9·(v+1) = 0.1·(1−v)  →  v = −0.8
    assert v.item() == pytest.approx(-0.8, abs=1e-3)


def test_reachability_signal():
    assert reachability_signal(t(0.0, 0.5, 2.0), 25.0).tolist() == [-1.0, 25.0, 25.0]


def test_hj_target_by_hand():
    h = t(25.0, -1.0, -1.0, 25.0)
    next_v = t(-1.0, -1.0, 5.0, 30.0)
    terminal = t(0.0, 0.0, 0.0, 1.0)
    y = hj_target(h, next_v, terminal, gamma=0.9)
    # 0.1·25 + 0.9·max(25, −1); 0.1·(−1) + 0.9·(−1); 0.1·(−1) + 0.9·5; terminal → h
    assert y.tolist() == pytest.approx([25.0, -1.0, 4.4, 25.0])


def test_td_target_by_hand():
    assert td_target(t(1.0, 1.0), t(2.0, 2.0), t(0.0, 1.0), 0.9).tolist() == pytest.approx([2.8, 1.0])


def test_imagined_targets_by_hand():
    """Two rollouts of H = 2, γ = 0.5, c_scale 10: the second predicts a terminal at its first step."""
    rewards = torch.tensor([[1.0, 2.0], [1.0, 2.0]])
    cost_prob = torch.tensor([[0.1, 0.9], [0.1, 0.9]])  # ĉ = [0, 1]: h = [−1, 10]
    continuation = torch.tensor([[0.9, 0.9], [0.2, 0.9]])  # d = [0, 0] and [1, 0]
    y_r, y_c, y_h = imagined_targets(
        rewards,
        cost_prob,
        continuation,
        t(4.0, 4.0),
        t(1.0, 1.0),
        t(-1.0, -1.0),
        gamma=0.5,
        gamma_h=0.5,
        c_scale=10.0,
    )
    # y_r: 2 + 0.5·4 = 4, then 1 + 0.5·4 = 3; terminal at step 0 → r̂_0 = 1
    assert y_r.tolist() == pytest.approx([3.0, 1.0])
    # y_c: 1 + 0.5·1 = 1.5, then 0 + 0.5·1.5 = 0.75; terminal → ĉ_0 = 0
    assert y_c.tolist() == pytest.approx([0.75, 0.0])
    # y_h: 0.5·10 + 0.5·max(10, −1) = 10, then 0.5·(−1) + 0.5·max(−1, 10) = 4.5; terminal → h_0 = −1
    assert y_h.tolist() == pytest.approx([4.5, -1.0])


def test_imagined_reachability_bootstraps_from_the_horizon():
    """A safe imagined path ending where V_h > 0 is not safe: (1−γ_h)(−1) + γ_h·max(−1, 3) = 1, then 0.

    y_h discounts with γ_h = 0.5, y_r with γ = 0.9: 0.9²·1 = 0.81.
    """
    zeros = torch.zeros(1, 2)
    y_r, _, y_h = imagined_targets(
        zeros, zeros, torch.ones(1, 2), t(1.0), t(0.0), t(3.0), gamma=0.9, gamma_h=0.5, c_scale=10.0
    )
    assert y_h.tolist() == pytest.approx([0.0])
    assert y_r.tolist() == pytest.approx([0.81])


def test_feasibility_weights_by_hand():
    v_h = t(1.0, -1.0, -1.0, 2.0, -1.0)
    q_h = t(0.8, -0.5, 0.5, -1.0, -0.5)
    q_r = t(0.0, 1.0, 1.0, 0.0, 3.0)
    v_r = t(0.0, 0.5, 0.5, 0.0, 1.0)
    adv = feasible_advantage(q_r, v_r, q_c=t(0, 0, 0, 0, 0), v_c=t(0, 0, 0, 0, 0), cost_coef=1.0)
    w = feasibility_weights(v_h, q_h, adv, beta_h=5.0, beta_r=3.0, max_h=150.0, max_r=100.0)
    expected = [
        math.exp(5 * 0.2),  # infeasible state: exp(β_h (V_h − Q_h))
        math.exp(3 * 0.5),  # feasible state, feasible action: exp(β_r (Q_r − V_r))
        0.0,  # feasible state, infeasible action
        150.0,  # exp(15) clipped
        100.0,  # exp(6) clipped
    ]
    assert w.tolist() == pytest.approx(expected, rel=1e-5)


def test_feasible_advantage_charges_extra_cost_by_hand():
    q_r, v_r = t(1.0, 1.0), t(0.5, 0.5)
    q_c, v_c = t(2.0, 0.0), t(1.0, 1.0)
    assert feasible_advantage(q_r, v_r, q_c, v_c, cost_coef=0.0).tolist() == pytest.approx([0.5, 0.5])
    # κ = 0.5: the costlier action loses 0.5·(2 − 1), the cheaper one gains 0.5·(1 − 0)
    assert feasible_advantage(q_r, v_r, q_c, v_c, cost_coef=0.5).tolist() == pytest.approx([0.0, 1.0])


def test_effective_sample_share_by_hand():
    assert effective_sample_share(t(1.0, 1.0, 1.0, 1.0)) == pytest.approx(1.0)
    # (0 + 0 + 0 + 4)² / (4 · 16) = 0.25: all the weight on one of four samples
    assert effective_sample_share(t(0.0, 0.0, 0.0, 4.0)) == pytest.approx(0.25)
    # (1 + 3)² / (2 · (1 + 9)) = 0.8
    assert effective_sample_share(t(1.0, 3.0)) == pytest.approx(0.8)


def test_weighted_bc_loss_by_hand():
    assert weighted_bc_loss(t(-1.0, -2.0), t(2.0, 0.0)).item() == pytest.approx(1.0)


def test_tanh_gaussian_log_prob_matches_torch_distributions():
    torch.manual_seed(0)
    actor = TanhGaussianActor(latent_dim=4, action_dim=2, hidden_dim=8)
    z = torch.randn(16, 4)
    a = torch.rand(16, 2) * 1.8 - 0.9
    mu, log_std = actor.distribution_params(z)
    ref = torch.distributions.TransformedDistribution(
        torch.distributions.Normal(mu, log_std.exp()), [torch.distributions.TanhTransform()]
    )
    assert torch.allclose(actor.log_prob(z, a), ref.log_prob(a).sum(-1), atol=1e-4)
