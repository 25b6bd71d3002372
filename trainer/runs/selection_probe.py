"""Does policy selection pick the better policy? Measured in the env, at evaluation time.

At every ``every``-th step of a greedy evaluation episode, :class:`SelectionProbe` reads the selection
scores s_i = q_r,i − κ_c·q_c,i of both policies (the graph's outputs at zero noise, what eval-mode
selection ranks) and branches the episode: on a second env restored to the same state, each policy
acts alone (its own greedy proposal, no selection, no shield) for ``horizon`` steps, and the measured
outcome is the discounted Σ_t γ^t r_t, Σ_t γ^t c_t and Σ_t γ^t (r_t − κ_c·c_t). Selection is right at
that step when the policy it ranks higher measured the higher combined outcome. Chance is 1/2;
a selection that cannot tell its policies apart stays there whatever its share (docs/method.md §7).

The branches need an env that can copy its episode state (``snapshot()`` / ``restore()`` on the
unwrapped env, as reachsafe's SafeNav envs have); without it there is nothing to branch and the probe
says so once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from reachsafe.edge_runtime.select import select
from reachsafe.protocol.constants import POLICY_ONLINE
from reachsafe.trainer.runs.envs import frame_of
from reachsafe.trainer.runs.rollout import ActingPolicy

logger = logging.getLogger(__name__)


def can_branch(env: Any) -> bool:
    """Whether ``env`` can copy and restore its episode state."""
    inner = getattr(env, "unwrapped", env)
    return callable(getattr(inner, "snapshot", None)) and callable(getattr(inner, "restore", None))


@dataclass
class ProbePoint:
    """One probed step: both policies' selection scores and their measured branch outcomes."""

    q_r: tuple[float, float]  # (online, offline)
    q_c: tuple[float, float]
    score: tuple[float, float]
    ret: tuple[float, float]  # discounted branch return
    cost: tuple[float, float]  # discounted branch cost
    outcome: tuple[float, float]  # discounted Σ (r − κ_c c)
    picked_online: bool  # what eval-mode selection chose here


@dataclass
class SelectionProbe:
    """Branches greedy evaluation episodes to check the selection (module docstring)."""

    policy: ActingPolicy
    branch_env: Any
    obs_key: str | None
    gamma: float
    horizon: int = 20
    every: int = 25
    points: list[ProbePoint] = field(default_factory=list)

    def reset(self) -> None:
        """Forget the points of the previous evaluation."""
        self.points = []

    def __call__(self, env: Any, frame: np.ndarray, step: int, kappa_c: float) -> None:
        """Probe the state ``env`` is in (``frame`` observed there) if ``step`` is a probed one."""
        if step % self.every:
            return
        out = self.policy.outputs(frame, np.zeros((1, self.policy.action_dim), np.float32))
        q_r = (float(out.q_r[0]), float(out.q_r[1]))
        q_c = (float(out.q_c[0]), float(out.q_c[1]))
        picked = select(out, "eval", self.policy.kappa_t, kappa_c, np.random.default_rng(0))
        snap = env.unwrapped.snapshot()
        branches = [self._branch(snap, index, kappa_c) for index in (0, 1)]
        self.points.append(ProbePoint(
            q_r, q_c, (q_r[0] - kappa_c * q_c[0], q_r[1] - kappa_c * q_c[1]),
            (branches[0][0], branches[1][0]), (branches[0][1], branches[1][1]),
            (branches[0][2], branches[1][2]), picked.policy == POLICY_ONLINE,
        ))  # fmt: skip

    def _branch(self, snap: Any, index: int, kappa_c: float) -> tuple[float, float, float]:
        """Policy ``index`` (0 online, 1 offline) alone for ``horizon`` steps from ``snap``."""
        env = self.branch_env
        env.reset()  # clears the wrappers' episode bookkeeping; the state comes from the snapshot
        obs = env.unwrapped.restore(snap)
        ret = cost = 0.0
        zero = np.zeros((1, self.policy.action_dim), np.float32)
        for t in range(self.horizon):
            out = self.policy.outputs(frame_of(obs, self.obs_key), zero)
            action = np.asarray(out.a_on if index == 0 else out.a_off, np.float32)
            obs, reward, terminated, truncated, info = env.step(action)
            ret += self.gamma**t * float(reward)
            cost += self.gamma**t * float(info.get("cost", 0.0))
            if terminated or truncated:
                break
        return ret, cost, ret - kappa_c * cost

    def summary(self) -> dict[str, float]:
        """The evaluation's probe statistics (``selection/…`` keys); empty without points."""
        if not self.points:
            return {}
        score = np.array([p.score for p in self.points])
        q_r, q_c = np.array([p.q_r for p in self.points]), np.array([p.q_c for p in self.points])
        ret, cost = np.array([p.ret for p in self.points]), np.array([p.cost for p in self.points])
        outcome = np.array([p.outcome for p in self.points])
        picks_online = np.array([p.picked_online for p in self.points])
        return {
            "selection/points": float(len(self.points)),
            "selection/online_share": float(picks_online.mean()),
            "selection/score_gap": float(np.abs(score[:, 0] - score[:, 1]).mean()),
            "selection/q_r_gap": float(np.abs(q_r[:, 0] - q_r[:, 1]).mean()),
            "selection/q_c_gap": float(np.abs(q_c[:, 0] - q_c[:, 1]).mean()),
            "selection/outcome_gap": float(np.abs(outcome[:, 0] - outcome[:, 1]).mean()),
            **_agreement("outcome", picks_online, outcome[:, 0] - outcome[:, 1]),
            **_agreement("return", picks_online, ret[:, 0] - ret[:, 1]),
            **_agreement("cost", picks_online, cost[:, 1] - cost[:, 0]),
        }


def _agreement(name: str, picks_online: np.ndarray, online_better_by: np.ndarray) -> dict[str, float]:
    """Share of the decisive points (the branches differ) where the pick is the better branch, and
    how many points were decisive."""
    decisive = np.abs(online_better_by) > 1e-9
    right = picks_online[decisive] == (online_better_by[decisive] > 0)
    return {
        f"selection/right_by_{name}": float(right.mean()) if right.size else float("nan"),
        f"selection/decisive_by_{name}": float(decisive.sum()),
    }
