"""Batches that mix the offline dataset with the online replay at a fixed ratio."""

from __future__ import annotations

import logging

import numpy as np

from reachsafe.trainer.data.dataset import Batch, OfflineDataset
from reachsafe.trainer.data.replay import StepReplay

logger = logging.getLogger(__name__)


def concat_batches(a: Batch, b: Batch) -> Batch:
    """``a`` then ``b``; where only one side says what the shield did, the other side's steps count as
    unshielded (their proposal is their action)."""
    both = (a, b)
    shield_known = any(x.shielded is not None for x in both)
    return Batch(
        obs=np.concatenate([a.obs, b.obs]),
        actions=np.concatenate([a.actions, b.actions]),
        rewards=np.concatenate([a.rewards, b.rewards]),
        costs=np.concatenate([a.costs, b.costs]),
        next_obs=np.concatenate([a.next_obs, b.next_obs]),
        terminals=np.concatenate([a.terminals, b.terminals]),
        proposed=np.concatenate([x.actions if x.proposed is None else x.proposed for x in both])
        if shield_known
        else None,
        shielded=np.concatenate(
            [np.zeros(len(x.actions), bool) if x.shielded is None else x.shielded for x in both]
        )
        if shield_known
        else None,
    )


class MixedSampler:
    """Batches with a fixed fraction from the offline dataset, the rest from the online replay.

    While the online replay is still empty, the whole batch comes from the offline data.
    """

    def __init__(self, offline: OfflineDataset | None, online: StepReplay, offline_ratio: float) -> None:
        if offline is None and offline_ratio > 0:
            logger.warning("no offline dataset: batches come from the online replay only")
        self.offline = offline
        self.online = online
        self.offline_ratio = offline_ratio if offline is not None else 0.0

    def ready(self) -> bool:
        return len(self.online) > 0 or (self.offline is not None and self.offline_ratio > 0)

    def sample(self, batch_size: int, rng: np.random.Generator) -> Batch:
        n_off = int(round(batch_size * self.offline_ratio))
        if len(self.online) == 0:
            n_off = batch_size
        if n_off >= batch_size:
            assert self.offline is not None
            return self.offline.sample(batch_size, rng)
        online = self.online.sample(batch_size - n_off, rng)
        if n_off == 0:
            return online
        assert self.offline is not None
        return concat_batches(self.offline.sample(n_off, rng), online)
