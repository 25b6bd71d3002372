"""How far the critics are from π_off's Monte-Carlo values on π_off's own rollouts (docs/method.md §8).

Value Pre-Alignment (:mod:`~reachsafe.trainer.algos.online.vpa`) is meant to make Q_r and Q_c the values
of π_off. This module measures that, as Marvel does, against the returns π_off actually collects:

- :func:`roll_out_pi_off`: episodes of π_off acting as the robot's π_off proposes (its mean action,
  ``Agent.graph_outputs``' ``a_off``), executed as is: no policy selection, no shield. At every step
  it records the frame, the executed action and the discounted reward-to-go and cost-to-go from there
  on. Truncated episodes cut the sums short, so only steps with more than
  :func:`horizon_steps` (3/(1 − γ)) steps ahead, or whose episode terminated, are kept: the missing
  tail weighs at most γ^(horizon+1) ≤ e⁻³ of the value scale. :func:`lengthened_env` makes episodes
  that much longer than usual, so every usual step of an episode is kept.
- :func:`critic_fit`: Q_r (min of the twins) and Q_c (max of the twins) at (encoder(frame), action) of
  those steps, against the Monte-Carlo values: bias (mean Q − MC), RMSE, Spearman rank correlation.

π_off and its encoder are frozen online, so one rollout serves every :func:`critic_fit` of a run
(before and after VPA).
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from reachsafe.trainer.models.device import module_device
from reachsafe.trainer.models.networks import Agent
from reachsafe.trainer.runs.envs import COST_KEY, REMOTE_PREFIX, EnvSpecError, frame_of, make_env

logger = logging.getLogger(__name__)

#: steps ahead a kept step needs, in units of the discount's time scale 1/(1 − γ)
TAIL_TIME_SCALES = 3.0


def horizon_steps(gamma: float) -> int:
    """Steps ahead of a kept step: ⌈3/(1 − γ)⌉ (300 at γ = 0.99)."""
    return math.ceil(round(TAIL_TIME_SCALES / (1.0 - gamma), 9))  # 3/(1 − 0.9) is 30.000000000000004


def discounted_to_go(values: np.ndarray, gamma: float) -> np.ndarray:
    """G_t = Σ_{k ≥ t} γ^(k−t) x_k over one episode's sequence ``values`` (0 after its end)."""
    out = np.zeros(len(values), np.float64)
    acc = 0.0
    for t in range(len(values) - 1, -1, -1):
        acc = float(values[t]) + gamma * acc
        out[t] = acc
    return out


def rankdata(x: np.ndarray) -> np.ndarray:
    """Ranks 1 … n of ``x``, ties given their mean rank."""
    x = np.asarray(x, np.float64)
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x), np.float64)
    ranks[order] = np.arange(1, len(x) + 1)
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return sums[inverse] / counts[inverse]


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation (Pearson's on the tie-averaged ranks); NaN if either is constant."""
    rx, ry = rankdata(x), rankdata(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = math.sqrt(float(rx @ rx) * float(ry @ ry))
    return float(rx @ ry) / denom if denom > 0 else float("nan")


@dataclass(frozen=True)
class PiOffRollouts:
    """The kept steps of π_off's episodes: what the critics are checked on."""

    frames: np.ndarray  # [N, *obs_shape]
    actions: np.ndarray  # [N, A] the executed (π_off's mean) actions
    mc_reward: np.ndarray  # [N] discounted reward-to-go
    mc_cost: np.ndarray  # [N] discounted cost-to-go
    episodes: int
    env_steps: int  # all steps taken, kept or not
    horizon: int  # steps ahead a kept step has (unless its episode terminated)


@dataclass(frozen=True)
class CriticFit:
    """One critic against the Monte-Carlo values, over ``points`` steps."""

    bias: float  # mean(Q − MC)
    rmse: float
    spearman: float
    q_mean: float
    mc_mean: float
    points: int

    @classmethod
    def of(cls, q: np.ndarray, mc: np.ndarray) -> CriticFit:
        q, mc = np.asarray(q, np.float64), np.asarray(mc, np.float64)
        if len(q) == 0:
            nan = float("nan")
            return cls(nan, nan, nan, nan, nan, 0)
        err = q - mc
        return cls(float(err.mean()), float(np.sqrt(np.mean(err**2))), spearman(q, mc),
                   float(q.mean()), float(mc.mean()), len(q))  # fmt: skip


@dataclass(frozen=True)
class ValueCheck:
    """Q_r and Q_c against π_off's Monte-Carlo reward- and cost-to-go."""

    q_r: CriticFit
    q_c: CriticFit
    episodes: int
    horizon: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: an undefined statistic (a Spearman of a constant, no points) is None."""

        def fit_dict(fit: CriticFit) -> dict[str, float | int | None]:
            return {k: v if math.isfinite(v) else None for k, v in asdict(fit).items()}

        return {"q_r": fit_dict(self.q_r), "q_c": fit_dict(self.q_c), "episodes": self.episodes,
                "horizon": self.horizon}  # fmt: skip

    def describe(self) -> str:
        """One log line."""
        return (
            " | ".join(
                f"{name} bias {fit.bias:+.3f} RMSE {fit.rmse:.3f} Spearman {fit.spearman:+.3f}"
                for name, fit in (("Q_r", self.q_r), ("Q_c", self.q_c))
            )
            + f" ({self.q_r.points} steps of {self.episodes} episodes)"
        )

    def scalars(self) -> dict[str, float]:
        """Flat ``q_r_bias``, ``q_c_spearman``, … for TensorBoard."""
        return {
            f"{name}_{k}": float(v)
            for name, fit in (("q_r", self.q_r), ("q_c", self.q_c))
            for k, v in asdict(fit).items()
        }


def lengthened_env(env_id: str, split: str | None, seed: int, cost_key: str, extra_steps: int) -> Any:
    """``env_id``'s env (:func:`~reachsafe.trainer.runs.envs.make_env`) with every episode
    ``extra_steps`` longer than usual, so that each of its usual steps has ``extra_steps`` ahead:
    reachsafe's tasks through their ``episode_steps``, other gymnasium envs through their TimeLimit
    (an env with neither as it is). A robot server decides its episodes' length: an EnvSpecError."""
    if env_id.startswith(REMOTE_PREFIX):
        raise EnvSpecError(
            f"{env_id} is a robot server: it decides its episodes' length, so the value check cannot see "
            "far enough ahead of their steps; check on the simulated task instead"
        )
    env = make_env(env_id, split, seed, cost_key)
    usual = getattr(env.unwrapped, "episode_steps", None)
    key = "episode_steps"
    if usual is None and env.spec is not None and env.spec.max_episode_steps is not None:
        usual, key = env.spec.max_episode_steps, "max_episode_steps"
    if usual is None:
        return env
    env.close()
    return make_env(env_id, split, seed, cost_key, **{key: int(usual) + extra_steps})


def roll_out_pi_off(
    agent: Agent, env: Any, episodes: int, gamma: float, seed: int, obs_key: str | None = None
) -> PiOffRollouts:
    """``episodes`` episodes of π_off's mean action from episode seeds ``seed``, ``seed + 1``, …; the
    steps with more than :func:`horizon_steps` steps ahead (or a terminal) and their discounted
    reward- and cost-to-go."""
    horizon, device = horizon_steps(gamma), module_device(agent)
    noise = torch.zeros(1, agent.spec.action_dim, device=device)
    frames, actions, mc_r, mc_c, env_steps = [], [], [], [], 0
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        ep_frames, ep_actions, rewards, costs = [], [], [], []
        terminated = truncated = False
        while not (terminated or truncated):
            frame = frame_of(obs, obs_key)
            with torch.no_grad():
                a_off = agent.graph_outputs(torch.as_tensor(frame[None]).to(device), noise)[1]
            action = a_off[0].cpu().numpy()
            obs, reward, terminated, truncated, info = env.step(action)
            ep_frames.append(frame)
            ep_actions.append(action)
            rewards.append(float(reward))
            costs.append(float(info[COST_KEY]))
        length = len(rewards)
        keep = length if terminated else max(length - horizon, 0)
        env_steps += length
        frames.extend(ep_frames[:keep])
        actions.extend(ep_actions[:keep])
        mc_r.append(discounted_to_go(np.asarray(rewards), gamma)[:keep])
        mc_c.append(discounted_to_go(np.asarray(costs), gamma)[:keep])
        logger.info(
            "value check: π_off episode %d/%d (seed %d): %d steps, return %.2f, cost %.1f, %d kept",
            i + 1, episodes, seed + i, length, sum(rewards), sum(costs), keep,
        )  # fmt: skip
    if not frames:
        logger.warning(
            "value check: no step of %d episodes has %d steps ahead; lengthen them (lengthened_env)",
            episodes,
            horizon,
        )
    spec = agent.spec
    return PiOffRollouts(
        np.asarray(frames).reshape(len(frames), *spec.obs_shape),
        np.asarray(actions, np.float32).reshape(len(actions), spec.action_dim),
        _concat(mc_r),
        _concat(mc_c),
        episodes,
        env_steps,
        horizon,
    )


def critic_fit(agent: Agent, rollouts: PiOffRollouts, batch_size: int = 256) -> ValueCheck:
    """Q_r (min of the twins) and Q_c (max of the twins) at the rollouts' (encoder(frame), action),
    evaluated in batches of ``batch_size``, against their Monte-Carlo values."""
    device = module_device(agent)
    q_r, q_c = [], []
    with torch.no_grad():
        for start in range(0, len(rollouts.actions), batch_size):
            sl = slice(start, start + batch_size)
            z = agent.encoder(torch.as_tensor(rollouts.frames[sl]).to(device))
            a = torch.as_tensor(rollouts.actions[sl]).to(device)
            q_r.append(agent.q_r(z, a).min(dim=-1).values.float().cpu().numpy())
            q_c.append(agent.q_c(z, a).max(dim=-1).values.float().cpu().numpy())
    return ValueCheck(
        CriticFit.of(_concat(q_r), rollouts.mc_reward),
        CriticFit.of(_concat(q_c), rollouts.mc_cost),
        rollouts.episodes,
        rollouts.horizon,
    )


def _concat(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(0)
