"""FOSP-lite offline learner (docs/method.md §1–§5): world model, in-sample critics, reachability, weighted BC.

Nothing here evaluates the critics at actions outside the dataset: V_r, V_c, V_h are expectiles of
the target critics at dataset actions, and the actor is weighted behaviour cloning. With the world
model and ``imagine`` on, the values also regress toward targets from short imagined rollouts
(:meth:`OfflineLearner._imagination_losses`), an addition to the in-sample losses.

The learner runs on the device it is given; its random numbers (augmentation, imagination noise)
come from one CPU generator, so a seed draws the same numbers on every device and in every
data-parallel process (:class:`~reachsafe.trainer.models.parallel.Replica`).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

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
from reachsafe.trainer.algos.offline.config import OfflineConfig
from reachsafe.trainer.data.augment import augment, draw_augmentation
from reachsafe.trainer.data.dataset import OfflineDataset, SequenceBatch
from reachsafe.trainer.models.device import autocast, compile_modules, to_device, to_floats
from reachsafe.trainer.models.networks import Agent, AgentSpec, polyak
from reachsafe.trainer.models.parallel import SINGLE, Replica
from reachsafe.trainer.models.world_model import WorldModel, upgrade_world_model_state

logger = logging.getLogger(__name__)


def agent_spec_for(dataset: OfflineDataset, cfg: OfflineConfig) -> AgentSpec:
    return AgentSpec(
        obs_shape=dataset.obs_shape,
        action_dim=dataset.action_dim,
        latent_dim=cfg.network.latent_dim,
        hidden_dim=cfg.network.hidden_dim,
        cnn_channels=cfg.network.cnn_channels,
        n_qh=cfg.network.n_qh,
        primitives=tuple(tuple(p) for p in cfg.primitives),
        world_model=cfg.world_model.enabled,
    )


class OfflineLearner:
    """Holds the agent, the world model, target networks and optimisers; one :meth:`update` per step.

    During offline training π_on is the policy being learned; :meth:`finalize` freezes it as π_off.
    ``replica``: this process's place among data-parallel learners (default: the only one); each
    :meth:`update` then gets this process's rows of the batch.
    """

    def __init__(
        self,
        spec: AgentSpec,
        cfg: OfflineConfig,
        device: torch.device | None = None,
        replica: Replica = SINGLE,
    ) -> None:
        self.cfg = cfg
        self.spec = spec
        self.device = device or torch.device("cpu")
        self.replica = replica
        torch.manual_seed(cfg.seed)
        self.agent = Agent(spec).to(self.device)
        a = self.agent
        self.world_model = a.world_model
        if self.world_model is not None:
            self.world_model.weigh_cost_positives(cfg.world_model.cost_pos_weight)
        self.target_encoder = copy.deepcopy(a.encoder).requires_grad_(False)
        self.target_q_r = copy.deepcopy(a.q_r).requires_grad_(False)
        self.target_q_c = copy.deepcopy(a.q_c).requires_grad_(False)
        self.target_q_h = copy.deepcopy(a.q_h).requires_grad_(False)
        critic_modules = [a.encoder, a.q_r, a.q_c, a.q_h, a.v_r, a.v_c, a.v_h]
        if self.world_model is not None:
            critic_modules.append(self.world_model)
        self.params = [p for m in [*critic_modules, a.actor_on] for p in m.parameters()]
        self.optimizer = torch.optim.Adam(self.params, lr=cfg.lr, fused=True)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.wm_weights = cfg.world_model.loss_weights()
        self.step = 0
        if cfg.compute.compile:
            compile_modules(a.encoder, self.target_encoder)

    @property
    def horizon(self) -> int:
        return self.cfg.world_model.horizon if self.world_model is not None else 1

    # ----- one update -------------------------------------------------------------------
    def _draw(self, sample: Callable[[int], torch.Tensor], rows: int) -> torch.Tensor:
        """``rows`` random rows for this process: drawn for the whole data-parallel batch, so that N
        processes draw what one process at N times the rows draws."""
        return sample(rows * self.replica.count)[self.replica.rows(rows)]

    def _frames(self, obs: np.ndarray) -> torch.Tensor:
        """[B, T, ...] observations → augmented [B, T, ...] frames on the device."""
        x = to_device(obs, self.device)
        if not self.spec.is_image:
            return x
        n = obs.shape[0] * obs.shape[1]
        draws = draw_augmentation(
            n * self.replica.count,
            obs.shape[-1],
            self.cfg.augment.pad,
            self.cfg.augment.colour,
            self.generator,
        ).rows(self.replica.rows(n))
        return augment(x.reshape(n, *obs.shape[2:]), draws).reshape(obs.shape)

    def update(self, batch: SequenceBatch) -> dict[str, float]:
        """One gradient step on ``batch`` (this process's rows of it); returns the scalars to log
        (with data-parallel processes, the mean of every process's)."""
        with autocast(self.device, self.cfg.compute.bf16):
            loss, metrics = self._losses(batch)
        self._step(loss)
        a, ema = self.agent, self.cfg.target_ema
        polyak(self.target_encoder, a.encoder, ema)
        polyak(self.target_q_r, a.q_r, ema)
        polyak(self.target_q_c, a.q_c, ema)
        polyak(self.target_q_h, a.q_h, ema)
        self.step += 1
        return to_floats(metrics, self.replica.mean)

    def _losses(self, batch: SequenceBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The summed loss of every network and the scalars to log (as tensors, on the device).

        The online encoder sees o_0 … o_{H−1} and the target encoder o_1 … o_H: no frame is
        encoded where its latent is not used.
        """
        cfg, a, dev = self.cfg, self.agent, self.device
        b, horizon = batch.actions.shape[:2]
        frames = self._frames(batch.obs)
        frame_shape = frames.shape[2:]
        z_seq = a.encoder(frames[:, :horizon].reshape(b * horizon, *frame_shape)).reshape(b, horizon, -1)
        with torch.no_grad():
            z_next = self.target_encoder(frames[:, 1:].reshape(b * horizon, *frame_shape))

        actions, rewards = to_device(batch.actions, dev), to_device(batch.rewards, dev)
        costs, terminals = to_device(batch.costs, dev), to_device(batch.terminals, dev)
        act = actions.reshape(b * horizon, -1)
        rew = rewards.reshape(-1)
        cost = costs.reshape(-1)
        term = terminals.reshape(-1).float()
        z = z_seq.reshape(b * horizon, -1)
        zd = z.detach()

        with torch.no_grad():
            q_r_t = self.target_q_r(zd, act).min(-1).values
            q_c_t = self.target_q_c(zd, act).max(-1).values
            q_h_t = self.target_q_h(zd, act).max(-1).values
            y_r = td_target(rew, a.v_r(z_next), term, cfg.gamma)
            y_c = td_target(cost, a.v_c(z_next), term, cfg.gamma)
            h = reachability_signal(cost, cfg.c_scale)
            y_h = hj_target(h, a.v_h(z_next), term, cfg.gamma_h)

        v_r, v_c, v_h = a.v_r(zd), a.v_c(zd), a.v_h(zd)
        losses = {
            "v_r": expectile_loss(q_r_t - v_r, cfg.tau_r),
            "v_c": expectile_loss(q_c_t - v_c, cfg.tau_c),
            "v_h": expectile_loss(v_h - q_h_t, cfg.tau_h),
            "q_r": _ensemble_mse(a.q_r(z, act), y_r),
            "q_c": _ensemble_mse(a.q_c(z, act), y_c),
            "q_h": _ensemble_mse(a.q_h(z, act), y_h),
        }
        loss = sum(losses.values())
        metrics: dict[str, torch.Tensor] = {}
        if self.world_model is not None and cfg.imagine.enabled and self.step >= cfg.imagine.start:
            imagine_losses, imagine_metrics = self._imagination_losses(self.world_model, zd, v_r, v_c, v_h)
            loss = (
                loss + cfg.imagine.weight_v * imagine_losses["v"] + cfg.imagine.weight_h * imagine_losses["h"]
            )
            metrics.update(imagine_metrics)
        if self.world_model is not None:
            wm_loss, wm_parts = self.world_model.loss(
                z_seq[:, 0],
                z_next.reshape(b, horizon, -1),
                actions,
                rewards,
                costs,
                terminals,
                self.wm_weights,
            )
            loss = loss + wm_loss
            metrics.update({f"wm/{k}": v for k, v in wm_parts.items()})

        with torch.no_grad():
            if cfg.method == "bc":
                weights = torch.ones_like(rew)
            else:
                weights = self._actor_weights(v_h.detach(), q_h_t, q_r_t, v_r.detach(), q_c_t, v_c.detach())
        # the actor's loss also shapes the encoder: pixels → goal direction is learnt fastest from the actions
        log_prob = a.actor_on.log_prob(z, act)
        actor_loss = weighted_bc_loss(log_prob, weights)

        metrics.update({f"train/loss_{k}": v.detach() for k, v in losses.items()})
        metrics.update(
            {
                "train/actor_loss": actor_loss.detach(),
                "train/log_prob": log_prob.detach().mean(),
                "train/weight_mean": weights.mean(),
                "train/weight_ess": effective_sample_share(weights),
                "train/frac_infeasible_states": (v_h.detach() > 0).float().mean(),
                "train/q_h_mean": q_h_t.mean(),
                "train/v_h_mean": v_h.detach().mean(),
                "train/q_r_mean": q_r_t.mean(),
                "train/q_c_mean": q_c_t.mean(),
            }
        )
        return loss + actor_loss, metrics

    def _imagination_losses(
        self,
        world_model: WorldModel,
        zd: torch.Tensor,
        v_r: torch.Tensor,
        v_c: torch.Tensor,
        v_h: torch.Tensor,
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Expectile losses of V_r, V_c, V_h(zd) toward targets imagined from the dataset latents zd.

        The rollout acts with the actor being trained (π_on here; :meth:`finalize` freezes it as π_off),
        as FOSP imagines with its current policy: offline there is no other π_off yet, and the in-sample
        constraint binds the critics' *dataset* targets, which these targets only add to. Actions are
        samples, as the robot's runtime draws them, with noise from the learner's generator so that a
        resumed run repeats exactly. Each value keeps its in-sample expectile (V_h toward the lower side:
        best feasibility, not the imagined policy's average). Only the value heads get gradients; the
        world model, encoder and actor are untouched by these losses.
        """
        cfg, a = self.cfg, self.agent

        def noise(rows: int) -> torch.Tensor:
            return torch.randn(rows, self.spec.action_dim, generator=self.generator)

        def policy(z: torch.Tensor) -> torch.Tensor:
            return a.actor_on(z, self._draw(noise, z.shape[0]).to(self.device, non_blocking=True))

        with torch.no_grad():
            rollout = world_model.imagine(zd, policy, cfg.imagine.horizon)
            end = rollout.final_latent
            y_r, y_c, y_h = imagined_targets(
                rollout.rewards,
                rollout.cost_prob,
                rollout.continuation_prob,
                a.v_r(end),
                a.v_c(end),
                a.v_h(end),
                cfg.gamma,
                cfg.gamma_h,
                cfg.c_scale,
            )
        losses = {
            "v": expectile_loss(y_r - v_r, cfg.tau_r) + expectile_loss(y_c - v_c, cfg.tau_c),
            "h": expectile_loss(v_h - y_h, cfg.tau_h),
        }
        metrics = {
            "wm/imagine_cost_prob": rollout.cost_prob.mean(),
            "wm/imagine_continuation": rollout.continuation_prob.mean(),
            "wm/imagine_y_r": y_r.mean(),
            "wm/imagine_y_c": y_c.mean(),
            "wm/imagine_y_h": y_h.mean(),
            "wm/imagine_loss_v": losses["v"].detach(),
            "wm/imagine_loss_h": losses["h"].detach(),
        }
        return losses, metrics

    def _step(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.replica.average_gradients(self.params)
        if self.cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip)
        self.optimizer.step()

    def _actor_weights(
        self,
        v_h: torch.Tensor,
        q_h: torch.Tensor,
        q_r: torch.Tensor,
        v_r: torch.Tensor,
        q_c: torch.Tensor,
        v_c: torch.Tensor,
    ) -> torch.Tensor:
        """The actor's feasibility-split weights from critic values, with this run's temperatures and clips."""
        cfg = self.cfg
        advantage = feasible_advantage(q_r, v_r, q_c, v_c, cfg.adv_cost_coef)
        return feasibility_weights(
            v_h, q_h, advantage, cfg.beta_h, cfg.beta_r, cfg.max_weight_h, cfg.max_weight_r
        )

    # ----- evaluation helpers -----------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, dataset: OfflineDataset, n: int = 2048, seed: int = 1) -> dict[str, Any]:
        """Per-transition critic values and actor statistics on a fixed dataset sample (no augmentation)."""
        rng = np.random.default_rng(seed)
        idx = rng.choice(len(dataset), size=min(n, len(dataset)), replace=False)
        a = self.agent
        z = a.encoder(to_device(dataset.observations[idx], self.device))
        act = to_device(dataset.actions[idx], self.device)
        q_h = a.qh_max(z, act)
        v_h = a.v_h(z)
        w = self._actor_weights(
            v_h, q_h, a.q_r(z, act).min(-1).values, a.v_r(z), a.q_c(z, act).max(-1).values, a.v_c(z)
        )
        log_prob = a.actor_on.log_prob(z, act)
        return {
            "index": idx,
            "q_h": q_h.cpu().numpy(),
            "v_h": v_h.cpu().numpy(),
            "weights": w.cpu().numpy(),
            "log_prob": log_prob.cpu().numpy(),
            "weighted_log_prob": float((w * log_prob).sum() / w.sum().clamp_min(1e-8)),
        }

    def finalize(self) -> Agent:
        """π_off ← the learned policy and encoder; π_on starts as a copy. Returns the agent."""
        self.agent.freeze_offline_policy_from(self.agent.encoder, self.agent.actor_on)
        return self.agent

    # ----- checkpoint state ---------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state = {
            "learner_step": self.step,
            "target_encoder": self.target_encoder.state_dict(),
            "target_q_r": self.target_q_r.state_dict(),
            "target_q_c": self.target_q_c.state_dict(),
            "target_q_h": self.target_q_h.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
        }
        return state

    def load_state_dict(self, agent_state: dict[str, Any], state: dict[str, Any]) -> None:
        """``state["world_model"]``: a run written before the agent carried its world model."""
        if "world_model" in state:
            old = upgrade_world_model_state(state["world_model"], self.cfg.world_model.cost_pos_weight)
            agent_state = {**agent_state, **{f"world_model.{k}": v for k, v in old.items()}}
        if self.world_model is None and any(k.startswith("world_model.") for k in agent_state):
            raise ValueError(
                "checkpoint has a world model but the config disables it; resume without --no-world-model"
            )
        if self.world_model is not None and not any(k.startswith("world_model.") for k in agent_state):
            raise ValueError(
                "checkpoint has no world model but the config enables it; resume with --no-world-model"
            )
        self.agent.load_state_dict(agent_state)
        self.step = int(state["learner_step"])
        self.target_encoder.load_state_dict(state["target_encoder"])
        self.target_q_r.load_state_dict(state["target_q_r"])
        self.target_q_c.load_state_dict(state["target_q_c"])
        self.target_q_h.load_state_dict(state["target_q_h"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])


def _ensemble_mse(q: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Sum over members of the MSE of each member [..., n] against a shared target [...]."""
    return F.mse_loss(q, target.unsqueeze(-1).expand_as(q), reduction="mean") * q.shape[-1]
