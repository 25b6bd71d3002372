"""Typed configuration of offline training (docs/method.md §1–§6)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from reachsafe.protocol.bundle import DEFAULT_KAPPA_C, DEFAULT_KAPPA_T
from reachsafe.protocol.config import Config, ConfigError, option
from reachsafe.trainer.models.networks import DEFAULT_PRIMITIVES


@dataclass
class OfflineConfig(Config):
    """Offline pretraining: world model, in-sample critics, reachability critics, weighted BC actor."""

    method: Literal["fosp", "bc"] = option(
        "fosp",
        "fosp: reachability-guided weighted BC with in-sample critics; bc: plain behaviour cloning baseline.",
    )
    steps: int = option(20000, "Gradient updates.")
    batch_size: int = option(
        32, "Sequences per update (each of wm_horizon steps; 1 step without the world model)."
    )
    seed: int = option(0, "Seed of torch, numpy and the batch sampler.")
    lr: float = option(3e-4, "Adam learning rate of every network.")
    grad_clip: float = option(10.0, "Gradient-norm clip per optimiser step (0 = off).")
    gamma: float = option(0.99, "Discount γ of the reward and cost values.")
    gamma_h: float = option(
        0.99,
        "Discount of the HJ reachability target. Q_h turns positive about log(1/(c_scale+1))/log(gamma_h) "
        "steps before a hazard the behaviour reaches (0.99: ~320 steps, 0.9: ~30 at c_scale 25).",
    )
    target_ema: float = option(0.005, "Polyak rate of the target encoder and target critics.")
    tau_r: float = option(0.7, "Expectile of V_r toward the upper side of Q_r (IQL).")
    tau_c: float = option(0.5, "Expectile of V_c on Q_c (0.5: the behaviour's expected cost).")
    tau_h: float = option(0.9, "Expectile of V_h toward the lower side of Q_h (best in-sample feasibility).")
    c_scale: float = option(25.0, "Reachability signal in a hazard: h = +c_scale if c > 0 else −1 (FISOR).")
    beta_r: float = option(
        0.3,
        "Inverse temperature of the reward advantage weight in feasible states (DESIGN.md's 3 cost more on "
        "SafeGoal1 images: docs/results.md).",
    )
    adv_cost_coef: float = option(
        0.0,
        "κ of the feasible-state advantage (Q_r − V_r) − κ(Q_c − V_c): 0 is DESIGN.md's reward-only form; "
        "κ > 0 also down-weights feasible actions that cost more than the behaviour's average.",
    )
    beta_h: float = option(5.0, "Inverse temperature of the feasibility weight in infeasible states.")
    max_weight_r: float = option(100.0, "Clip of the reward advantage weight.")
    max_weight_h: float = option(150.0, "Clip of the feasibility weight.")
    latent_dim: int = option(64, "Latent size z of the encoder.")
    hidden_dim: int = option(256, "Hidden width of the MLP heads.")
    cnn_channels: int = option(16, "Channels of the first CNN layers (image observations).")
    n_qh: int = option(2, "Q_h ensemble size (the maximum is used).")
    augment_pad: int = option(4, "Random-shift augmentation padding in pixels (0 = off; images only).")
    augment_colour: float = option(
        0.3,
        "Colour-jitter strength s (0 = off; images only): per-frame channel gains in [1 − s, 1 + s] and a "
        "brightness offset within ±s·128.",
    )
    world_model: bool = option(True, "Train the latent world model (dynamics, reward, cost, continuation).")
    wm_horizon: int = option(3, "Latent rollout length H of the multi-step consistency loss.")
    wm_rho: float = option(0.5, "Per-step discount of the world-model losses along the rollout.")
    wm_consistency_coef: float = option(2.0, "Weight of the latent consistency loss.")
    wm_reward_coef: float = option(0.5, "Weight of the reward-head loss.")
    wm_cost_coef: float = option(1.0, "Weight of the cost-head loss.")
    wm_continue_coef: float = option(0.5, "Weight of the continuation-head loss.")
    cost_pos_weight: float = option(10.0, "Up-weighting of positive (c > 0) samples in the cost head.")
    imagine: bool = option(
        True,
        "Add targets from imagined world-model rollouts of the current actor to V_r, V_c, V_h "
        "(only with world_model; on top of the in-sample losses).",
    )
    imagine_horizon: int = option(5, "Length H of the imagined rollouts from dataset latents.")
    imagine_start: int = option(
        200, "Updates before imagined targets are used, so that the world model has learned something first."
    )
    imagine_weight_v: float = option(
        0.5, "Weight of the V_r and V_c expectile losses toward the H-step imagined value targets."
    )
    imagine_weight_h: float = option(
        0.5, "Weight of the V_h expectile loss toward the imagined HJ reachability target."
    )
    shield_calibration: Literal["quantile", "fixed"] = option(
        "quantile",
        "How the exported shield threshold on Q_h is chosen. quantile: from Q_h at the dataset's own actions, "
        "so that the shield intervenes on at most shield_max_safe_intervention of the safe ones; "
        "fixed: shield_threshold.",
    )
    shield_max_safe_intervention: float = option(
        0.05,
        "quantile calibration: largest fraction of safe in-sample actions (no cost within shield_cost_horizon "
        "steps) the shield may replace.",
    )
    shield_threshold_floor: float | None = option(
        0.0,
        "quantile calibration never goes below this (0: the principled Q_h ≤ 0 boundary; null: no floor).",
    )
    shield_cost_horizon: int = option(
        10, "A dataset step is safe when it and the next shield_cost_horizon − 1 steps of its episode cost 0."
    )
    shield_calibration_samples: int = option(4096, "Dataset steps on which Q_h is evaluated to calibrate.")
    shield_threshold: float = option(
        0.0, "fixed calibration: the shield intervenes when Q_h(z, chosen) exceeds this."
    )
    selection_kappa_t: float = option(
        DEFAULT_KAPPA_T,
        "Policy-expansion temperature κ_T shipped in the bundle (robots use it unless they override it).",
    )
    selection_kappa_c: float = option(
        DEFAULT_KAPPA_C, "Weight κ_c of Q_c in the policy-expansion score, shipped in the bundle."
    )
    primitives: list[list[float]] = option(
        default_factory=lambda: [list(p) for p in DEFAULT_PRIMITIVES],
        help="Fixed candidate actions the shield may fall back to, after a_on, a_off and brake.",
    )
    torch_threads: int = option(
        1,
        "torch intra-op threads while training (0: torch's default). 1 is fastest on a small shared CPU, "
        "where a second thread mostly waits; raise it on a workstation.",
    )
    checkpoint_every: int = option(2000, "Save RUN/checkpoints/ every this many updates.")
    log_every: int = option(100, "Write TensorBoard scalars every this many updates.")
    calib_frames: int = option(256, "Dataset frames used for int8 calibration and the fp32/int8 comparison.")

    def validate(self) -> None:
        if self.steps < 0 or self.batch_size < 1:
            raise ConfigError("steps must be >= 0 and batch_size >= 1")
        for name in ("tau_r", "tau_c", "tau_h"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise ConfigError(f"{name} must lie in (0, 1), got {getattr(self, name)}")
        for name in ("gamma", "gamma_h"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise ConfigError(f"{name} must lie in (0, 1), got {getattr(self, name)}")
        if self.wm_horizon < 1:
            raise ConfigError(f"wm_horizon must be >= 1, got {self.wm_horizon}")
        if self.imagine_start < 0:
            raise ConfigError(f"imagine_start must be >= 0, got {self.imagine_start}")
        if self.imagine_horizon < 1:
            raise ConfigError(f"imagine_horizon must be >= 1, got {self.imagine_horizon}")
        if self.imagine_weight_v < 0 or self.imagine_weight_h < 0:
            raise ConfigError("imagine_weight_v and imagine_weight_h must be >= 0")
        if not 0.0 <= self.augment_colour < 1.0:
            raise ConfigError(f"augment_colour must lie in [0, 1), got {self.augment_colour}")
        if self.n_qh < 1:
            raise ConfigError(f"n_qh must be >= 1, got {self.n_qh}")
        if not 0.0 <= self.shield_max_safe_intervention < 1.0:
            raise ConfigError(
                f"shield_max_safe_intervention must lie in [0, 1), got {self.shield_max_safe_intervention}"
            )
        if self.shield_cost_horizon < 1 or self.shield_calibration_samples < 1:
            raise ConfigError("shield_cost_horizon and shield_calibration_samples must be >= 1")


def offline_config_from_checkpoint(ckpt: Mapping[str, Any], keep: Callable[[str], bool]) -> OfflineConfig:
    """The offline run's config as its checkpoint recorded it, with only the fields ``keep`` selects
    (the rest at their defaults): a run from an older trainer, which lacks new fields or has
    retired ones, still gives the values that are asked for."""
    config = ckpt.get("config", {})
    return OfflineConfig.from_dict(
        {k: v for k, v in config.items() if keep(k)}, source="offline checkpoint config"
    )
