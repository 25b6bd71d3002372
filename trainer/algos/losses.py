"""Small pure loss and target functions of the offline method (docs/method.md §2–§5)."""

from __future__ import annotations

import torch

from reachsafe.trainer.models.networks import SAFE_SIGNAL


def expectile_loss(diff: torch.Tensor, tau: float) -> torch.Tensor:
    """Mean of |τ − 1(diff < 0)|·diff².

    With ``diff = q − v`` and τ > 0.5, v is pushed toward an *upper* expectile of q (IQL's V_r).
    With ``diff = v − q`` and τ > 0.5, v is pushed toward a *lower* expectile (V_h: best feasibility).
    """
    weight = torch.where(diff < 0, 1.0 - tau, tau)
    return (weight * diff.pow(2)).mean()


def reachability_signal(cost: torch.Tensor, c_scale: float) -> torch.Tensor:
    """h = +c_scale where c > 0 (in a hazard), −1 (``SAFE_SIGNAL``) elsewhere (FISOR)."""
    return torch.where(cost > 0, torch.full_like(cost, c_scale), torch.full_like(cost, SAFE_SIGNAL))


def hj_target(h: torch.Tensor, next_v_h: torch.Tensor, terminal: torch.Tensor, gamma: float) -> torch.Tensor:
    """Discounted HJ reachability target (1−γ)h + γ·max(h, V_h(z')); h itself at terminals."""
    bootstrap = (1.0 - gamma) * h + gamma * torch.maximum(h, next_v_h)
    return torch.where(terminal.bool(), h, bootstrap)


def td_target(
    signal: torch.Tensor, next_v: torch.Tensor, terminal: torch.Tensor, gamma: float
) -> torch.Tensor:
    """r + γ(1 − terminal)·V(z')."""
    return signal + gamma * (1.0 - terminal.float()) * next_v


def feasible_advantage(
    q_r: torch.Tensor, v_r: torch.Tensor, q_c: torch.Tensor, v_c: torch.Tensor, cost_coef: float
) -> torch.Tensor:
    """(Q_r − V_r) − κ(Q_c − V_c): the reward advantage, less κ times the action's extra expected cost.

    κ = 0 is the reward-only form of docs/method.md §4. κ > 0 also prefers, among actions Q_h calls feasible, those whose
    in-sample cost is lower than the behaviour's average from that state.
    """
    return (q_r - v_r) - cost_coef * (q_c - v_c)


def feasibility_weights(
    v_h: torch.Tensor,
    q_h: torch.Tensor,
    advantage: torch.Tensor,
    beta_h: float,
    beta_r: float,
    max_h: float = 150.0,
    max_r: float = 100.0,
) -> torch.Tensor:
    """Feasibility-split advantage weights of the actor's weighted behaviour cloning.

    Infeasible states (V_h > 0): clip(exp(β_h(V_h − Q_h)), 0, max_h) — prefer actions that lower Q_h.
    Feasible states and feasible actions (V_h ≤ 0, Q_h ≤ 0): clip(exp(β_r·advantage), 0, max_r), with
    the advantage from `feasible_advantage` (Q_r − V_r at κ = 0).
    Feasible states, infeasible actions: 0.
    """
    w_h = torch.exp(beta_h * (v_h - q_h)).clamp(0.0, max_h)
    w_r = torch.exp(beta_r * advantage).clamp(0.0, max_r)
    feasible_state = v_h <= 0
    feasible_action = q_h <= 0
    zero = torch.zeros_like(w_r)
    return torch.where(feasible_state, torch.where(feasible_action, w_r, zero), w_h)


def effective_sample_share(weights: torch.Tensor) -> torch.Tensor:
    """Kish effective sample size over the batch size, (Σw)² / (n·Σw²): 1 for equal weights, ~1/n for one
    (a float64 scalar on the weights' device)."""
    w = weights.detach().to(torch.float64)
    return w.sum() ** 2 / (w.numel() * (w**2).sum()).clamp_min(1e-12)


def weighted_bc_loss(log_prob: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """−mean(w · log π(a|z)); the weights carry no gradient."""
    return -(weights.detach() * log_prob).mean()


def imagined_targets(
    rewards: torch.Tensor,
    cost_prob: torch.Tensor,
    continuation_prob: torch.Tensor,
    v_r_end: torch.Tensor,
    v_c_end: torch.Tensor,
    v_h_end: torch.Tensor,
    gamma: float,
    gamma_h: float,
    c_scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """H-step model-based targets (y_r, y_c, y_h) on the start state of an imagined rollout.

    Shapes: rewards, cost_prob, continuation_prob [B, H] (step t predicts the transition from ẑ_t);
    v_*_end [B] (the value networks at ẑ_H). The cost head predicts P(c > 0), so a step costs
    ĉ_t = 1(P > 0.5) and ends the episode where P(continue) < 0.5. Backward from y_H = V(ẑ_H):
    y_r,t = r̂_t + γ(1 − d_t)y_r,t+1; y_c likewise with ĉ_t; y_h,t = (1−γ_h)h_t + γ_h·max(h_t, y_h,t+1)
    with h_t = reachability_signal(ĉ_t), γ_h in place of γ, and y_h,t = h_t at a terminal — the recursions of
    :func:`td_target` and :func:`hj_target` along the imagined path.
    """
    cost = (cost_prob > 0.5).to(rewards.dtype)
    terminal = (continuation_prob < 0.5).to(rewards.dtype)
    h = reachability_signal(cost, c_scale)
    y_r, y_c, y_h = v_r_end, v_c_end, v_h_end
    for t in reversed(range(rewards.shape[1])):
        y_r = td_target(rewards[:, t], y_r, terminal[:, t], gamma)
        y_c = td_target(cost[:, t], y_c, terminal[:, t], gamma)
        y_h = hj_target(h[:, t], y_h, terminal[:, t], gamma_h)
    return y_r, y_c, y_h
