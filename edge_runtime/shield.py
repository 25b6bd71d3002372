"""The post-posed reachability shield (docs/method.md §6).

Q_h(z, a) ≤ 0 means the robot can stay out of hazards after taking a. If the chosen policy's
candidate has Q_h above the threshold, the candidate with the lowest Q_h is executed instead and
the step is marked as shielded.

Except while the robot is in violation (the last step cost something: it is in a hazard or touching
an obstacle). There the HJ target is h = c_scale for every action (max(h, ·) ≥ h), so Q_h cannot
rank the candidates and its argmin is noise; measured on SafeGoal1 it picked a turn-in-place
primitive for almost every hazard position, which held the robot inside the hazard for hundreds of
steps. In violation the shield defers to the policy's proposal, which moves on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from reachsafe.edge_runtime.inference import AgentOutput
from reachsafe.protocol.constants import POLICY_OFFLINE, POLICY_ONLINE

#: Index of each policy's own action in the graph's candidate list [a_on, a_off, brake, ...].
CANDIDATE_INDEX = {POLICY_ONLINE: 0, POLICY_OFFLINE: 1}
BRAKE_CANDIDATE = 2


@dataclass(frozen=True)
class ShieldDecision:
    """What the shield executes: `action`, whether it replaced the proposal, and why."""

    action: np.ndarray
    shielded: bool
    candidate: int
    q_h_proposed: float
    q_h_executed: float
    deferred: bool = False  # in violation: the proposal kept although Q_h(chosen) > threshold


def shield(out: AgentOutput, policy: int, threshold: float, in_violation: bool = False) -> ShieldDecision:
    """Keep the policy's action if Q_h(chosen) ≤ threshold or ``in_violation`` (see the module
    docstring), else execute the argmin-Q_h candidate."""
    chosen = CANDIDATE_INDEX[policy]
    q_h = np.asarray(out.q_h)
    q_chosen = float(q_h[chosen])
    if q_chosen <= threshold or in_violation:
        return ShieldDecision(
            np.asarray(out.candidates[chosen], np.float32),
            False,
            chosen,
            q_chosen,
            q_chosen,
            deferred=q_chosen > threshold,
        )
    best = int(np.argmin(q_h))
    return ShieldDecision(
        action=np.asarray(out.candidates[best], np.float32),
        shielded=best != chosen,
        candidate=best,
        q_h_proposed=q_chosen,
        q_h_executed=float(q_h[best]),
    )
