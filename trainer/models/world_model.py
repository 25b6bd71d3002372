"""Latent world model (TD-MPC style): ẑ' = f(z, a) with reward, cost and continuation heads.

Trained on real sequences with a multi-step latent consistency loss against a target encoder; its
losses flow into the encoder and shape the latent space the critics and actor read. It also rolls
forward under a policy (:meth:`WorldModel.imagine`) for the offline learner's imagined value and
reachability targets.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from reachsafe.trainer.models.networks import mlp


@dataclass(frozen=True)
class WorldModelLossWeights:
    consistency: float
    reward: float
    cost: float
    continuation: float
    rho: float
    cost_pos_weight: float


@dataclass(frozen=True)
class ImaginedRollout:
    """Per-step predictions [B, H] of an imagined rollout and its last latent ẑ_H [B, L]."""

    rewards: torch.Tensor
    cost_prob: torch.Tensor
    continuation_prob: torch.Tensor
    final_latent: torch.Tensor


def bce_with_pos_weight(logits: torch.Tensor, target: torch.Tensor, pos_weight: float) -> torch.Tensor:
    """Binary cross-entropy with positive samples up-weighted (sparse costs)."""
    pw = torch.as_tensor(pos_weight, dtype=logits.dtype)
    return torch.nn.functional.binary_cross_entropy_with_logits(logits, target, pos_weight=pw)


class WorldModel(nn.Module):
    def __init__(self, latent_dim: int, action_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.dynamics = nn.Sequential(
            mlp(latent_dim + action_dim, hidden_dim, latent_dim), nn.LayerNorm(latent_dim)
        )
        self.reward = mlp(latent_dim + action_dim, hidden_dim, 1)
        self.cost = mlp(latent_dim + action_dim, hidden_dim, 1)
        self.continuation = mlp(latent_dim + action_dim, hidden_dim, 1)

    def step(self, z: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(next latent, reward, cost logit, continuation logit)."""
        x = torch.cat([z, a], dim=-1)
        return (
            self.dynamics(x),
            self.reward(x).squeeze(-1),
            self.cost(x).squeeze(-1),
            self.continuation(x).squeeze(-1),
        )

    def imagine(
        self,
        z0: torch.Tensor,
        policy: Callable[[torch.Tensor], torch.Tensor],
        horizon: int,
        cost_pos_weight: float = 1.0,
    ) -> ImaginedRollout:
        """Roll ``horizon`` steps from z0 [B, L], acting with a_t = policy(ẑ_t).

        The cost head is trained with positives up-weighted by ``cost_pos_weight`` (w), whose optimal
        logit is ln(w·p/(1−p)); σ(logit − ln w) undoes that, so ``cost_prob`` is the real probability.
        """
        z = z0
        rewards, costs, conts = [], [], []
        offset = math.log(cost_pos_weight)
        for _ in range(horizon):
            z, r_hat, c_logit, cont_logit = self.step(z, policy(z))
            rewards.append(r_hat)
            costs.append(torch.sigmoid(c_logit - offset))
            conts.append(torch.sigmoid(cont_logit))
        return ImaginedRollout(
            torch.stack(rewards, 1), torch.stack(costs, 1), torch.stack(conts, 1), final_latent=z
        )

    def loss(
        self,
        z0: torch.Tensor,
        target_latents: torch.Tensor,
        actions: torch.Tensor,
        rewards: torch.Tensor,
        costs: torch.Tensor,
        terminals: torch.Tensor,
        w: WorldModelLossWeights,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Roll the model H steps from z0 along the dataset actions; returns the loss and its parts
        (weighted over the steps, detached float64 scalars, on z0's device).

        Shapes: z0 [B, L]; target_latents [B, H, L] (target encoder of o_1 … o_H); actions [B, H, A];
        rewards, costs, terminals [B, H]. Sequences never cross an episode boundary before step H.
        """
        horizon = actions.shape[1]
        z = z0
        totals = {
            k: z0.new_zeros((), dtype=torch.float64)
            for k in ("consistency", "reward", "cost", "continuation")
        }
        loss = z0.new_zeros(())
        norm = sum(w.rho**t for t in range(horizon))
        for t in range(horizon):
            z, r_hat, c_logit, cont_logit = self.step(z, actions[:, t])
            parts = {
                "consistency": F.mse_loss(z, target_latents[:, t]),
                "reward": F.mse_loss(r_hat, rewards[:, t]),
                "cost": bce_with_pos_weight(c_logit, (costs[:, t] > 0).float(), w.cost_pos_weight),
                "continuation": F.binary_cross_entropy_with_logits(cont_logit, 1.0 - terminals[:, t].float()),
            }
            weight = w.rho**t / norm
            step_loss = (
                w.consistency * parts["consistency"]
                + w.reward * parts["reward"]
                + w.cost * parts["cost"]
                + w.continuation * parts["continuation"]
            )
            loss = loss + weight * step_loss
            for k, v in parts.items():
                totals[k] += weight * v.detach().to(torch.float64)
        return loss, totals
