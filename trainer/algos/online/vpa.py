"""Value Pre-Alignment (Marvel), docs/method.md §8: run once after offline training, before going online.

The offline critics are in-sample (expectile) estimates, not the values of π_off under the online
objective that SAC-Lag will bootstrap from. A few thousand critic updates on the offline data
with the online targets evaluated at π_off's own actions,
y_r = r + γ(1−d)(Q̄_r(z', a') − α log π_off(a'|z')), y_c = c + γ(1−d) Q̄_c(z', a'), a' ~ π_off(o'),
align Q_r and Q_c with π_off before π_on starts to move.
"""

from __future__ import annotations

import logging

import numpy as np

from reachsafe.trainer.algos.online.config import VPAConfig
from reachsafe.trainer.algos.online.learner import OnlineLearner, offline_policy_next
from reachsafe.trainer.data.dataset import OfflineDataset

logger = logging.getLogger(__name__)


class ValuePreAligner:
    """Steps the alignment one update at a time so a caller can interleave other work."""

    def __init__(self, learner: OnlineLearner, dataset: OfflineDataset, cfg: VPAConfig) -> None:
        self.learner = learner
        self.dataset = dataset
        self.cfg = cfg
        self.steps_done = 0
        learner.sync_targets()
        logger.info(
            "value pre-alignment: %d critic updates on %d offline transitions", cfg.steps, len(dataset)
        )

    @property
    def done(self) -> bool:
        return self.steps_done >= self.cfg.steps

    def step(self, rng: np.random.Generator) -> dict[str, float]:
        batch = self.dataset.sample(self.cfg.batch_size, rng)
        m = self.learner.critic_step(batch, next_action=offline_policy_next)
        self.steps_done += 1
        out = {f"vpa/{k.split('/', 1)[1]}": v for k, v in m.items()}
        if self.steps_done % self.cfg.log_every == 0 or self.done:
            logger.info(
                "VPA %d/%d: loss Q_r %.4f  loss Q_c %.4f  mean Q_r %.3f",
                self.steps_done,
                self.cfg.steps,
                m["online/loss_q_r"],
                m["online/loss_q_c"],
                m["online/q_r"],
            )
        if self.done:
            self.learner.sync_targets()
            logger.info("value pre-alignment done")
        return out

    def run(self, rng: np.random.Generator) -> dict[str, float]:
        """All remaining steps; returns the last step's losses."""
        m: dict[str, float] = {}
        while not self.done:
            m = self.step(rng)
        return m
