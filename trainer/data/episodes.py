"""Per-stream episode bookkeeping: running return and cost, finished episodes."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Episode:
    stream: Hashable
    ret: float
    cost: float
    length: int


class EpisodeTracker:
    """Sums reward and cost along each stream; an episode ends at a terminated or truncated step."""

    def __init__(self) -> None:
        self._running: dict[Hashable, list[float]] = {}  # stream -> [return, cost, length]

    def add(self, stream: Hashable, columns: Mapping[str, np.ndarray]) -> list[Episode]:
        """Account one batch of steps; return the episodes it finished."""
        run = self._running.setdefault(stream, [0.0, 0.0, 0])
        ends = np.asarray(columns["terminated"], dtype=bool) | np.asarray(columns["truncated"], dtype=bool)
        rewards = np.asarray(columns["reward"], dtype=np.float64)
        costs = np.asarray(columns["cost"], dtype=np.float64)
        done: list[Episode] = []
        start = 0
        for stop in [*(np.flatnonzero(ends) + 1).tolist(), len(ends)]:
            run[0] += float(rewards[start:stop].sum())
            run[1] += float(costs[start:stop].sum())
            run[2] += stop - start
            if stop > start and ends[stop - 1]:
                done.append(Episode(stream, run[0], run[1], int(run[2])))
                run[:] = [0.0, 0.0, 0]
            start = stop
        return done
