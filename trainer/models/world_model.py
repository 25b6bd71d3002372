"""Latent world model (TD-MPC style): ẑ' = f(z, a) with reward, cost and continuation heads.

Trained on real sequences with a multi-step latent consistency loss against a target encoder; its
losses flow into the encoder and shape the latent space the critics and actor read. It also rolls
forward under a policy (:meth:`WorldModel.imagine`) for the offline learner's imagined value and
reachability targets; online it keeps learning one-step transitions and π_on and the policy selection
imagine through it (docs/method.md §13).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from reachsafe.trainer.models.layers import mlp


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


def upgrade_world_model_state(
    state: dict[str, torch.Tensor], cost_pos_weight: float
) -> dict[str, torch.Tensor]:
    """A world model's weights as this version stores them (older states lack the cost-logit offset)."""
    if "cost_logit_offset" in state:
        return state
    return {**state, "cost_logit_offset": torch.tensor(math.log(cost_pos_weight))}


class WorldModel(nn.Module):
    """ẑ' = f(z, a) with reward, cost-probability and continuation heads.

    The cost head is trained with positives up-weighted by ``cost_pos_weight`` (w), whose optimal
    logit is ln(w·p/(1−p)); the buffer ``cost_logit_offset`` = ln w travels with the weights, so
    :meth:`cost_prob` (σ(logit − ln w)) is the real probability wherever the model is loaded.
    """

    def __init__(
        self, latent_dim: int, action_dim: int, hidden_dim: int, cost_pos_weight: float = 1.0
    ) -> None:
        super().__init__()
        self.register_buffer("cost_logit_offset", torch.tensor(math.log(cost_pos_weight)))
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

    def weigh_cost_positives(self, cost_pos_weight: float) -> None:
        """Train (and read) the cost head with positives up-weighted by ``cost_pos_weight``."""
        self.cost_logit_offset.fill_(math.log(cost_pos_weight))

    def cost_prob(self, cost_logit: torch.Tensor) -> torch.Tensor:
        """P(c > 0) from the cost head's logit."""
        return torch.sigmoid(cost_logit - self.cost_logit_offset)

    def imagine(
        self, z0: torch.Tensor, policy: Callable[[torch.Tensor], torch.Tensor], horizon: int
    ) -> ImaginedRollout:
        """Roll ``horizon`` steps from z0 [B, L], acting with a_t = policy(ẑ_t)."""
        z = z0
        rewards, costs, conts = [], [], []
        for _ in range(horizon):
            z, r_hat, c_logit, cont_logit = self.step(z, policy(z))
            rewards.append(r_hat)
            costs.append(self.cost_prob(c_logit))
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
