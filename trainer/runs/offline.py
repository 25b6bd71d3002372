"""The offline training run: dataset → :class:`OfflineLearner` → checkpoints → signed bundle.

A run is one process, or N data-parallel ones (``torchrun`` or ``--nproc``,
:mod:`reachsafe.trainer.runs.parallel`): every process draws the same batch indices and random
numbers and computes its share of the rows; rank 0 alone writes the run directory.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from reachsafe.progress import Progress
from reachsafe.trainer.algos.offline.config import OfflineConfig
from reachsafe.trainer.algos.offline.learner import OfflineLearner, agent_spec_for
from reachsafe.trainer.algos.shield.calibration import (
    CalibrationSettings,
    ShieldCalibration,
    calibrate_shield,
)
from reachsafe.trainer.data.dataset import OfflineDataset
from reachsafe.trainer.export.onnx import BundleResult, build_bundle
from reachsafe.trainer.models.device import device_record, keep_freed_memory, set_threads
from reachsafe.trainer.models.networks import load_checkpoint, on_cpu, save_checkpoint
from reachsafe.trainer.runs.parallel import ProcessGroup, join_process_group
from reachsafe.trainer.runs.run_dir import RunDir, RunDirError, resolve_signing_key

logger = logging.getLogger(__name__)

CONFIG_KIND = "offline"


@dataclass(frozen=True)
class TrainResult:
    run: RunDir
    steps: int
    metrics: dict[str, float]
    bundle: BundleResult | None
    seconds: float
    written: bool = True  # this process wrote the run directory (False: a data-parallel rank other than 0)


def write_config(cfg: OfflineConfig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"kind": CONFIG_KIND, **cfg.to_dict()}, sort_keys=False))


def save_learner(
    run: RunDir,
    learner: OfflineLearner,
    rng: np.random.Generator,
    dataset: OfflineDataset,
    shield: ShieldCalibration | None = None,
) -> Path:
    """Checkpoint the (finalized) agent with learner + optimiser + sampler state; also as latest.pt.

    ``shield`` (the final checkpoint) is stored as the manifest section later exports and the
    daemon ship.
    """
    learner.finalize()
    extra = {
        "kind": CONFIG_KIND,
        "config": learner.cfg.to_dict(),
        "compute": {**device_record(learner.device), "processes": learner.replica.count},
        "learner": learner.state_dict(),
        "numpy_rng": rng.bit_generator.state,
        "dataset": {
            "source": dataset.source,
            "files": list(dataset.files),
            "steps": len(dataset),
            "metadata": dataset.metadata,
        },
    }
    if shield is not None:
        extra["shield"] = shield.to_manifest()
    path = run.checkpoint_for(learner.step)
    save_checkpoint(path, learner.agent, learner.step, extra)
    save_checkpoint(run.latest, learner.agent, learner.step, extra)
    return path


def restore_learner(
    run: RunDir, cfg: OfflineConfig, dataset: OfflineDataset, group: ProcessGroup
) -> tuple[OfflineLearner, np.random.Generator]:
    path = run.require_checkpoint()
    _, ckpt = load_checkpoint(path)
    learner = OfflineLearner(agent_spec_for(dataset, cfg), cfg, group.device, group.replica)
    learner.load_state_dict(ckpt["agent"], ckpt["learner"])
    rng = np.random.default_rng()
    rng.bit_generator.state = ckpt["numpy_rng"]
    logger.info("resumed %s at step %d", path, learner.step)
    return learner, rng


def train_offline(
    dataset: OfflineDataset,
    out: str | Path,
    cfg: OfflineConfig,
    keys_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    export: bool | None = None,
    device: str = "cpu",
) -> TrainResult:
    """Train for ``cfg.steps`` updates (total, counting resumed ones) and export RUN/bundle.

    ``export`` defaults to True for image datasets; state-vector datasets cannot make a bundle.
    ``device``: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``; under ``torchrun`` (or
    :func:`~reachsafe.trainer.runs.parallel.spawn`) this process is one data-parallel rank, and
    ``cfg.batch_size`` is the batch of all ranks together.
    """
    with join_process_group(device) as group:
        return _train(dataset, Path(out), cfg, keys_dir, resume, progress, export, group)


def _train(
    dataset: OfflineDataset,
    out: Path,
    cfg: OfflineConfig,
    keys_dir: str | Path | None,
    resume: bool,
    progress: bool,
    export: bool | None,
    group: ProcessGroup,
) -> TrainResult:
    from torch.utils.tensorboard import SummaryWriter

    t0 = time.monotonic()
    keep_freed_memory()
    set_threads(cfg.torch_threads, share=group.local_count)
    run, writes = RunDir(out), group.writes
    rows = group.replica.rows(group.replica.local_rows(cfg.batch_size))
    if export is None:
        export = dataset.obs_mode == "image"
    export = export and writes
    signing_key = resolve_signing_key(Path(keys_dir) if keys_dir else None, run) if export else None
    if resume:
        learner, rng = restore_learner(run, cfg, dataset, group)
    else:
        if run.latest.exists():
            raise RunDirError(
                f"{run.root} already holds a run; pass --resume to continue it or choose another --out"
            )
        learner = OfflineLearner(agent_spec_for(dataset, cfg), cfg, group.device, group.replica)
        rng = np.random.default_rng(cfg.seed)
    if writes:
        write_config(cfg, run.config)
    dataset.valid_sequence_starts(learner.horizon)  # fail early if no episode is long enough

    writer = SummaryWriter(str(run.tensorboard)) if writes else None
    recent: dict[str, list[float]] = defaultdict(list)
    last_means: dict[str, float] = {}
    bar = Progress(
        cfg.steps, "offline", "upd", initial=min(learner.step, cfg.steps), enabled=progress and writes
    )
    try:
        while learner.step < cfg.steps:
            batch = dataset.sample_sequences(cfg.batch_size, learner.horizon, rng, rows)
            metrics = learner.update(batch)
            for k, v in metrics.items():
                recent[k].append(v)
            if learner.step % cfg.log_every == 0 or learner.step == cfg.steps:
                means = {k: float(np.mean(v)) for k, v in recent.items()}
                if writer is not None:
                    for k, v in means.items():
                        writer.add_scalar(k, v, learner.step)
                bar.set_postfix(
                    actor=f"{means['train/actor_loss']:.3g}", q_h=f"{means['train/q_h_mean']:.3g}"
                )
                last_means = means
                recent.clear()
            if writes and cfg.checkpoint_every > 0 and learner.step % cfg.checkpoint_every == 0:
                save_learner(run, learner, rng, dataset)
            bar.update(1)
    finally:
        bar.close()
        if writer is not None:
            writer.close()
    if not writes:
        return TrainResult(run, learner.step, last_means, None, time.monotonic() - t0, written=False)
    shield = calibrate_shield(learner.agent, dataset, CalibrationSettings.of(cfg))
    save_learner(run, learner, rng, dataset, shield)
    bundle = None
    if export:
        bundle = build_bundle(
            on_cpu(learner.agent),
            run.bundle,
            version=1,
            parent=None,
            signing_key=signing_key,
            shield=shield.to_manifest(),
            selection={"kappa_t": cfg.selection.kappa_t, "kappa_c": cfg.selection.kappa_c},
            training_step=learner.step,
            metrics={k: v for k, v in last_means.items() if k.startswith("train/")},
        )
    elif dataset.obs_mode != "image":
        logger.info("state-vector dataset: no bundle written (robots run camera policies)")
    seconds = time.monotonic() - t0
    logger.info(
        "offline training: %d updates in %.1f s on %s × %d, run in %s",
        learner.step, seconds, learner.device, group.replica.count, run.root,
    )  # fmt: skip
    return TrainResult(run, learner.step, last_means, bundle, seconds)
