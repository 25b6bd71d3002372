"""Typed configuration of the online learner and the trainer daemon (docs/method.md §7–§11)."""

from __future__ import annotations

from dataclasses import dataclass

from reachsafe.protocol.bundle import DEFAULT_KAPPA_C, DEFAULT_KAPPA_T
from reachsafe.protocol.config import Config, ConfigError, option
from reachsafe.trainer.algos.online.lagrange import LagrangeConfig


@dataclass
class VPAConfig(Config):
    enabled: bool = option(True, "Run Value Pre-Alignment (Marvel) once before going online.")
    steps: int = option(2000, "Critic updates on the offline data that align Q_r, Q_c with π_off.")
    batch_size: int = option(128, "Batch size of the alignment updates.")
    log_every: int = option(250, "Log the alignment losses every this many steps.")


@dataclass
class ExpansionConfig(Config):
    enabled: bool = option(True, "Safe policy expansion {π_off, π_on}; off = always act with π_on.")
    kappa_t: float = option(DEFAULT_KAPPA_T, "Boltzmann temperature factor κ_T of the policy selection.")
    kappa_c: float = option(DEFAULT_KAPPA_C, "Weight κ_c of Q_c in the selection score Q_r − κ_c·Q_c.")
    kappa_c_from_lambda: bool = option(False, "Use the current λ as κ_c instead of the fixed value.")

    def kappa_c_at(self, lam: float) -> float:
        """κ_c of the selection score while the Lagrange multiplier is ``lam``."""
        return lam if self.kappa_c_from_lambda else self.kappa_c


@dataclass
class OnlineConfig(Config):
    seed: int = option(0, "Random seed (torch, numpy, envs).")
    gamma: float = option(0.99, "Discount γ.")
    tau: float = option(0.005, "Polyak rate of the target networks.")
    batch_size: int = option(128, "SAC-Lag batch size (offline + online samples together).")
    lr_actor: float = option(
        3e-5,
        "Learning rate of π_on (small: it starts as π_off, and Q's action gradients are noisy early on).",
    )
    lr_critic: float = option(
        3e-4, "Learning rate of Q_r, Q_c, Q_h, V_h (and of the encoder unless lr_encoder is set)."
    )
    lr_encoder: float | None = option(
        None,
        "Learning rate of the shared image/state encoder online (critic losses train it); 0 freezes it at "
        "the offline features π_on was trained on; unset = lr_critic.",
    )
    lr_alpha: float = option(
        1e-3, "Learning rate of log α (fast enough to settle within a few thousand updates)."
    )
    alpha_init: float = option(
        0.01,
        "Initial entropy temperature α. Match it to the reward scale: with SafeGoal's ~0.01–0.05 reward per "
        "step, α = 0.05 outweighed the reward and kept π_on near random; α settles near 0.005 there.",
    )
    autotune_alpha: bool = option(True, "Learn α toward the target entropy −dim(A).")
    offline_ratio: float = option(
        0.5, "Fraction of every batch drawn from the offline dataset (rest: online replay)."
    )
    utd_ratio: float = option(1.0, "Gradient updates per new online step (update-to-data ratio).")
    warmup_steps: int = option(256, "Online steps collected before the first update.")
    replay_capacity: int = option(100_000, "Online replay size in steps (one uint8 frame per step).")
    learn_qh: bool = option(True, "Keep training the reachability critic Q_h online.")
    qh_expectile: float = option(0.9, "Expectile of V_h toward the lower (feasible) side of Q_h.")
    shield_threshold: float | None = option(
        None,
        "Q_h above this → the shield replaces the action (shipped as a fixed threshold); unset = the daemon "
        "recalibrates it on the current Q_h for every bundle as the offline run's config says "
        "(train online: every shield_recalibrate_every updates).",
    )
    shield_recalibrate_every: int = option(
        500,
        "train online: recalibrate the shield threshold on the current Q_h after VPA and every this many "
        "updates, as the daemon does for every bundle it ships (0 = keep the starting threshold).",
    )
    shield_intervention_budget: float | None = option(
        0.1,
        "The shield replaces at most this fraction of the recent online proposals: every recalibration "
        "raises the threshold to the (1 − budget) quantile of Q_h at the last shield_budget_window proposals "
        "when the offline-data calibration would replace more (Q_h drifts up on unseen scenes). Unset = the "
        "offline-data calibration alone; a configured shield_threshold is shipped as is.",
    )
    shield_budget_window: int = option(
        3000, "Online steps (newest first, all robots) the intervention budget is measured on."
    )
    shield_budget_rate: float = option(
        0.2,
        "Adapt the intervention budget after every episode: budget · exp(rate · (J_c − d) / max(d, 1)) with "
        "J_c the λ controller's recent mean episode cost, so the shield stands back while the robots stay "
        "under the cost limit d and steps in again above it (0 = a fixed budget; docs/results.md measures both).",
    )
    shield_budget_min: float = option(0.01, "Lower clamp of the adapted intervention budget.")
    shield_budget_max: float = option(0.5, "Upper clamp of the adapted intervention budget.")
    anchor_weight: float = option(
        1.0,
        "Weight of ‖tanh μ_on − tanh μ_off‖² (π_on's mean action vs π_off's, on the batch's frames) in π_on's "
        "loss: holds π_on near π_off where Q_r's action gradient is mostly critic noise; 0 = plain SAC-Lag.",
    )
    learn_interventions: bool = option(
        False,
        "For a step the shield replaced, also train Q_r and Q_c on the proposed action with the executed "
        "step's outcome (less intervention_penalty), so π_on and the selection learn what the shield "
        "prevents. Off by default: on SafeGoal1 (3 seeds, penalty 0.1) it raised the final evaluation cost "
        "(28–53 vs 3–6 per episode without it).",
    )
    intervention_penalty: float = option(
        0.1,
        "Reward subtracted from a replaced proposal's target (in reward units: SafeGoal pays ~0.01–0.05 "
        "per step, 1 per goal).",
    )
    lagrange: LagrangeConfig = option(default_factory=LagrangeConfig, help="λ controller.")
    vpa: VPAConfig = option(default_factory=VPAConfig, help="Value Pre-Alignment.")
    expansion: ExpansionConfig = option(default_factory=ExpansionConfig, help="Safe policy expansion.")
    torch_threads: int = option(1, "torch intra-op threads of the learner (leave a core for ingest).")
    checkpoint_every_s: float = option(120.0, "Seconds between checkpoints (also written on SIGTERM).")
    ship_every_s: float = option(
        60.0, "Daemon: ship a new bundle every this many seconds (0 = never by time)."
    )
    ship_every_updates: int = option(
        0, "Daemon: ship a new bundle every this many updates (0 = never by count)."
    )
    keep_bundles: int = option(5, "Daemon: bundles kept in RUN/bundles/ for rollback.")

    def validate(self) -> None:
        if not 0.0 <= self.offline_ratio <= 1.0:
            raise ConfigError(f"offline_ratio must be in [0, 1], got {self.offline_ratio}")
        if self.utd_ratio <= 0:
            raise ConfigError(f"utd_ratio must be > 0, got {self.utd_ratio}")
        if not 0.0 < self.gamma < 1.0:
            raise ConfigError(f"gamma must be in (0, 1), got {self.gamma}")
        if self.keep_bundles < 2:
            raise ConfigError(
                f"keep_bundles must be ≥ 2 (the current one and one to roll back to), got {self.keep_bundles}"
            )
        if self.shield_recalibrate_every < 0:
            raise ConfigError(f"shield_recalibrate_every must be ≥ 0, got {self.shield_recalibrate_every}")
        if self.lr_encoder is not None and self.lr_encoder < 0:
            raise ConfigError(f"lr_encoder must be ≥ 0 (0 freezes the encoder), got {self.lr_encoder}")
        if self.shield_intervention_budget is not None and not 0.0 < self.shield_intervention_budget < 1.0:
            raise ConfigError(
                f"shield_intervention_budget must lie in (0, 1) (unset: no budget), got {self.shield_intervention_budget}"
            )
        if self.shield_intervention_budget is not None and not (
            0.0 < self.shield_budget_min <= self.shield_intervention_budget <= self.shield_budget_max < 1.0
        ):
            raise ConfigError(
                "need 0 < shield_budget_min ≤ shield_intervention_budget ≤ shield_budget_max < 1, got "
                f"{self.shield_budget_min}, {self.shield_intervention_budget}, {self.shield_budget_max}"
            )
        if self.shield_budget_rate < 0:
            raise ConfigError(
                f"shield_budget_rate must be ≥ 0 (0 = a fixed budget), got {self.shield_budget_rate}"
            )
        if self.shield_budget_window < 1:
            raise ConfigError(f"shield_budget_window must be ≥ 1, got {self.shield_budget_window}")
        if self.anchor_weight < 0:
            raise ConfigError(f"anchor_weight must be ≥ 0 (0 = no anchor), got {self.anchor_weight}")
        if self.intervention_penalty < 0:
            raise ConfigError(
                f"intervention_penalty must be ≥ 0 (it is subtracted from the reward), got {self.intervention_penalty}"
            )
        if self.batch_size < 2:
            raise ConfigError(f"batch_size must be ≥ 2, got {self.batch_size}")
