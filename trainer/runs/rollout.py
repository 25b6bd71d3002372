"""One step as the robot takes it, for every simulated rollout of the trainer.

Online training, its greedy evaluations, the re-evaluation of finished runs and the evaluation of a
bundle all act through :class:`ActingPolicy`: the agent graph's outputs (from torch or from the
bundle's ONNX session) → policy selection (``reachsafe.edge_runtime.select``, or π_on alone) → the
reachability shield (``reachsafe.edge_runtime.shield``) → ``env.step``. The selection and the shield
are the robot's own code, so what is trained and measured here behaves as a robot runs it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from reachsafe.edge_runtime.inference import AgentOutput
from reachsafe.edge_runtime.select import select
from reachsafe.edge_runtime.shield import shield
from reachsafe.protocol.constants import POLICY_ONLINE

#: (frame [H, W, C], noise [1, A]) -> the graph's outputs for that frame (zero noise: greedy actions)
OutputsFn = Callable[[np.ndarray, np.ndarray], AgentOutput]
#: an env observation -> the frame the agent sees (dict observations: the image key)
FrameFn = Callable[[Any], np.ndarray]
#: (env, frame, step index) before each step of an episode, e.g. to branch it from there
StepHook = Callable[[Any, np.ndarray, int], None]


class Acted(NamedTuple):
    """What the policy did in one step: the step record's action, proposed, policy and shielded."""

    action: np.ndarray
    proposed: np.ndarray
    policy: int
    shielded: bool


@dataclass
class ActingPolicy:
    """Graph outputs → policy expansion (or π_on alone) → shield, as the robot acts."""

    outputs: OutputsFn
    action_dim: int
    kappa_t: float
    threshold: float | None  # the shield's threshold on Q_h; None: no shield
    expansion: bool = True  # False: always π_on's action

    def act(
        self, frame: np.ndarray, rng: np.random.Generator, kappa_c: float, greedy: bool, in_violation: bool
    ) -> Acted:
        """``greedy``: zero noise and eval-mode selection; ``in_violation``: the last step cost
        something (the shield then defers to the policy)."""
        noise = (
            np.zeros((1, self.action_dim), np.float32)
            if greedy
            else rng.standard_normal((1, self.action_dim)).astype(np.float32)
        )
        out = self.outputs(frame, noise)
        if self.expansion:
            sel = select(out, "eval" if greedy else "explore", self.kappa_t, kappa_c, rng)
            policy, action = sel.policy, sel.action
        else:
            policy, action = POLICY_ONLINE, np.asarray(out.a_on, np.float32)
        if self.threshold is None:
            return Acted(action, action, policy, False)
        decision = shield(out, policy, self.threshold, in_violation)
        return Acted(np.asarray(decision.action, np.float32), action, policy, decision.shielded)


@dataclass
class EpisodeStats:
    """Running statistics of one episode."""

    ret: float = 0.0
    cost: float = 0.0
    length: int = 0
    offline: int = 0  # steps whose action π_off proposed
    shielded: int = 0  # steps whose proposal the shield replaced
    collision_cost: float = 0.0  # cost from touching solid objects (reachsafe envs' info)
    goals: int = 0  # goals reached (reachsafe envs' info)
    wall_steps: int = 0  # steps pressed against the arena's edge (reachsafe envs' info)

    def add(self, acted: Acted, reward: float, info: Mapping[str, Any]) -> float:
        """Count one step; returns its cost (``info["cost"]``, 0 when absent)."""
        cost = float(info.get("cost", 0.0))
        self.ret += float(reward)
        self.cost += cost
        self.length += 1
        self.offline += int(acted.policy != POLICY_ONLINE)
        self.shielded += int(acted.shielded)
        self.collision_cost += float(info.get("cost_collision", 0.0))
        self.goals = int(info.get("goals_reached", self.goals))
        self.wall_steps += int(bool(info.get("at_wall", False)))
        return cost

    def rate(self, count: int) -> float:
        """``count`` steps as a share of the episode's steps."""
        return count / max(self.length, 1)


def run_episode(
    policy: ActingPolicy,
    env: Any,
    seed: int,
    kappa_c: float,
    rng: np.random.Generator,
    frame_of: FrameFn = np.asarray,
    greedy: bool = True,
    before_step: StepHook | None = None,
) -> EpisodeStats:
    """One whole episode of ``env`` from ``reset(seed=seed)``."""
    obs, _ = env.reset(seed=seed)
    stats, done, in_violation = EpisodeStats(), False, False
    while not done:
        frame = frame_of(obs)
        if before_step is not None:
            before_step(env, frame, stats.length)
        acted = policy.act(frame, rng, kappa_c, greedy, in_violation)
        obs, reward, terminated, truncated, info = env.step(acted.action)
        in_violation = stats.add(acted, reward, info) > 0
        done = terminated or truncated
    return stats
