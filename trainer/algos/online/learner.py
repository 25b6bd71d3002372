"""π_on's online learner: SAC-Lag critics, a world model that keeps learning, π_on improved through
imagined rollouts (FOSP), and the λ controller (Marvel), docs/method.md §7, §9, §10 and §13.

One :class:`OnlineLearner` serves both the daemon (data from robots) and `reachsafe train online`
(data from in-process gymnasium envs). Per update, on a batch that mixes offline and online data:

- critics: twin Q_r toward r + γ(1−d)(min Q̄_r(z', a') − α log π(a'|z')), twin Q_c toward
  c + γ(1−d) max Q̄_c(z', a'), a' ~ π_on(z'); the shared encoder learns through these losses at
  ``lr_encoder`` (by default only without the world model: with it, the latent space stays the one
  π_off and the model were trained in);
- reachability: Q_h ← (1−γ)h + γ·max(h, V_h(z')) (h at terminals), V_h by a low expectile of Q_h;
- world model (``world_model.enabled``): one-step consistency f(z, a) ≈ z̄', reward, cost-probability
  and continuation losses on the batch's transitions;
- actor, with the world model: from each latent, an H-step imagined rollout of π_on (reparameterised
  actions, gradients through the model), Γ_t = Π_{k<t} γ·P(continue_k):
  R = Σ_t Γ_t (r̂_t − α log π(a_t|ẑ_t)) + Γ_H (min Q_r − α log π)(ẑ_H, a_H),
  C = Σ_t Γ_t P̂(c_t > 0) + Γ_H max Q_c(ẑ_H, a_H),
  loss (−R + λC)/(1 + λ) + w_h · mean_t max(0, Q_h(ẑ_t, a_t)); without it, SAC-Lag's
  (α log π − Q_r + λ Q_c)/(1 + λ) on the detached latent. Either way plus ``anchor_weight`` times
  ‖tanh μ_on − tanh μ_off‖² (π_on's mean action held near π_off's); α toward entropy −dim(A).

The transitions carry the *executed* action (after policy selection and the shield), so the
critics learn the values of what the robot did, whichever policy proposed it. With
``learn_interventions`` (off by default; docs/results/online-defaults.md), a step the shield replaced
also teaches Q_r and Q_c the value of the *proposal* in the shielded system: proposing it led to the
executed step, less ``intervention_penalty`` in reward (the post-posed shield's punishment, Alshiekh
et al. 2018); otherwise a replaced proposal is never executed, so its risk is never seen.

The learner runs on the device its agent is moved to: a batch goes there once per update
(:meth:`OnlineLearner.tensors`), and the scalars to log come back once per step.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from reachsafe.trainer.algos.losses import expectile_loss, hj_target, reachability_signal
from reachsafe.trainer.algos.offline.config import offline_config_from_checkpoint
from reachsafe.trainer.algos.online.config import OnlineConfig
from reachsafe.trainer.algos.online.lagrange import PIDLagrangian
from reachsafe.trainer.algos.shield.budget import ShieldBudget
from reachsafe.trainer.data.dataset import Batch
from reachsafe.trainer.models.device import autocast, compile_modules, to_device, to_floats
from reachsafe.trainer.models.networks import Agent, polyak
from reachsafe.trainer.models.world_model import WorldModel, WorldModelLossWeights

logger = logging.getLogger(__name__)

#: (agent, o', target latent of o') -> (a', log π(a'|o')) for the bootstrap of the critic targets.
NextActionFn = Callable[[Agent, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
#: a batch's columns as tensors on the learner's device (:meth:`OnlineLearner.tensors`)
Tensors = dict[str, torch.Tensor]


def to_tensors(batch: Batch, device: torch.device | None = None) -> Tensors:
    """The transition columns of ``batch`` on ``device`` (default: the CPU)."""
    device = device or torch.device("cpu")
    return {
        "obs": to_device(batch.obs, device),
        "action": to_device(batch.actions, device, torch.float32),
        "reward": to_device(batch.rewards, device, torch.float32),
        "cost": to_device(batch.costs, device, torch.float32),
        "next_obs": to_device(batch.next_obs, device),
        "done": to_device(batch.terminals, device, torch.float32),
    }


def on_policy_next(
    agent: Agent, next_obs: torch.Tensor, z_next: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """a' ~ π_on(z'): SAC-Lag's bootstrap."""
    return agent.actor_on.sample(z_next)


def offline_policy_next(
    agent: Agent, next_obs: torch.Tensor, z_next: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """a' ~ π_off(o') through π_off's own encoder: Value Pre-Alignment's bootstrap."""
    return agent.actor_off.sample(agent.encoder_off(next_obs))


@dataclass(frozen=True)
class ReachabilityTarget:
    """The HJ target's c_scale and γ_h: online, Q_h keeps learning the offline run's own target."""

    c_scale: float
    gamma_h: float

    @classmethod
    def from_checkpoint(cls, ckpt: dict[str, Any]) -> ReachabilityTarget:
        """An offline checkpoint's values; older runs without them take OfflineConfig's defaults."""
        offline = offline_config_from_checkpoint(ckpt)
        return cls(offline.c_scale, offline.gamma_h)


class OnlineLearner:
    """Networks, target networks, optimisers, α and the λ controller of online fine-tuning."""

    def __init__(
        self,
        agent: Agent,
        cfg: OnlineConfig,
        reach: ReachabilityTarget | None = None,
        device: torch.device | None = None,
        world_model_weights: WorldModelLossWeights | None = None,
    ) -> None:
        """``reach`` None: OfflineConfig's defaults (a learner not started from an offline run).
        ``device``: where the agent is moved and trained (default: the CPU). ``world_model_weights``:
        the offline run's world-model loss weights (None: OfflineConfig's defaults)."""
        self.device = device or torch.device("cpu")
        self.agent = agent.to(self.device)
        self.cfg = cfg
        self.reach = reach or ReachabilityTarget.from_checkpoint({})
        self.world_model = self._world_model(agent, cfg)
        self.wm_weights = world_model_weights or offline_config_from_checkpoint({}).world_model.loss_weights()
        for p in list(agent.encoder_off.parameters()) + list(agent.actor_off.parameters()):
            p.requires_grad_(False)  # π_off is frozen
        self.target = nn.ModuleDict({name: copy.deepcopy(m) for name, m in self._tracked()}).requires_grad_(
            False
        )
        heads = [
            *agent.q_r.parameters(),
            *agent.q_c.parameters(),
            *agent.q_h.parameters(),
            *agent.v_h.parameters(),
        ]
        lr_encoder = cfg.lr_encoder
        if lr_encoder is None:
            lr_encoder = 0.0 if self.world_model is not None else cfg.lr_critic
        groups = [{"params": heads}]
        self.encoder_frozen = lr_encoder == 0
        if self.encoder_frozen:
            agent.encoder.requires_grad_(False)
        else:
            groups.append({"params": list(agent.encoder.parameters()), "lr": lr_encoder})
        self.opt_critic = torch.optim.Adam(groups, lr=cfg.lr_critic, fused=True)
        self.opt_world_model = (
            None
            if self.world_model is None
            else torch.optim.Adam(self.world_model.parameters(), lr=cfg.world_model.lr, fused=True)
        )
        self.opt_actor = torch.optim.Adam(agent.actor_on.parameters(), lr=cfg.lr_actor, fused=True)
        self.log_alpha = torch.tensor(float(np.log(cfg.alpha_init)), device=self.device, requires_grad=True)
        self.opt_alpha = torch.optim.Adam([self.log_alpha], lr=cfg.lr_alpha)
        self.target_entropy = -float(agent.spec.action_dim)
        self.lagrange = PIDLagrangian(cfg.lagrange)
        self.shield_budget = (
            None
            if cfg.shield.intervention_budget is None
            else ShieldBudget(
                cfg.shield.intervention_budget,
                cfg.shield.budget_rate,
                cfg.shield.budget_min,
                cfg.shield.budget_max,
            )
        )
        self.updates = 0
        if cfg.compute.compile:
            compile_modules(agent.encoder, agent.encoder_off, self.target["encoder"])

    @staticmethod
    def _world_model(agent: Agent, cfg: OnlineConfig) -> WorldModel | None:
        """The agent's world model when the config uses it; sets the graph's selection scores to match."""
        if not cfg.world_model.enabled:
            agent.spec.selection_horizon = 0
            return None
        if agent.world_model is None:
            raise ValueError(
                "the offline run has no world model (trained with --no-world-model); fine-tune with "
                "--no-world-model, or retrain offline with it"
            )
        agent.spec.selection_horizon = cfg.world_model.selection_horizon
        agent.spec.selection_gamma = cfg.gamma
        return agent.world_model

    @property
    def alpha(self) -> float:
        return float(self.log_alpha.detach().exp())

    @property
    def lam(self) -> float:
        return self.lagrange.value

    # ----- losses ------------------------------------------------------------------------
    def tensors(self, batch: Batch) -> Tensors:
        """The batch on the learner's device, with the rows whose proposal the shield replaced
        (``replaced``, empty unless ``learn_interventions``) and their proposals."""
        t = to_tensors(batch, self.device)
        replaced = self._replaced(batch)
        t["replaced"] = torch.as_tensor(replaced).to(self.device, non_blocking=True)
        if replaced.size:
            assert batch.proposed is not None
            t["proposed"] = to_device(batch.proposed[replaced], self.device, torch.float32)
        return t

    def _encode(self, t: Tensors) -> Tensors:
        """Add the target encoder's latents of o' (``z_next_t``) and, with the encoder frozen, the
        latents of o (``z``) to ``t``, once per batch: every loss of the update reads them."""
        with torch.no_grad(), autocast(self.device, self.cfg.compute.bf16):
            if "z_next_t" not in t:
                t["z_next_t"] = self.target["encoder"](t["next_obs"])
            if self.encoder_frozen and "z" not in t:
                t["z"] = self.agent.encoder(t["obs"])
        return t

    def critic_step(
        self, batch: Batch | Tensors, next_action: NextActionFn = on_policy_next
    ) -> dict[str, float]:
        """One update of encoder, Q_r, Q_c (and Q_h, V_h if learn_qh) toward the bootstrap targets."""
        t = self._encode(batch if isinstance(batch, dict) else self.tensors(batch))
        with autocast(self.device, self.cfg.compute.bf16):
            loss, metrics = self._critic_losses(t, next_action)
        self.opt_critic.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_critic.step()
        self._polyak()
        return {**to_floats(metrics), "online/replaced_in_batch": float(t["replaced"].numel())}

    def _critic_losses(
        self, t: Tensors, next_action: NextActionFn
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        cfg, ag = self.cfg, self.agent
        alpha = self.log_alpha.detach().exp()
        z_next_t = t["z_next_t"]
        with torch.no_grad():
            a_next, logp_next = next_action(ag, t["next_obs"], z_next_t)
            q_r_next = self.target["q_r"](z_next_t, a_next).min(dim=-1).values - alpha * logp_next
            q_c_next = self.target["q_c"](z_next_t, a_next).max(dim=-1).values
            not_done = 1.0 - t["done"]
            y_r = t["reward"] + cfg.gamma * not_done * q_r_next
            y_c = t["cost"] + cfg.gamma * not_done * q_c_next
        z = t["z"] if "z" in t else ag.encoder(t["obs"])
        z_rc, a_rc, y_r_rc, y_c_rc = z, t["action"], y_r, y_c
        replaced = t["replaced"]
        if "proposed" in t:  # the proposals the shield replaced: same outcome, less the penalty
            z_rc = torch.cat([z, z[replaced]])
            a_rc = torch.cat([a_rc, t["proposed"]])
            y_r_rc = torch.cat([y_r, y_r[replaced] - cfg.intervention_penalty])
            y_c_rc = torch.cat([y_c, y_c[replaced]])
        q_r = ag.q_r(z_rc, a_rc)
        q_c = ag.q_c(z_rc, a_rc)
        loss_r = F.mse_loss(q_r, y_r_rc.unsqueeze(-1).expand_as(q_r))
        loss_c = F.mse_loss(q_c, y_c_rc.unsqueeze(-1).expand_as(q_c))
        loss = loss_r + loss_c
        metrics = {
            "online/loss_q_r": loss_r.detach(),
            "online/loss_q_c": loss_c.detach(),
            "online/q_r": q_r[: len(y_r)].detach().mean(),
        }
        if cfg.learn_qh:  # Q_h learns the executed actions only: it models the real dynamics
            loss_h, h_metrics = self._reach_loss(z, z_next_t, t)
            loss = loss + loss_h
            metrics.update(h_metrics)
        return loss, metrics

    def _replaced(self, batch: Batch) -> np.ndarray:
        """Rows whose proposal the shield replaced (none unless ``learn_interventions``)."""
        if not self.cfg.learn_interventions or batch.shielded is None or batch.proposed is None:
            return np.zeros(0, np.int64)
        return np.flatnonzero(batch.shielded)

    def _reach_loss(
        self, z: torch.Tensor, z_next_t: torch.Tensor, t: Tensors
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        cfg, ag = self.cfg, self.agent
        h = reachability_signal(t["cost"], self.reach.c_scale)
        with torch.no_grad():
            y_h = hj_target(h, self.target["v_h"](z_next_t), t["done"], self.reach.gamma_h)
        q_h = ag.q_h(z, t["action"])
        loss_q = F.mse_loss(q_h, y_h.unsqueeze(-1).expand_as(q_h))
        # V_h toward a low expectile of the max-ensemble Q_h (≈ the best in-sample feasibility)
        loss_v = expectile_loss(ag.v_h(z.detach()) - q_h.max(dim=-1).values.detach(), cfg.qh_expectile)
        metrics = {"online/loss_q_h": loss_q.detach(), "online/loss_v_h": loss_v.detach()}
        return loss_q + loss_v, metrics

    def world_model_step(self, batch: Batch | Tensors) -> dict[str, float]:
        """One update of the world model on the batch's transitions (one step: z → z̄', r, c, continuation)."""
        wm, opt = self.world_model, self.opt_world_model
        assert wm is not None and opt is not None
        t = self._encode(batch if isinstance(batch, dict) else self.tensors(batch))
        with autocast(self.device, self.cfg.compute.bf16):
            z = t["z"] if "z" in t else self.agent.encoder(t["obs"]).detach()
            loss, parts = wm.loss(
                z, t["z_next_t"][:, None], t["action"][:, None], t["reward"][:, None],
                t["cost"][:, None], t["done"][:, None], self.wm_weights,
            )  # fmt: skip
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return to_floats({f"wm/{k}": v for k, v in parts.items()})

    def actor_step(self, batch: Batch | Tensors) -> dict[str, float]:
        """π_on's loss (imagined with the world model, else SAC-Lag's) and the α update."""
        ag, lam = self.agent, self.lam
        t = self._encode(batch if isinstance(batch, dict) else self.tensors(batch))
        alpha = self.log_alpha.detach().exp()
        with autocast(self.device, self.cfg.compute.bf16):
            if "z" in t:
                z = t["z"]
            else:
                with torch.no_grad():
                    z = ag.encoder(t["obs"])
            if self.world_model is None:
                a, logp = ag.actor_on.sample(z)
                q_r = ag.q_r(z, a).min(dim=-1).values
                q_c = ag.q_c(z, a).max(dim=-1).values
                loss = ((alpha * logp - q_r + lam * q_c) / (1.0 + lam)).mean()
                metrics = {"online/loss_actor": loss.detach()}
            else:
                with _frozen(self.world_model, ag.q_r, ag.q_c, ag.q_h):
                    loss, logp, metrics = self._imagined_actor_loss(self.world_model, z, alpha, lam)
            if self.cfg.anchor_weight > 0:
                anchor = self._anchor(t["obs"], z)
                loss = loss + self.cfg.anchor_weight * anchor
                metrics["online/anchor"] = anchor.detach()
        self.opt_actor.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_actor.step()
        metrics.update({"online/entropy": -logp.detach().mean(), "online/alpha": alpha})
        if self.cfg.autotune_alpha:
            loss_a = -(self.log_alpha * (logp.detach() + self.target_entropy)).mean()
            self.opt_alpha.zero_grad(set_to_none=True)
            loss_a.backward()
            self.opt_alpha.step()
        return to_floats(metrics)

    def _imagined_actor_loss(
        self, wm: WorldModel, z0: torch.Tensor, alpha: torch.Tensor, lam: float
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """(−R + λC)/(1 + λ) + w_h·mean_t max(0, Q_h) over an H-step rollout of π_on from z0 (module
        docstring); returns the loss, log π of the first imagined action (for α) and the scalars."""
        ag, cfg = self.agent, self.cfg
        horizon = cfg.world_model.imagine_horizon
        zt, disc = z0, z0.new_ones(z0.shape[0])
        ret_r, ret_c, infeasible = (
            z0.new_zeros(z0.shape[0]),
            z0.new_zeros(z0.shape[0]),
            z0.new_zeros(z0.shape[0]),
        )
        logp0 = None
        for _ in range(horizon):
            a, logp = ag.actor_on.sample(zt)
            logp0 = logp if logp0 is None else logp0
            infeasible = infeasible + ag.qh_max(zt, a).clamp_min(0.0)
            zt, r_hat, c_logit, cont_logit = wm.step(zt, a)
            ret_r = ret_r + disc * (r_hat - alpha * logp)
            ret_c = ret_c + disc * wm.cost_prob(c_logit)
            disc = disc * cfg.gamma * torch.sigmoid(cont_logit)
        a, logp = ag.actor_on.sample(zt)
        ret_r = ret_r + disc * (ag.q_r(zt, a).min(dim=-1).values - alpha * logp)
        ret_c = ret_c + disc * ag.q_c(zt, a).max(dim=-1).values
        infeasible = infeasible / horizon
        loss = (
            (-ret_r + lam * ret_c) / (1.0 + lam)
        ).mean() + cfg.world_model.reach_weight * infeasible.mean()
        assert logp0 is not None
        metrics = {
            "online/loss_actor": loss.detach(),
            "online/imagine_return": ret_r.detach().mean(),
            "online/imagine_cost": ret_c.detach().mean(),
            "online/imagine_infeasible": infeasible.detach().mean(),
        }
        return loss, logp0, metrics

    def _anchor(self, obs: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Mean squared distance between π_on's and π_off's mean actions on the observations ``obs``."""
        ag = self.agent
        with torch.no_grad():
            mu_off, _ = ag.actor_off.distribution_params(ag.encoder_off(obs))
        mu_on, _ = ag.actor_on.distribution_params(z)
        return (torch.tanh(mu_on) - torch.tanh(mu_off)).pow(2).sum(dim=-1).mean()

    def update(self, batch: Batch) -> dict[str, float]:
        """One gradient step of the critics, the world model and π_on on a (mixed) batch, moved to
        the device once."""
        t = self.tensors(batch)
        metrics = self.critic_step(t)
        self.lagrange.on_gradient_step()  # Marvel's cadence: λ steps before every actor update
        if self.world_model is not None:
            metrics.update(self.world_model_step(t))
        metrics.update(self.actor_step(t))
        self.updates += 1
        return metrics

    def _polyak(self) -> None:
        for name, module in self._tracked():
            polyak(self.target[name], module, self.cfg.tau)

    def _tracked(self) -> tuple[tuple[str, nn.Module], ...]:
        ag = self.agent
        return (("encoder", ag.encoder), ("q_r", ag.q_r), ("q_c", ag.q_c), ("v_h", ag.v_h))

    def sync_targets(self) -> None:
        """Targets ← online networks (after pre-alignment or loading)."""
        for name, module in self._tracked():
            self.target[name].load_state_dict(module.state_dict())

    def observe_episode(self, episode_cost: float) -> float:
        """A robot's (or env's) episode finished: update λ and the shield's budget; returns λ."""
        self.lagrange.observe_episode(episode_cost)
        lam = self.lagrange.update_from_window()
        if self.shield_budget is not None:
            self.shield_budget.update(self.lagrange.recent, self.cfg.lagrange.cost_limit)
        return lam

    def metrics(self) -> dict[str, float]:
        """λ controller state and the shield budget, for the scalars."""
        m = self.lagrange.metrics()
        if self.shield_budget is not None:
            m["online/shield_budget"] = self.shield_budget.value
        return m

    # ----- policy set -------------------------------------------------------------------------
    def kappa_c(self) -> float:
        return self.cfg.expansion.kappa_c_at(self.lam)

    # ----- persistence --------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "target": self.target.state_dict(),
            "opt_critic": self.opt_critic.state_dict(),
            "opt_actor": self.opt_actor.state_dict(),
            "log_alpha": self.log_alpha.detach().clone(),
            "opt_alpha": self.opt_alpha.state_dict(),
            "opt_world_model": None if self.opt_world_model is None else self.opt_world_model.state_dict(),
            "lagrange": self.lagrange.state_dict(),
            "shield_budget": None if self.shield_budget is None else self.shield_budget.state_dict(),
            "updates": self.updates,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.target.load_state_dict(state["target"])
        self.opt_critic.load_state_dict(state["opt_critic"])
        self.opt_actor.load_state_dict(state["opt_actor"])
        with torch.no_grad():
            self.log_alpha.copy_(state["log_alpha"])
        self.opt_alpha.load_state_dict(state["opt_alpha"])
        if self.opt_world_model is not None and state.get("opt_world_model") is not None:
            self.opt_world_model.load_state_dict(state["opt_world_model"])  # a model-free run: fresh moments
        self.lagrange.load_state_dict(state["lagrange"])
        if self.shield_budget is not None and state.get("shield_budget") is not None:
            self.shield_budget.load_state_dict(state["shield_budget"])  # older checkpoints: the initial one
        self.updates = int(state["updates"])


@contextmanager
def _frozen(*modules: nn.Module) -> Iterator[None]:
    """No parameter gradients for ``modules`` inside: the actor's loss differentiates through them
    to the actions only."""
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)
