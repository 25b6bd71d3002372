"""The shield's intervention budget, adapted online to the episode cost the robots measure.

The budget caps the fraction of recent online proposals the shield may replace
(:func:`reachsafe.trainer.algos.shield.calibration.apply_intervention_budget`). A fixed cap keeps the shield as
strict at the end of fine-tuning as at the start, although by then the policy may be safe on its
own (docs/results/online-defaults.md). So after every finished episode the budget moves like a
multiplier on the recent mean episode cost J_c (the λ controller's window) against the limit d
(docs/method.md §11):

    budget ← clip(budget · exp(rate · (J_c − d) / max(d, 1)), budget_min, budget_max)

Below the limit it shrinks (the threshold rises, the shield stands back); above it, it grows back.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


class ShieldBudget:
    """The current intervention budget and its update rule (``rate`` 0: a fixed budget)."""

    def __init__(self, initial: float, rate: float, low: float, high: float) -> None:
        if not 0.0 < low <= initial <= high < 1.0:
            raise ValueError(f"need 0 < budget_min ≤ budget ≤ budget_max < 1, got {low}, {initial}, {high}")
        self.value = float(initial)
        self.rate, self.low, self.high = float(rate), float(low), float(high)

    def update(self, recent_costs: Sequence[float], cost_limit: float) -> float:
        """One step on the mean of ``recent_costs`` (episode costs) vs ``cost_limit``; returns the budget."""
        if self.rate > 0 and len(recent_costs) > 0:
            excess = (sum(recent_costs) / len(recent_costs) - cost_limit) / max(cost_limit, 1.0)
            self.value = min(self.high, max(self.low, self.value * math.exp(self.rate * excess)))
        return self.value

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = min(self.high, max(self.low, float(state["value"])))
