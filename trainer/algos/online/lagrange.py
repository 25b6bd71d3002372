"""Lagrange multiplier control for the online cost constraint (docs/method.md §10).

Four modes, so the published rules can be run beside ours:

- ``pid``: OmniSafe 0.5.0's ``PIDLagrangian`` (Stooke et al. 2020), fixed gains;
- ``marvel``: Marvel's released adaptive PID (its ``utils.PIDLagrangian``): the same PID step, then
  gains adapted on the delayed cost-EMA buffer, once per gradient update;
- ``bounded`` (the default): the same PID step, then gains adapted on the recent-episode window with
  bounded steps, once per episode (ours; formerly called ``adaptive``);
- ``fixed``: λ constant.

λ reads 0 until the first update and the integral starts at ``lambda_init`` (default 0): the offline
multiplier is deliberately not carried over (Marvel's "Lagrangian mismatch").
"""

from __future__ import annotations

import logging
import math
from collections import deque
from dataclasses import dataclass
from typing import Any, Literal

from reachsafe.protocol.config import Config, option

logger = logging.getLogger(__name__)

LagrangianMode = Literal["bounded", "marvel", "pid", "fixed", "adaptive"]
#: old mode names → the mode they load as (config files and checkpoints of earlier runs)
DEPRECATED_MODES: dict[str, LagrangianMode] = {"adaptive": "bounded"}
#: Marvel's release adds this to every buffered cost EMA before averaging, so its mean is never 0
MARVEL_MEAN_OFFSET = 0.1


@dataclass
class LagrangeConfig(Config):
    mode: LagrangianMode = option(
        "bounded",
        "bounded = PID + our bounded gain adaptation, per episode; marvel = PID + Marvel's released "
        "gain adaptation, per gradient update; pid = OmniSafe's PID; fixed = constant λ; "
        "adaptive = deprecated name of bounded.",
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
    lambda_max: float = option(
        100.0, "Upper clip of λ (OmniSafe's penalty_max), applied unless sum_norm or diff_norm.", ge=0.0
    )
    lambda_init: float = option(
        0.0,
        "Initial integral term I_0 (OmniSafe's lagrangian_multiplier_init); λ itself reads 0 until the "
        "first update.",
        ge=0.0,
    )
    sum_norm: bool = option(
        False,
        "OmniSafe's sum_norm: lifts the lambda_max clip (the actor loss is divided by 1 + λ either way).",
    )
    diff_norm: bool = option(False, "OmniSafe's diff_norm: the integral and λ clipped to [0, 1].")
    lambda_fixed: float = option(0.0, "λ in mode 'fixed'.", ge=0.0)
    adapt_rate: float = option(0.05, "Gain adaptation rate η (modes bounded and marvel).", ge=0.0)
    window: int = option(
        10, "Episodes in the recent-cost window whose mean the controller reads (Marvel's release: 5).", ge=1
    )

    def __post_init__(self) -> None:
        if self.mode in DEPRECATED_MODES:  # earlier files and checkpoints name the mode by its old name
            new = DEPRECATED_MODES[self.mode]
            logger.warning("lagrange mode %r is deprecated; loading it as %r", self.mode, new)
            self.mode = new
        super().__post_init__()


class PIDLagrangian:
    """λ from the recent mean episode cost e against the limit d.

    PID step (OmniSafe 0.5.0, ``omnisafe/common/pid_lagrange.py``, ``PIDLagrangian.pid_update``), in
    this order::

        Δ = e − d
        I ← max(0, I + K_i·Δ)                       (diff_norm: I ← min(1, I));  I_0 = lambda_init
        P ← a_p·P + (1 − a_p)·Δ
        C ← a_d·C + (1 − a_d)·e
        D = max(0, C − C_buf[0])                    C_buf: the last d_delay values of C, [0] at start
        λ = max(0, K_p·P + I + K_d·D)               diff_norm: min(1, λ); neither norm: min(λ, λ_max)
        C_buf.append(C)

    Then the gains, each clamped to [K₀/10, 10·K₀] (K₀ the configured gain):

    - ``marvel`` (Marvel's release, ``utils.PIDLagrangian.adapt_pid_parameters``), on the buffer::

          m = mean(C_buf) + 0.1,  s = std(C_buf) (population)
          K_p ← K_p·(1 + η·(m − d)/m),  K_i ← K_i·(1 + η·(m − d)/m),  K_d ← K_d·(1 + η·s/m)

    - ``bounded`` (ours), on e and the window's std σ: see :meth:`_adapt_bounded`.

    Cadence: :meth:`update_from_window` is the per-episode call (pid, bounded); Marvel's release
    steps once per actor minibatch on the mean cost of its latest rollout, which is
    :meth:`on_gradient_step` here. Each is a no-op in the other modes, so a caller makes both calls.
    """

    def __init__(self, cfg: LagrangeConfig) -> None:
        self.cfg = cfg
        self.kp, self.ki, self.kd = cfg.kp, cfg.ki, cfg.kd
        self.integral = cfg.lambda_init
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
        """Per-episode call: one step on the window's mean and std (no-op in mode marvel, or until an
        episode finished)."""
        if not self.recent or self.cfg.mode == "marvel":
            return self.lam
        n = len(self.recent)
        mean = sum(self.recent) / n
        std = math.sqrt(sum((c - mean) ** 2 for c in self.recent) / n)
        return self.update(mean, std)

    def on_gradient_step(self) -> float:
        """Per-gradient-update call: in mode marvel one step on the window's mean, Marvel's
        ``pid_update(episode_cost)`` before each actor minibatch (no-op otherwise)."""
        if not self.recent or self.cfg.mode != "marvel":
            return self.lam
        return self.update(sum(self.recent) / len(self.recent))

    def update(self, mean_cost: float, std_cost: float = 0.0) -> float:
        """One controller step on the recent mean episode cost, whatever the cadence; returns λ."""
        self.updates += 1
        if self.cfg.mode == "fixed":
            return self.lam
        self._pid_step(float(mean_cost))
        if self.cfg.mode == "bounded":
            self._adapt_bounded(float(mean_cost), float(std_cost))
        elif self.cfg.mode == "marvel":
            self._adapt_marvel()
        return self.lam

    def _pid_step(self, cost: float) -> None:
        """OmniSafe's ``pid_update``, operation for operation (the reference test holds it to 1e-9)."""
        cfg = self.cfg
        delta = cost - cfg.cost_limit
        self.integral = max(0.0, self.integral + delta * self.ki)
        if cfg.diff_norm:
            self.integral = min(1.0, self.integral)
        self.delta_p = cfg.p_ema_alpha * self.delta_p + (1.0 - cfg.p_ema_alpha) * delta
        self.cost_d = cfg.d_ema_alpha * self.cost_d + (1.0 - cfg.d_ema_alpha) * cost
        pid_d = max(0.0, self.cost_d - self.cost_ds[0])
        lam = max(0.0, self.kp * self.delta_p + self.integral + self.kd * pid_d)
        if cfg.diff_norm:
            lam = min(1.0, lam)
        elif not cfg.sum_norm:
            lam = min(lam, cfg.lambda_max)
        self.lam = lam
        self.cost_ds.append(self.cost_d)

    def _adapt_marvel(self) -> None:
        """Marvel's release: statistics of the delayed cost-EMA buffer (after this step's append), the
        relative error divided by the buffer mean below the limit too, K_d's step unbounded."""
        cfg, eta = self.cfg, self.cfg.adapt_rate
        n = len(self.cost_ds)
        mean = sum(self.cost_ds) / n
        std = math.sqrt(sum((c - mean) ** 2 for c in self.cost_ds) / n)
        m = mean + MARVEL_MEAN_OFFSET
        rel = (m - cfg.cost_limit) / m
        self.kp = _clamp_gain(self.kp * (1.0 + eta * rel), cfg.kp)
        self.ki = _clamp_gain(self.ki * (1.0 + eta * rel), cfg.ki)
        self.kd = _clamp_gain(self.kd * (1.0 + eta * std / m), cfg.kd)

    def _adapt_bounded(self, e: float, std: float) -> None:
        """Ours: raise K_p, K_i while the cost is above the limit, lower them below it, by at most η.

        ρ = (e − d)/max(e, d): above the limit Marvel's paper's (e − d)/e, below it (e − d)/d, so the
        factor 1 + η·ρ stays in [1 − η, 1 + η]. With /e, one episode of cost e ≪ d (e = 0.1, d = 10,
        η = 0.05: factor 1 − 4.95) sends K_p, K_i straight to the floor K₀/10, and λ then rises slowly
        when costs do. K_d ← K_d·(1 + η·min(1, σ/max(e, d))) for the same reason. Both are 0 when
        e = d = 0.
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
