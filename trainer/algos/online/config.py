"""Typed configuration of the online learner and the trainer daemon (docs/method.md §7–§11)."""

from __future__ import annotations

from dataclasses import dataclass

from reachsafe.protocol.bundle import DEFAULT_KAPPA_C, DEFAULT_KAPPA_T
from reachsafe.protocol.config import Config, ConfigError, option
from reachsafe.trainer.algos.config import ComputeConfig
from reachsafe.trainer.algos.online.lagrange import LagrangeConfig


@dataclass
class VPAConfig(Config):
    enabled: bool = option(True, "Run Value Pre-Alignment (Marvel) once before going online.")
    steps: int = option(2000, "Critic updates on the offline data that align Q_r, Q_c with π_off.", ge=0)
    batch_size: int = option(128, "Batch size of the alignment updates.", ge=1)
    log_every: int = option(250, "Log the alignment losses every this many steps.", ge=1)
    check_episodes: int = option(
        0,
        "train online: π_off episodes (its mean action, unshielded, each 3/(1 − γ) steps longer than usual; "
        "seeds 20000 + 1000·seed + i) on which Q_r and Q_c are compared with their Monte-Carlo returns before "
        "and after VPA, into OUT/vpa_check.json (0 = no check).",
        ge=0,
    )


@dataclass
class ExpansionConfig(Config):
    enabled: bool = option(True, "Safe policy expansion {π_off, π_on}; off = always act with π_on.")
    kappa_t: float = option(
        DEFAULT_KAPPA_T, "Boltzmann temperature factor κ_T of the policy selection.", ge=0.0
    )
    kappa_c: float = option(
        DEFAULT_KAPPA_C, "Weight κ_c of Q_c in the selection score Q_r − κ_c·Q_c.", ge=0.0
    )
    kappa_c_from_lambda: bool = option(False, "Use the current λ as κ_c instead of the fixed value.")
    probe_every: int = option(
        25,
        "train online: at every evaluation, branch the greedy episodes every this many steps to check the "
        "selection against both policies' measured outcomes (0 = no probe; envs that can copy their state).",
        ge=0,
    )
    probe_horizon: int = option(20, "Steps each policy acts alone in a probe branch.", ge=1)

    def kappa_c_at(self, lam: float) -> float:
        """κ_c of the selection score while the Lagrange multiplier is ``lam``."""
        return lam if self.kappa_c_from_lambda else self.kappa_c


@dataclass
class ReplayConfig(Config):
    """Where the batches come from and how many updates each online step buys."""

    offline_ratio: float = option(
        0.5,
        "Fraction of every batch drawn from the offline dataset (the rest: online replay).",
        ge=0.0,
        le=1.0,
    )
    utd_ratio: float = option(1.0, "Gradient updates per new online step (update-to-data ratio).", gt=0.0)
    warmup_steps: int = option(256, "Online steps collected before the first update.", ge=0)
    capacity: int = option(100_000, "Online replay size in steps (one uint8 frame per step).", ge=1)


@dataclass
class OnlineShieldConfig(Config):
    """The threshold each shipped bundle's shield carries (docs/method.md §6, §11)."""

    threshold: float | None = option(
        None,
        "Q_h above this → the shield replaces the action, shipped as a fixed threshold; unset = recalibrated "
        "on the current Q_h for every bundle as the offline run's config says.",
    )
    recalibrate_every: int = option(
        500,
        "train online: recalibrate the threshold on the current Q_h after VPA and every this many updates, "
        "as the daemon does for every bundle it ships (0 = keep the starting threshold).",
        ge=0,
    )
    intervention_budget: float | None = option(
        0.1,
        "The shield replaces at most this fraction of the recent online proposals: each recalibration raises "
        "the threshold to the (1 − budget) quantile of Q_h at the last budget_window proposals when the "
        "offline-data calibration would replace more. Unset = the offline-data calibration alone; a "
        "configured threshold is shipped as is.",
        gt=0.0,
        lt=1.0,
    )
    budget_window: int = option(
        3000, "Online steps (newest first, all robots) the budget is measured on.", ge=1
    )
    budget_rate: float = option(
        0.2,
        "Adapt the budget after every episode: budget · exp(rate · (J_c − d) / max(d, 1)) with J_c the λ "
        "controller's recent mean episode cost and d the cost limit (0 = a fixed budget).",
        ge=0.0,
    )
    budget_min: float = option(0.01, "Lower clamp of the adapted budget.", gt=0.0, lt=1.0)
    budget_max: float = option(0.5, "Upper clamp of the adapted budget.", gt=0.0, lt=1.0)

    def validate(self) -> None:
        budget = self.intervention_budget
        if budget is not None and not self.budget_min <= budget <= self.budget_max:
            raise ConfigError(
                f"need budget_min ≤ intervention_budget ≤ budget_max, got {self.budget_min}, {budget}, "
                f"{self.budget_max}"
            )


@dataclass
class DaemonConfig(Config):
    """How the trainer daemon ships bundles."""

    ship_every_s: float = option(
        60.0, "Ship a new bundle every this many seconds (0 = never by time).", ge=0.0
    )
    ship_every_updates: int = option(
        0, "Ship a new bundle every this many updates (0 = never by count).", ge=0
    )
    keep_bundles: int = option(
        5, "Bundles kept in RUN/bundles/ for rollback (the current one and at least one before it).", ge=2
    )


@dataclass
class OnlineWorldModelConfig(Config):
    """The offline run's latent world model, kept learning online and imagined through (docs/method.md §13)."""

    enabled: bool = option(
        True,
        "Keep training the offline run's world model on every batch; π_on learns from imagined rollouts and "
        "the selection scores each policy by one. Off: model-free SAC-Lag and critic scores (the ablation).",
    )
    lr: float = option(3e-4, "Adam learning rate of the world model online.", gt=0.0)
    imagine_horizon: int = option(
        5, "Length H of π_on's imagined rollouts from the batch's latents, in steps.", ge=1
    )
    selection_horizon: int = option(
        5,
        "Length of the imagined rollout that scores each policy for selection, in steps (0 = the critics at "
        "the two proposals).",
        ge=0,
    )
    reach_weight: float = option(
        1.0,
        "Weight of Σ_t max(0, Q_h(ẑ_t, a_t)) over the imagined steps (mean per step) in π_on's loss: the "
        "reachability constraint on imagined actions.",
        ge=0.0,
    )


@dataclass
class OnlineConfig(Config):
    """Online fine-tuning: SAC-Lag for π_on (top-level fields), its data, the shield, λ, VPA, expansion."""

    VERSION = 2
    RENAMED = {
        "offline_ratio": "replay.offline_ratio",
        "utd_ratio": "replay.utd_ratio",
        "warmup_steps": "replay.warmup_steps",
        "replay_capacity": "replay.capacity",
        "shield_threshold": "shield.threshold",
        "shield_recalibrate_every": "shield.recalibrate_every",
        "shield_intervention_budget": "shield.intervention_budget",
        **{f"shield_budget_{k}": f"shield.budget_{k}" for k in ("window", "rate", "min", "max")},
        **{k: f"daemon.{k}" for k in ("ship_every_s", "ship_every_updates", "keep_bundles")},
    }

    version: int = option(2, "Config schema version; files written for a newer version are refused.")
    seed: int = option(0, "Random seed (torch, numpy, envs).")
    gamma: float = option(0.99, "Discount γ.", gt=0.0, lt=1.0)
    tau: float = option(0.005, "Polyak rate of the target networks.", gt=0.0, le=1.0)
    batch_size: int = option(128, "SAC-Lag batch size (offline + online samples together).", ge=2)
    lr_actor: float = option(
        3e-5,
        "Learning rate of π_on (small: it starts as π_off, and Q's action gradients are noisy early on).",
        gt=0.0,
    )
    lr_critic: float = option(
        3e-4, "Learning rate of Q_r, Q_c, Q_h, V_h (and of the encoder unless lr_encoder is set).", gt=0.0
    )
    lr_encoder: float | None = option(
        None,
        "Learning rate of the shared image/state encoder online (critic losses train it); 0 freezes it at "
        "the offline features π_on, π_off and the world model read; unset = 0 with the world model, else "
        "lr_critic.",
        ge=0.0,
    )
    lr_alpha: float = option(1e-3, "Learning rate of log α.", gt=0.0)
    alpha_init: float = option(
        0.01, "Initial entropy temperature α, in reward units per nat: match it to the reward scale.", gt=0.0
    )
    autotune_alpha: bool = option(True, "Learn α toward the target entropy −dim(A).")
    learn_qh: bool = option(True, "Keep training the reachability critic Q_h online.")
    qh_expectile: float = option(
        0.9, "Expectile of V_h toward the lower (feasible) side of Q_h.", gt=0.0, lt=1.0
    )
    anchor_weight: float = option(
        1.0,
        "Weight of ‖tanh μ_on − tanh μ_off‖² (π_on's mean action vs π_off's, on the batch's frames) in π_on's "
        "loss: holds π_on near π_off where Q_r's action gradient is mostly critic noise; 0 = plain SAC-Lag.",
        ge=0.0,
    )
    learn_interventions: bool = option(
        False,
        "For a step the shield replaced, also train Q_r and Q_c on the proposed action with the executed "
        "step's outcome (less intervention_penalty), so π_on and the selection learn what the shield prevents.",
    )
    intervention_penalty: float = option(
        0.1, "Reward subtracted from a replaced proposal's target, in reward units.", ge=0.0
    )
    replay: ReplayConfig = option(default_factory=ReplayConfig, help="Batch mixing and update rate.")
    shield: OnlineShieldConfig = option(default_factory=OnlineShieldConfig, help="The shipped shield.")
    lagrange: LagrangeConfig = option(default_factory=LagrangeConfig, help="λ controller.")
    vpa: VPAConfig = option(default_factory=VPAConfig, help="Value Pre-Alignment.")
    expansion: ExpansionConfig = option(default_factory=ExpansionConfig, help="Safe policy expansion.")
    world_model: OnlineWorldModelConfig = option(
        default_factory=OnlineWorldModelConfig, help="The world model online."
    )
    daemon: DaemonConfig = option(default_factory=DaemonConfig, help="Bundle shipping of the daemon.")
    compute: ComputeConfig = option(default_factory=ComputeConfig, help="bf16 autocast and torch.compile.")
    torch_threads: int = option(
        1,
        "torch intra-op threads of the learner on the CPU (0: auto, the cores this process may use less one "
        "for the daemon's ingest).",
        ge=0,
    )
    checkpoint_every_s: float = option(
        120.0, "Seconds between checkpoints (also written on SIGTERM).", gt=0.0
    )
