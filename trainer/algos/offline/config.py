"""Typed configuration of offline pretraining (docs/method.md §1–§6), nested by section.

Version 2 nests what version 1 kept flat under name prefixes (``wm_*``, ``imagine_*``, ``shield_*``,
…); :attr:`OfflineConfig.RENAMED` maps every old key to its place, so version-1 files, checkpoints
and command-line options still load.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from reachsafe.protocol.bundle import DEFAULT_KAPPA_C, DEFAULT_KAPPA_T, DEFAULT_PRIMITIVES
from reachsafe.protocol.config import Config, option
from reachsafe.trainer.algos.config import ComputeConfig

if TYPE_CHECKING:  # configs stay importable without torch (`--help` of a part whose extra is missing)
    from reachsafe.trainer.models.world_model import WorldModelLossWeights


@dataclass
class NetworkConfig(Config):
    """Sizes of the agent's networks."""

    latent_dim: int = option(64, "Latent size z of the encoder.", ge=1)
    hidden_dim: int = option(256, "Hidden width of the MLP heads.", ge=1)
    cnn_channels: int = option(16, "Channels of the first CNN layers (image observations).", ge=1)
    n_qh: int = option(2, "Q_h ensemble size (the maximum is used).", ge=1)


@dataclass
class AugmentConfig(Config):
    """Image augmentation of offline batches (images only)."""

    pad: int = option(4, "Random-shift padding in pixels (0 = off).", ge=0)
    colour: float = option(
        0.3,
        "Colour-jitter strength s (0 = off): per-frame channel gains in [1 − s, 1 + s] and a brightness "
        "offset within ±s·128.",
        ge=0.0,
        lt=1.0,
    )


@dataclass
class WorldModelConfig(Config):
    """The latent world model: dynamics, reward, cost and continuation heads (docs/method.md §1)."""

    enabled: bool = option(True, "Train the latent world model (off: the model-free ablation).")
    horizon: int = option(3, "Latent rollout length H of the multi-step consistency loss, in steps.", ge=1)
    rho: float = option(0.5, "Per-step discount of the world-model losses along the rollout.", gt=0.0, le=1.0)
    consistency_coef: float = option(2.0, "Weight of the latent consistency loss.", ge=0.0)
    reward_coef: float = option(0.5, "Weight of the reward-head loss.", ge=0.0)
    cost_coef: float = option(1.0, "Weight of the cost-head loss.", ge=0.0)
    continue_coef: float = option(0.5, "Weight of the continuation-head loss.", ge=0.0)
    cost_pos_weight: float = option(
        10.0, "Up-weighting of positive (c > 0) samples in the cost head.", gt=0.0
    )

    def loss_weights(self) -> WorldModelLossWeights:
        """The loss weights of :meth:`WorldModel.loss` (offline, and online where it keeps learning)."""
        from reachsafe.trainer.models.world_model import WorldModelLossWeights

        return WorldModelLossWeights(
            consistency=self.consistency_coef,
            reward=self.reward_coef,
            cost=self.cost_coef,
            continuation=self.continue_coef,
            rho=self.rho,
            cost_pos_weight=self.cost_pos_weight,
        )


@dataclass
class ImagineConfig(Config):
    """Value targets from imagined world-model rollouts of the current actor (docs/method.md §5)."""

    enabled: bool = option(
        True, "Add imagined targets to V_r, V_c, V_h (needs the world model; on top of the in-sample losses)."
    )
    horizon: int = option(5, "Length H of the imagined rollouts from dataset latents, in steps.", ge=1)
    start: int = option(200, "Updates before imagined targets are used (the world model learns first).", ge=0)
    weight_v: float = option(0.5, "Weight of the V_r and V_c losses toward the imagined targets.", ge=0.0)
    weight_h: float = option(0.5, "Weight of the V_h loss toward the imagined HJ target.", ge=0.0)


@dataclass
class ShieldCalibrationConfig(Config):
    """How the exported shield threshold on Q_h is chosen (docs/method.md §6)."""

    calibration: Literal["quantile", "fixed"] = option(
        "quantile",
        "quantile: from Q_h at the dataset's own actions, so that the shield replaces at most "
        "max_safe_intervention of the safe ones; fixed: threshold.",
    )
    max_safe_intervention: float = option(
        0.05,
        "quantile: largest fraction of safe in-sample actions (no cost within cost_horizon steps) the shield "
        "may replace.",
        ge=0.0,
        lt=1.0,
    )
    threshold_floor: float | None = option(
        0.0, "quantile: the threshold never goes below this (0: the Q_h ≤ 0 boundary; null: no floor)."
    )
    cost_horizon: int = option(
        10, "A dataset step is safe when it and its next cost_horizon − 1 steps cost 0 (steps).", ge=1
    )
    calibration_samples: int = option(4096, "Dataset steps on which Q_h is evaluated to calibrate.", ge=1)
    threshold: float = option(0.0, "fixed: the shield intervenes when Q_h(z, chosen) exceeds this.")


@dataclass
class SelectionConfig(Config):
    """Policy-expansion parameters shipped in the bundle; robots use them unless they override them."""

    kappa_t: float = option(DEFAULT_KAPPA_T, "Boltzmann temperature factor κ_T of the selection.", ge=0.0)
    kappa_c: float = option(
        DEFAULT_KAPPA_C, "Weight κ_c of Q_c in the selection score Q_r − κ_c·Q_c.", ge=0.0
    )


@dataclass
class OfflineConfig(Config):
    """Offline pretraining: world model, in-sample critics, reachability critics, weighted BC actor."""

    VERSION = 2
    RENAMED = {
        **{k: f"network.{k}" for k in ("latent_dim", "hidden_dim", "cnn_channels", "n_qh")},
        "augment_pad": "augment.pad",
        "augment_colour": "augment.colour",
        "world_model": "world_model.enabled",
        **{f"wm_{k}": f"world_model.{k}" for k in ("horizon", "rho", "consistency_coef", "reward_coef")},
        **{f"wm_{k}": f"world_model.{k}" for k in ("cost_coef", "continue_coef")},
        "cost_pos_weight": "world_model.cost_pos_weight",
        "imagine": "imagine.enabled",
        **{f"imagine_{k}": f"imagine.{k}" for k in ("horizon", "start", "weight_v", "weight_h")},
        "shield_calibration": "shield.calibration",
        **{
            f"shield_{k}": f"shield.{k}"
            for k in (
                "max_safe_intervention",
                "threshold_floor",
                "cost_horizon",
                "calibration_samples",
                "threshold",
            )
        },
        "selection_kappa_t": "selection.kappa_t",
        "selection_kappa_c": "selection.kappa_c",
    }

    version: int = option(2, "Config schema version; files written for a newer version are refused.")
    method: Literal["fosp", "bc"] = option(
        "fosp",
        "fosp: reachability-guided weighted BC with in-sample critics; bc: plain behaviour cloning baseline.",
    )
    steps: int = option(20000, "Gradient updates in all (a resumed run counts the ones it had).", ge=0)
    batch_size: int = option(
        32, "Sequences per update (each of world_model.horizon steps; 1 step without the world model).", ge=1
    )
    seed: int = option(0, "Seed of torch, numpy and the batch sampler.")
    lr: float = option(3e-4, "Adam learning rate of every network.", gt=0.0)
    grad_clip: float = option(10.0, "Gradient-norm clip per optimiser step (0 = off).", ge=0.0)
    gamma: float = option(0.99, "Discount γ of the reward and cost values.", gt=0.0, lt=1.0)
    gamma_h: float = option(0.99, "Discount γ_h of the HJ reachability target.", gt=0.0, lt=1.0)
    target_ema: float = option(0.005, "Polyak rate of the target encoder and target critics.", gt=0.0, le=1.0)
    tau_r: float = option(0.7, "Expectile of V_r toward the upper side of Q_r (IQL).", gt=0.0, lt=1.0)
    tau_c: float = option(
        0.5, "Expectile of V_c on Q_c (0.5: the behaviour's expected cost).", gt=0.0, lt=1.0
    )
    tau_h: float = option(
        0.9, "Expectile of V_h toward the lower side of Q_h (best in-sample feasibility).", gt=0.0, lt=1.0
    )
    c_scale: float = option(25.0, "Reachability signal in a hazard: h = +c_scale if c > 0 else −1.", gt=0.0)
    beta_r: float = option(
        0.3, "Inverse temperature β_r of the reward advantage weight in feasible states.", ge=0.0
    )
    adv_cost_coef: float = option(
        0.0,
        "κ of the feasible-state advantage (Q_r − V_r) − κ(Q_c − V_c); 0: the reward-only advantage. κ > 0 "
        "also down-weights feasible actions that cost more than the behaviour's average.",
        ge=0.0,
    )
    beta_h: float = option(
        5.0, "Inverse temperature β_h of the feasibility weight in infeasible states.", ge=0.0
    )
    max_weight_r: float = option(100.0, "Clip of the reward advantage weight.", gt=0.0)
    max_weight_h: float = option(150.0, "Clip of the feasibility weight.", gt=0.0)
    network: NetworkConfig = option(default_factory=NetworkConfig, help="Network sizes.")
    augment: AugmentConfig = option(default_factory=AugmentConfig, help="Image augmentation.")
    world_model: WorldModelConfig = option(default_factory=WorldModelConfig, help="The latent world model.")
    imagine: ImagineConfig = option(default_factory=ImagineConfig, help="Imagined value targets.")
    shield: ShieldCalibrationConfig = option(
        default_factory=ShieldCalibrationConfig, help="Shield threshold calibration."
    )
    selection: SelectionConfig = option(default_factory=SelectionConfig, help="Policy-expansion parameters.")
    primitives: list[list[float]] = option(
        default_factory=lambda: [list(p) for p in DEFAULT_PRIMITIVES],
        help="Fixed candidate actions the shield may fall back to, after a_on, a_off and brake.",
    )
    compute: ComputeConfig = option(default_factory=ComputeConfig, help="bf16 autocast and torch.compile.")
    torch_threads: int = option(
        1,
        "torch intra-op threads while training on the CPU (0: auto, the cores this process may use, split "
        "over the data-parallel processes on this machine).",
        ge=0,
    )
    checkpoint_every: int = option(
        2000, "Save RUN/checkpoints/ every this many updates (0 = only at the end).", ge=0
    )
    log_every: int = option(100, "Write TensorBoard scalars every this many updates.", ge=1)
    calib_frames: int = option(
        256, "Dataset frames used for int8 calibration and the fp32/int8 comparison.", ge=1
    )


def offline_config_from_checkpoint(ckpt: Mapping[str, Any]) -> OfflineConfig:
    """The offline run's config as its checkpoint recorded it: a run from an older trainer (flat
    version-1 keys, fields it lacks, fields since retired) still gives every value it recorded."""
    return OfflineConfig.from_recorded(ckpt.get("config", {}), source="offline checkpoint config")
