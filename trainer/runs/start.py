"""Start-up of every online entry point (the daemon, ``train online``): load the offline run and its
dataset, build the learner, and the shield each shipped bundle carries."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from reachsafe.trainer.algos.offline.config import offline_config_from_checkpoint
from reachsafe.trainer.algos.online.config import OnlineConfig
from reachsafe.trainer.algos.online.learner import OnlineLearner, ReachabilityTarget
from reachsafe.trainer.algos.shield.budget import ShieldBudget
from reachsafe.trainer.algos.shield.calibration import (
    CalibrationSettings,
    apply_intervention_budget,
    calibrate_shield,
    q_h_at,
)
from reachsafe.trainer.data.dataset import OfflineDataset, load_datasets
from reachsafe.trainer.data.replay import StepReplay
from reachsafe.trainer.export.onnx import checkpoint_shield
from reachsafe.trainer.models.device import keep_freed_memory, resolve_device, set_threads
from reachsafe.trainer.models.networks import Agent, load_checkpoint, with_world_model
from reachsafe.trainer.models.world_model import upgrade_world_model_state
from reachsafe.trainer.runs.run_dir import RunDir

logger = logging.getLogger(__name__)


def load_offline_dataset(paths: Sequence[Path] | None, ckpt: dict[str, Any]) -> OfflineDataset | None:
    """The dataset file(s) given, else the one(s) the offline run trained on; None (with a warning) if gone.

    Offline checkpoints record the dataset files as absolute paths (older runs: one ``source``, which
    may be relative and is tried from the current directory). Files given explicitly must exist.
    """
    if paths:
        return load_datasets(paths)
    recorded = ckpt.get("dataset", {})
    files = [str(f) for f in recorded.get("files", [])]
    if not files and recorded.get("source", "<memory>") != "<memory>":
        files = [str(recorded["source"])]
    resolved = [Path(f).resolve() for f in files]
    missing = [str(f) for f in resolved if not f.is_file()]
    if not resolved or missing:
        logger.warning(
            "offline dataset not found (the offline checkpoint records %s, missing %s): running WITHOUT "
            "replay mixing and value pre-alignment; pass --dataset FILE",
            files or "none",
            missing or "all",
        )
        return None
    return load_datasets(resolved)


def shield_for_ship(
    cfg: OnlineConfig,
    offline_ckpt: dict[str, Any],
    dataset: OfflineDataset | None,
    replay: StepReplay | None = None,
    budget: ShieldBudget | None = None,
) -> Callable[[Agent], dict[str, Any]]:
    """agent -> the manifest ``shield`` section of a bundle shipped now, chosen as the offline export does.

    Q_h keeps learning online, so the threshold is recalibrated on the agent's current Q_h with the
    offline run's settings (:class:`CalibrationSettings`) on the offline dataset's steps: their
    episodes are known, so "safe" means what it means offline (no cost within shield_cost_horizon
    steps), and the sample (fixed by the offline seed) is the same at every ship. A configured
    ``OnlineConfig.shield.threshold`` is used as the ``fixed`` threshold (its rates still reported).
    Without the dataset the configured threshold, else the offline run's section, is shipped as is.
    With ``replay`` and ``cfg.shield.intervention_budget`` (and no configured threshold), the
    threshold is then raised so that the shield would replace at most that fraction of the recent
    online proposals (:func:`apply_intervention_budget`); with ``budget`` (the learner's adapted
    one), its value at the time of the call instead of the configured one.
    """
    settings = CalibrationSettings.from_checkpoint(offline_ckpt)
    if cfg.shield.threshold is not None:
        settings = dataclasses.replace(settings, method="fixed", fixed_threshold=float(cfg.shield.threshold))
    fixed_section: dict[str, Any] = {}
    if dataset is None:
        fixed_section = (
            {"threshold": float(cfg.shield.threshold)}
            if cfg.shield.threshold is not None
            else checkpoint_shield(offline_ckpt)
        )
        logger.warning(
            "no offline dataset: bundles ship shield threshold %g, not recalibrated on the offline data",
            fixed_section["threshold"],
        )

    def calibrated(agent: Agent) -> dict[str, Any]:
        if dataset is None:
            return dict(fixed_section)
        return calibrate_shield(agent, dataset, settings).to_manifest()

    fixed_budget = cfg.shield.intervention_budget
    if replay is None or fixed_budget is None or cfg.shield.threshold is not None:
        return calibrated

    def within_budget(agent: Agent) -> dict[str, Any]:
        section = calibrated(agent)
        recent = replay.recent(cfg.shield.budget_window)
        q_h = q_h_at(agent, replay.obs, replay.proposed, recent)
        return apply_intervention_budget(section, q_h, fixed_budget if budget is None else budget.value)

    return within_budget


@dataclass
class OnlineStart:
    """What every online entry point (daemon, ``train online``) starts from."""

    learner: OnlineLearner
    checkpoint: dict[str, Any]  # the online checkpoint when resumed, else the offline one
    offline_checkpoint: dict[str, Any]
    dataset: OfflineDataset | None
    resumed: bool


def start_online(
    run: RunDir,
    online_checkpoint: Path,
    cfg: OnlineConfig,
    resume: bool,
    dataset_paths: Sequence[Path] | None,
    device: str = "cpu",
    reserve_cores: int = 0,
) -> OnlineStart:
    """Seed torch, load the offline run (or resume ``online_checkpoint``), build the learner on
    ``device`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``) and load the offline dataset for replay mixing
    and VPA. ``reserve_cores``: cores the process's other threads keep busy (the daemon's ingest),
    left out of an automatic thread count."""
    keep_freed_memory()
    set_threads(cfg.torch_threads, reserve=reserve_cores)
    torch.manual_seed(cfg.seed)
    offline_path = run.require_checkpoint()
    resumed = resume and online_checkpoint.is_file()
    if resume and not resumed:
        logger.warning("--resume: no %s yet, starting from the offline checkpoint", online_checkpoint)
    agent, ckpt = load_checkpoint(online_checkpoint if resumed else offline_path)
    offline_ckpt = load_checkpoint(offline_path)[1] if resumed else ckpt
    offline_cfg = offline_config_from_checkpoint(offline_ckpt)
    old_world_model = ckpt.get("learner", {}).get("world_model")
    if agent.world_model is None and old_world_model is not None:  # written before agents carried it
        cost_pos_weight = offline_cfg.world_model.cost_pos_weight
        agent = with_world_model(agent, upgrade_world_model_state(old_world_model, cost_pos_weight))
    learner = OnlineLearner(
        agent,
        cfg,
        ReachabilityTarget.from_checkpoint(offline_ckpt),
        resolve_device(device),
        offline_cfg.world_model.loss_weights(),
    )
    if resumed:
        learner.load_state_dict(ckpt["online"])
        logger.info("resumed online learning at update %d (λ %.4f)", learner.updates, learner.lam)
    return OnlineStart(
        learner, ckpt, offline_ckpt, load_offline_dataset(dataset_paths, offline_ckpt), resumed
    )
