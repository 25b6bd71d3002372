"""Calibrate the shield threshold on Q_h from the dataset's in-sample (state, action) pairs.

The principled threshold is 0 (Q_h ≤ 0: the robot can stay out of hazards), but after a short
training run Q_h sits near 0 everywhere and a threshold of 0 replaces most actions. Here each
dataset step is labelled *safe* when it and the next K steps of its episode cost nothing, and
*cost-leading* otherwise; the threshold is the smallest value that keeps the shield's
interventions on safe in-sample actions at or below a set fraction (an order statistic of Q_h on
safe steps), never below a floor (0 by default). The report says what fraction of cost-leading
steps the shield would still catch. One implementation serves the offline export and the daemon
(which recalibrates on its current Q_h for every bundle it ships, see :func:`reachsafe.trainer.runs.start.shield_for_ship`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import torch

from reachsafe.trainer.algos.offline.config import OfflineConfig, offline_config_from_checkpoint
from reachsafe.trainer.data.dataset import OfflineDataset
from reachsafe.trainer.models.device import module_device, to_device
from reachsafe.trainer.models.networks import Agent

logger = logging.getLogger(__name__)

CalibrationMethod = Literal["quantile", "fixed"]


class CalibrationError(ValueError):
    """The shield cannot be calibrated on this data."""


@dataclass(frozen=True)
class ShieldCalibration:
    """The threshold and what it does on the calibration sample (rates are None without samples)."""

    threshold: float
    method: str
    quantile: float | None
    floor: float | None
    safe_intervention_rate: float | None
    catch_rate: float | None
    samples: int
    safe_samples: int
    cost_leading_samples: int
    cost_horizon: int

    def to_manifest(self) -> dict[str, Any]:
        """The bundle manifest's ``shield`` section: ``{threshold, calibration: {...}}``."""
        report = asdict(self)
        threshold = report.pop("threshold")
        return {"threshold": float(threshold), "calibration": report}

    def summary(self) -> str:
        def pct(v: float | None) -> str:
            return "n/a" if v is None else f"{v:.1%}"

        return (
            f"shield threshold {self.threshold:.4g} ({self.method}"
            + (f", quantile {self.quantile:.3f}" if self.quantile is not None else "")
            + f"): intervenes on {pct(self.safe_intervention_rate)} of {self.safe_samples} safe in-sample actions, "
            f"catches {pct(self.catch_rate)} of {self.cost_leading_samples} cost-leading ones "
            f"(cost within {self.cost_horizon} steps)"
        )


def safe_step_mask(costs: np.ndarray, episode_bounds: list[tuple[int, int]], horizon: int) -> np.ndarray:
    """Boolean (N,): step t and the next ``horizon − 1`` steps of its episode all have zero cost.

    A step near the end of its episode looks only at the steps the episode still has.
    """
    if horizon < 1:
        raise CalibrationError(f"cost horizon must be >= 1, got {horizon}")
    costly = np.asarray(costs, np.float64).reshape(-1) > 0
    safe = np.zeros(len(costly), dtype=bool)
    for start, stop in episode_bounds:
        c = costly[start:stop].astype(np.int64)
        # costs in [t, t + horizon) of this episode, from a cumulative sum
        cum = np.concatenate([[0], np.cumsum(c)])
        t = np.arange(stop - start)
        ahead = cum[np.minimum(t + horizon, stop - start)] - cum[t]
        safe[start:stop] = ahead == 0
    return safe


def threshold_replacing_at_most(q: np.ndarray, fraction: float) -> tuple[float, float]:
    """The k-th smallest of ``q`` with k = n − ⌊fraction·n⌋ (at most that fraction of ``q`` lies above
    it), and its empirical quantile k/n. ``q`` must not be empty."""
    k = len(q) - math.floor(fraction * len(q))
    return float(np.sort(q)[k - 1]), k / len(q)


def calibrate_threshold(
    q_h: np.ndarray,
    safe: np.ndarray,
    method: CalibrationMethod,
    max_safe_intervention: float = 0.05,
    floor: float | None = 0.0,
    fixed_threshold: float = 0.0,
    cost_horizon: int = 0,
) -> ShieldCalibration:
    """Pick the threshold from Q_h at in-sample actions and their safe / cost-leading labels.

    ``quantile``: the k-th smallest safe Q_h with k = n_safe − ⌊f·n_safe⌋, so that at most a
    fraction f = ``max_safe_intervention`` of safe steps have Q_h above it; raised to ``floor``
    (None: no floor). ``fixed``: ``fixed_threshold``. Both report the rates the threshold gives.
    """
    q_h = np.asarray(q_h, np.float64).reshape(-1)
    safe = np.asarray(safe, bool).reshape(-1)
    if q_h.shape != safe.shape:
        raise CalibrationError(f"q_h {q_h.shape} and safe mask {safe.shape} differ in length")
    q_safe, q_cost = q_h[safe], q_h[~safe]
    quantile = None
    if method == "fixed":
        threshold = float(fixed_threshold)
    elif method == "quantile":
        if not np.all(np.isfinite(q_h)):
            raise CalibrationError("Q_h is not finite on the calibration sample; the critic diverged")
        if not 0.0 <= max_safe_intervention < 1.0:
            raise CalibrationError(f"max_safe_intervention must lie in [0, 1), got {max_safe_intervention}")
        if len(q_safe) == 0:
            raise CalibrationError(
                "no safe steps to calibrate on (every step leads into cost within the horizon); "
                "use shield_calibration: fixed or a shorter shield_cost_horizon"
            )
        threshold, quantile = threshold_replacing_at_most(q_safe, max_safe_intervention)
        if floor is not None:
            threshold = max(threshold, float(floor))
    else:
        raise CalibrationError(f"unknown shield calibration {method!r}; use 'quantile' or 'fixed'")
    return ShieldCalibration(
        threshold=threshold,
        method=method,
        quantile=quantile,
        floor=None if method == "fixed" or floor is None else float(floor),
        safe_intervention_rate=float(np.mean(q_safe > threshold)) if len(q_safe) else None,
        catch_rate=float(np.mean(q_cost > threshold)) if len(q_cost) else None,
        samples=int(len(q_h)),
        safe_samples=int(len(q_safe)),
        cost_leading_samples=int(len(q_cost)),
        cost_horizon=int(cost_horizon),
    )


@torch.no_grad()
def q_h_at(
    agent: Agent, observations: np.ndarray, actions: np.ndarray, index: np.ndarray, batch: int = 256
) -> np.ndarray:
    """Q_h(z(o), a) (ensemble max, as in the graph) at rows ``index`` of ``observations``, ``actions``,
    computed on the agent's device."""
    was_training = agent.training
    device = module_device(agent)
    agent.eval()
    try:
        out = []
        for i in range(0, len(index), batch):
            idx = index[i : i + batch]
            z = agent.encoder(to_device(observations[idx], device))
            out.append(agent.qh_max(z, to_device(actions[idx], device)).cpu().numpy())
    finally:
        agent.train(was_training)
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def apply_intervention_budget(
    section: dict[str, Any], q_h_proposed: np.ndarray, budget: float
) -> dict[str, Any]:
    """Raise a manifest ``shield`` section's threshold so that at most ``budget`` of the proposals
    behind ``q_h_proposed`` (Q_h at the actions the policy recently proposed) would be replaced.

    Why: Q_h keeps learning online on frames the offline data never showed (the unseen split
    repaints the scene), and its values there drift above those on the offline data the threshold
    is calibrated on, so the offline-calibrated shield can replace most of the robot's proposals
    (docs/results/online-defaults.md measures how many). Safety labels cannot fix
    this online: a replaced proposal was never executed, so its outcome is unknown. The threshold is
    only ever raised (the offline calibration stays the floor); the section records both values.
    """
    q = np.asarray(q_h_proposed, np.float64).reshape(-1)
    if not 0.0 < budget < 1.0:
        raise CalibrationError(f"the intervention budget must lie in (0, 1), got {budget}")
    if len(q) == 0 or not np.all(np.isfinite(q)):
        return section
    at_budget, _ = threshold_replacing_at_most(q, budget)
    calibrated = float(section["threshold"])
    threshold = max(calibrated, at_budget)
    report = {
        **section.get("calibration", {}),
        "intervention_budget": float(budget),
        "budget_samples": int(len(q)),
        "budget_threshold": at_budget,
        "calibrated_threshold": calibrated,
        "proposal_intervention_rate": float(np.mean(q > threshold)),
    }
    if threshold > calibrated:
        logger.info(
            "shield threshold raised %.4g → %.4g: the calibrated one would replace %.1f%% of the last %d "
            "proposals (budget %.0f%%)",
            calibrated, threshold, 100 * float(np.mean(q > calibrated)), len(q), 100 * budget,
        )  # fmt: skip
    return {"threshold": threshold, "calibration": report}


@dataclass(frozen=True)
class CalibrationSettings:
    """How the threshold is chosen: ``OfflineConfig.shield`` (and ``seed``)."""

    method: CalibrationMethod
    max_safe_intervention: float
    floor: float | None
    fixed_threshold: float
    cost_horizon: int
    samples: int
    seed: int = 0

    @classmethod
    def of(cls, cfg: OfflineConfig) -> CalibrationSettings:
        return cls(
            method=cfg.shield.calibration,
            max_safe_intervention=cfg.shield.max_safe_intervention,
            floor=cfg.shield.threshold_floor,
            fixed_threshold=cfg.shield.threshold,
            cost_horizon=cfg.shield.cost_horizon,
            samples=cfg.shield.calibration_samples,
            seed=cfg.seed,
        )

    @classmethod
    def from_checkpoint(cls, ckpt: Mapping[str, Any]) -> CalibrationSettings:
        """An offline checkpoint's settings; fields it lacks (older runs) take OfflineConfig's defaults."""
        return cls.of(offline_config_from_checkpoint(ckpt))


def calibrate_shield(
    agent: Agent, dataset: OfflineDataset, settings: CalibrationSettings
) -> ShieldCalibration:
    """Label every dataset step, evaluate Q_h on up to ``settings.samples`` of them and calibrate.

    If the data cannot calibrate (e.g. no safe steps), the fixed threshold is used with a warning
    rather than losing a finished run; Q_h is evaluated once for both.
    """
    safe = safe_step_mask(dataset.costs, dataset.episode_bounds(), settings.cost_horizon)
    rng = np.random.default_rng(settings.seed)
    index = np.sort(rng.choice(len(dataset), size=min(settings.samples, len(dataset)), replace=False))
    q_h, safe_sample = q_h_at(agent, dataset.observations, dataset.actions, index), safe[index]
    kwargs = dict(
        max_safe_intervention=settings.max_safe_intervention,
        floor=settings.floor,
        fixed_threshold=settings.fixed_threshold,
        cost_horizon=settings.cost_horizon,
    )
    try:
        result = calibrate_threshold(q_h, safe_sample, settings.method, **kwargs)
    except CalibrationError as exc:
        if settings.method == "fixed":
            raise
        logger.warning(
            "shield calibration failed (%s); shipping the fixed shield_threshold %g",
            exc,
            settings.fixed_threshold,
        )
        result = calibrate_threshold(q_h, safe_sample, "fixed", **kwargs)
    logger.info("%s", result.summary())
    return result
