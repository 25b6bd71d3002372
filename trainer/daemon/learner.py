"""The daemon's learner thread: replay from robot batches, VPA then SAC-Lag, periodic bundles.

Ingest puts every newly stored batch into the learner's inbox queue (never blocks);
this thread moves batches into the replay, feeds finished episodes to the λ controller, runs
updates within the update-to-data budget, ships bundles every N updates or T seconds and writes
checkpoints. Value Pre-Alignment runs here first (interleaved with the same timers), so a robot
is served from the first second.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from reachsafe.protocol.messages import BundleMessage, Steps
from reachsafe.trainer.algos.online.config import OnlineConfig
from reachsafe.trainer.algos.online.learner import OnlineLearner
from reachsafe.trainer.algos.online.vpa import ValuePreAligner
from reachsafe.trainer.daemon.status import RateMeter
from reachsafe.trainer.data.dataset import OfflineDataset
from reachsafe.trainer.data.episodes import Episode
from reachsafe.trainer.data.mixing import MixedSampler
from reachsafe.trainer.data.replay import StepReplay
from reachsafe.trainer.models.networks import Agent, save_checkpoint
from reachsafe.trainer.runs.metrics import MetricsWriter

logger = logging.getLogger(__name__)

#: (agent, training step, metrics) -> the bundle message of a newly written bundle.
ShipFn = Callable[[Agent, int, dict[str, float]], BundleMessage]


class DaemonLearner:
    """Owns the agent while the daemon runs; everything here happens on one thread."""

    def __init__(
        self,
        learner: OnlineLearner,
        replay: StepReplay,
        offline: OfflineDataset | None,
        cfg: OnlineConfig,
        ship: ShipFn,
        broadcast: Callable[[BundleMessage], None],
        checkpoint_path: Path,
        metrics: MetricsWriter,
        inbox: queue.SimpleQueue[tuple[Steps, list[Episode]]],
        *,
        vpa_done: bool = False,
        online_steps: int = 0,
        bundle_version: int | None = None,
    ) -> None:
        self.learner = learner
        self.replay = replay
        self.cfg = cfg
        self.sampler = MixedSampler(offline, replay, cfg.replay.offline_ratio)
        self.ship_fn = ship
        self.broadcast = broadcast
        self.checkpoint_path = checkpoint_path
        self.metrics = metrics
        self.vpa = (
            ValuePreAligner(learner, offline, cfg.vpa)
            if cfg.vpa.enabled and offline is not None and not vpa_done
            else None
        )
        self.online_steps = online_steps
        self.rng = np.random.default_rng(cfg.seed)
        self._inbox = inbox
        self._budget_base = learner.updates - cfg.replay.utd_ratio * online_steps
        self.bundle_version: int | None = bundle_version
        self.bundle_parent: int | None = None
        self.last_metrics: dict[str, float] = {}
        self._rate = RateMeter()
        self.grad_steps = 0  # VPA and SAC-Lag updates of this process

    # ----- the thread -------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        last_ship = last_ckpt = time.monotonic()
        shipped_at = self.grad_steps
        while not stop.is_set():
            self._drain()
            did = self._train_one()
            now = time.monotonic()
            changed = self.grad_steps > shipped_at  # never ship an unchanged policy
            ship_t = self.cfg.daemon.ship_every_s > 0 and now - last_ship >= self.cfg.daemon.ship_every_s
            ship_n = (
                self.cfg.daemon.ship_every_updates > 0
                and self.grad_steps - shipped_at >= self.cfg.daemon.ship_every_updates
            )
            if changed and (ship_t or ship_n):
                self.ship()
                last_ship, shipped_at = now, self.grad_steps
            if self.cfg.checkpoint_every_s > 0 and now - last_ckpt >= self.cfg.checkpoint_every_s:
                self.checkpoint()
                last_ckpt = now
            if not did:
                stop.wait(0.05)
        self.checkpoint()

    def _drain(self) -> None:
        while True:
            try:
                msg, finished = self._inbox.get_nowait()
            except queue.Empty:
                return
            self.replay.add_batch((msg.robot_id, msg.stream_id), msg.first_step, msg.columns)
            self.online_steps += msg.n_steps
            for ep in finished:
                lam = self.learner.observe_episode(ep.cost)
                self.metrics.scalars(
                    {"fleet/episode_return": ep.ret, "fleet/episode_cost": ep.cost, "lagrange/lambda": lam},
                    self.online_steps,
                )

    def _train_one(self) -> bool:
        """One VPA or SAC-Lag update if there is work; False when idle."""
        if self.vpa is not None:
            m = self.vpa.step(self.rng)
            self.grad_steps += 1
            if self.vpa.done:
                self.vpa = None
            self._record(m)
            return True
        budget = self._budget_base + self.cfg.replay.utd_ratio * self.online_steps - self.learner.updates
        if budget < 1 or len(self.replay) < 1 or self.online_steps < self.cfg.replay.warmup_steps:
            return False
        m = self.learner.update(self.sampler.sample(self.cfg.batch_size, self.rng))
        self.grad_steps += 1
        m.update(self.learner.metrics())
        self._rate.tick()
        self._record(m)
        return True

    def _record(self, m: dict[str, float]) -> None:
        self.last_metrics = m
        if self.grad_steps % 50 == 0:
            self.metrics.scalars(m, self.grad_steps)

    def ship(self) -> None:
        try:
            msg = self.ship_fn(self.learner.agent, self.learner.updates, self.last_metrics)
        except Exception:
            logger.exception("building a bundle failed; keeping the current one and training on")
            return
        self.bundle_version, self.bundle_parent = msg.version, msg.parent
        self.broadcast(msg)

    def checkpoint(self) -> None:
        save_checkpoint(
            self.checkpoint_path,
            self.learner.agent,
            self.learner.updates,
            extra={"online": self.learner.state_dict(), **self.progress()},
        )
        logger.info("checkpoint %s at update %d", self.checkpoint_path, self.learner.updates)

    def progress(self) -> dict[str, Any]:
        return {
            "online_steps": self.online_steps,
            "vpa_done": self.vpa is None,
            "bundle_version": self.bundle_version,
            "replay_added": self.replay.added,
        }

    def status(self) -> dict[str, Any]:
        return {
            "updates": self.learner.updates,
            "updates_per_s": self._rate.per_s(),
            "lambda": self.learner.lam,
            "alpha": self.learner.alpha,
            "phase": "vpa" if self.vpa is not None else "online",
            "replay_transitions": len(self.replay),
            "online_steps": self.online_steps,
            "bundle_version": self.bundle_version,
            "bundle_parent": self.bundle_parent,
        }
