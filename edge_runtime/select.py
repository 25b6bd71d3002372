"""Safe policy expansion (FOSP): choose between the online and the offline policy's action.

Each policy is scored at *its own* action, score_i = Q_r(z, a_i) − κ_c·Q_c(z, a_i) (the graph's
`q_r`/`q_c` column i), and picked with P(i) ∝ exp(κ_T·score_i) in explore mode, or by the
highest score in eval mode (ties go to the online policy).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from reachsafe.edge_runtime.inference import AgentOutput
from reachsafe.protocol.bundle import DEFAULT_KAPPA_C, DEFAULT_KAPPA_T
from reachsafe.protocol.constants import POLICY_OFFLINE, POLICY_ONLINE

Mode = Literal["explore", "eval"]


@dataclass(frozen=True)
class SelectionParams:
    """κ_T and κ_c of the policy-expansion score; they travel with the bundle (`selection`).

    The defaults apply when neither the manifest (older bundles) nor the edge config gives them.
    """

    kappa_t: float = DEFAULT_KAPPA_T
    kappa_c: float = DEFAULT_KAPPA_C

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any]) -> SelectionParams:
        """The manifest's `selection` section (validated by reachsafe.protocol.bundle), else the defaults."""
        sel = manifest.get("selection")
        if sel is None:
            return cls()
        return cls(float(sel["kappa_t"]), float(sel["kappa_c"]))

    def overridden(self, kappa_t: float | None, kappa_c: float | None) -> SelectionParams:
        """These parameters with each explicitly configured value (not None) in its place."""
        return SelectionParams(
            self.kappa_t if kappa_t is None else kappa_t, self.kappa_c if kappa_c is None else kappa_c
        )


@dataclass(frozen=True)
class Selection:
    """The chosen policy (`POLICY_ONLINE` / `POLICY_OFFLINE`), its action and the pick probabilities."""

    policy: int
    action: np.ndarray
    probs: np.ndarray


def selection_probabilities(q_r: np.ndarray, q_c: np.ndarray, kappa_t: float, kappa_c: float) -> np.ndarray:
    """P(online), P(offline) ∝ exp(κ_T·(Q_r − κ_c·Q_c)) for one step (numerically stable softmax)."""
    logits = kappa_t * (np.asarray(q_r, np.float64) - kappa_c * np.asarray(q_c, np.float64))
    logits -= logits.max()
    p = np.exp(logits)
    return p / p.sum()


def select(
    out: AgentOutput, mode: Mode, kappa_t: float, kappa_c: float, rng: np.random.Generator
) -> Selection:
    """Pick the online or offline action from one (unbatched) graph output."""
    probs = selection_probabilities(out.q_r, out.q_c, kappa_t, kappa_c)
    if mode == "eval":
        idx = int(np.argmax(probs))  # argmax returns the first maximum: online wins ties
    elif mode == "explore":
        idx = int(rng.random() >= probs[0])
    else:
        raise ValueError(f"unknown selection mode {mode!r}; use 'explore' or 'eval'")
    policy = POLICY_ONLINE if idx == 0 else POLICY_OFFLINE
    action = out.a_on if idx == 0 else out.a_off
    return Selection(policy=policy, action=np.asarray(action, np.float32), probs=probs)
