"""Lagrange multiplier control for the online cost constraint (docs/method.md §10).

OmniSafe's PID Lagrangian (Stooke et al. 2020) with Marvel's adaptation of the gains after each
update. λ starts at 0 online: the offline multiplier is deliberately not carried over (Marvel's
"Lagrangian mismatch"). Three modes for ablation: ``adaptive`` (PID + gain adaptation), ``pid``
(plain PID, fixed gains) and ``fixed`` (λ constant).
"""

from __future__ import annotations

import logging
import math
from collections import deque
from dataclasses import dataclass
from typing import Any, Literal

from reachsafe.protocol.config import Config, option

logger = logging.getLogger(__name__)

LagrangianMode = Literal["adaptive", "pid", "fixed"]


@dataclass
class LagrangeConfig(Config):
    mode: LagrangianMode = option(
        "adaptive", "adaptive = PID + Marvel gain adaptation; pid = plain PID; fixed = constant λ."
    )
    cost_limit: float = option(25.0, "Episode cost limit d, in cost units per episode.", ge=0.0)
    kp: float = option(0.1, "Initial proportional gain K_p0.", ge=0.0)
    ki: float = option(0.01, "Initial integral gain K_i0.", ge=0.0)
    kd: float = option(0.01, "Initial derivative gain K_d0.", ge=0.0)
    p_ema_alpha: float = option(
        0.95, "EMA factor of the proportional term (OmniSafe's pid_delta_p_ema_alpha).", ge=0.0, lt=1.0
    )
    d_ema_alpha: float = option(0.95, "EMA factor of the cost used by the derivative term.", ge=0.0, lt=1.0)
    d_delay: int = option(
        10, "The derivative compares the cost EMA with its value this many updates ago.", ge=1
    )
    lambda_max: float = option(100.0, "Upper clip of λ.", ge=0.0)
    lambda_fixed: float = option(0.0, "λ in mode 'fixed'.", ge=0.0)
    adapt_rate: float = option(0.05, "Marvel's gain adaptation rate η.", ge=0.0)
    window: int = option(10, "Episodes in the recent-cost window the controller sees.", ge=1)


class PIDLagrangian:
    """λ from the recent mean episode cost J_c against the limit d.

    ``update(J_c, std)`` performs one OmniSafe PID step
    (Δ = J_c − d; I ← max(0, I + K_i Δ); P ← EMA(Δ); D = max(0, EMA(J_c) − EMA d_delay updates ago);
    λ = clip(K_p P + I + K_d D, 0, λ_max)) and then, in mode ``adaptive``, Marvel's gain
    adaptation with bounded steps (see :meth:`_adapt`), every gain clamped to [K₀/10, 10·K₀].
    """

    def __init__(self, cfg: LagrangeConfig) -> None:
        self.cfg = cfg
        self.kp, self.ki, self.kd = cfg.kp, cfg.ki, cfg.kd
        self.integral = 0.0
        self.delta_p = 0.0
        self.cost_d = 0.0
        self.cost_ds: deque[float] = deque([0.0], maxlen=cfg.d_delay)
        self.lam = cfg.lambda_fixed if cfg.mode == "fixed" else 0.0
        self.updates = 0
        self.recent: deque[float] = deque(maxlen=cfg.window)

    @property
    def value(self) -> float:
        return self.lam

    def observe_episode(self, episode_cost: float) -> None:
        """Add one finished episode's cost to the recent window."""
        self.recent.append(float(episode_cost))

    def update_from_window(self) -> float:
        """One update from the recent-episode window (no-op until an episode finished)."""
        if not self.recent:
            return self.lam
        n = len(self.recent)
        mean = sum(self.recent) / n
        std = math.sqrt(sum((c - mean) ** 2 for c in self.recent) / n)
        return self.update(mean, std)

    def update(self, mean_cost: float, std_cost: float = 0.0) -> float:
        """One controller step on the recent mean episode cost; returns the new λ."""
        cfg = self.cfg
        self.updates += 1
        if cfg.mode == "fixed":
            return self.lam
        delta = float(mean_cost) - cfg.cost_limit
        self.integral = max(0.0, self.integral + self.ki * delta)
        self.delta_p = cfg.p_ema_alpha * self.delta_p + (1.0 - cfg.p_ema_alpha) * delta
        self.cost_d = cfg.d_ema_alpha * self.cost_d + (1.0 - cfg.d_ema_alpha) * float(mean_cost)
        pid_d = max(0.0, self.cost_d - self.cost_ds[0])
        self.lam = min(max(0.0, self.kp * self.delta_p + self.integral + self.kd * pid_d), cfg.lambda_max)
        self.cost_ds.append(self.cost_d)
        if cfg.mode == "adaptive":
            self._adapt(float(mean_cost), float(std_cost))
        return self.lam

    def _adapt(self, e: float, std: float) -> None:
        """Marvel: raise K_p, K_i while the cost is above the limit, lower them below it.

        Deliberate deviation (docs/method.md §10): the relative error is taken against max(e, d), not
        e. Above the limit this is DESIGN's (e − d)/e; below it (e − d)/d, so the factor stays in
        [1 − η, 1 + η]. With /e, one episode of cost e ≪ d (e = 0.1, d = 10, η = 0.05: factor
        1 − 4.95) sends K_p, K_i straight to the floor K₀/10, and λ then rises slowly when costs do.
        K_d's step std/max(e, d) is capped at 1 for the same reason. Both are 0 when e = d = 0.
        """
        cfg, eta = self.cfg, self.cfg.adapt_rate
        scale = max(e, cfg.cost_limit)
        rel = (e - cfg.cost_limit) / scale if scale > 0 else 0.0
        self.kp = _clamp_gain(self.kp * (1.0 + eta * rel), cfg.kp)
        self.ki = _clamp_gain(self.ki * (1.0 + eta * rel), cfg.ki)
        if std > 0.0 and scale > 0:
            self.kd = _clamp_gain(self.kd * (1.0 + eta * min(1.0, std / scale)), cfg.kd)

    def state_dict(self) -> dict[str, Any]:
        return {
            "kp": self.kp,
            "ki": self.ki,
            "kd": self.kd,
            "integral": self.integral,
            "delta_p": self.delta_p,
            "cost_d": self.cost_d,
            "cost_ds": list(self.cost_ds),
            "lam": self.lam,
            "updates": self.updates,
            "recent": list(self.recent),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.kp, self.ki, self.kd = float(state["kp"]), float(state["ki"]), float(state["kd"])
        self.integral, self.delta_p = float(state["integral"]), float(state["delta_p"])
        self.cost_d, self.lam = float(state["cost_d"]), float(state["lam"])
        self.cost_ds = deque((float(c) for c in state["cost_ds"]), maxlen=self.cfg.d_delay)
        self.updates = int(state["updates"])
        self.recent = deque((float(c) for c in state["recent"]), maxlen=self.cfg.window)

    def metrics(self) -> dict[str, float]:
        return {
            "lagrange/lambda": self.lam,
            "lagrange/kp": self.kp,
            "lagrange/ki": self.ki,
            "lagrange/kd": self.kd,
            "lagrange/integral": self.integral,
            "lagrange/recent_cost": (sum(self.recent) / len(self.recent)) if self.recent else 0.0,
        }


def _clamp_gain(value: float, initial: float) -> float:
    return min(max(value, initial / 10.0), initial * 10.0)
