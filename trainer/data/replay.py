"""Online replay: a ring of steps from many robot streams, sampled as transitions.

Robots send each step once (obs_t with the step); a transition (o, a, r, c, o', done) is
rebuilt by linking a step to the next step of the same stream. A terminated step is a complete
transition on its own (done = 1, o' unused); a truncated step without a successor is dropped (its
true next frame was never recorded, and bootstrapping from the next episode's first frame would be
wrong). Each frame is stored once, so memory is one uint8 frame per step.

Each step also keeps the action its policy proposed and whether the shield replaced it (the
step record's ``proposed`` and ``shielded``), so the learner can learn what the shield prevented.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np

from reachsafe.trainer.data.dataset import Batch


class StepReplay:
    """Fixed-capacity ring of steps; oldest steps are overwritten first."""

    def __init__(self, capacity: int, obs_shape: tuple[int, ...], action_dim: int) -> None:
        if capacity < 2:
            raise ValueError(f"replay capacity must be ≥ 2, got {capacity}")
        self.capacity = capacity
        self.obs = np.zeros((capacity, *obs_shape), dtype=np.uint8)
        self.action = np.zeros((capacity, action_dim), dtype=np.float32)
        self.proposed = np.zeros((capacity, action_dim), dtype=np.float32)
        self.shielded = np.zeros(capacity, dtype=bool)
        self.reward = np.zeros(capacity, dtype=np.float32)
        self.cost = np.zeros(capacity, dtype=np.float32)
        self.done = np.zeros(capacity, dtype=np.float32)
        self.next_slot = np.zeros(capacity, dtype=np.int64)
        self.valid = np.zeros(capacity, dtype=bool)
        self._step_id = np.full(capacity, -1, dtype=np.int64)  # global insertion counter per slot
        self._ends_chain = np.zeros(capacity, dtype=bool)
        self._streams: dict[Hashable, tuple[int, int, int]] = {}  # key -> (slot, step index, step id)
        self.added = 0  # steps ever added

    def __len__(self) -> int:
        return int(self.valid.sum())

    def add_batch(self, stream: Hashable, first_step: int, columns: Mapping[str, np.ndarray]) -> None:
        """Append a batch of consecutive steps of one stream (columns as in the step record;
        without ``proposed`` / ``shielded`` a step counts as unshielded), as whole-array writes."""
        n = int(columns["obs"].shape[0])
        keep = slice(max(0, n - self.capacity), n)  # a batch longer than the ring keeps its newest steps
        skipped = keep.start
        first_step, self.added = first_step + skipped, self.added + skipped
        n -= skipped
        if n <= 0:
            return
        terminated = np.asarray(columns["terminated"], dtype=bool)[keep]
        ends_chain = terminated | np.asarray(columns["truncated"], dtype=bool)[keep]
        ids = self.added + np.arange(n)
        slots = ids % self.capacity
        if (
            skipped == 0
        ):  # the stream's previous step, if it is still in the ring, leads to this batch's first
            self._link(stream, slots[0], first_step)
        self.obs[slots] = columns["obs"][keep]
        self.action[slots] = columns["action"][keep]
        self.proposed[slots] = columns.get("proposed", columns["action"])[keep]
        self.shielded[slots] = np.asarray(columns.get("shielded", np.zeros(n + skipped, bool)), dtype=bool)[
            keep
        ]
        self.reward[slots] = columns["reward"][keep]
        self.cost[slots] = columns["cost"][keep]
        self.done[slots] = terminated
        self._ends_chain[slots] = ends_chain
        self._step_id[slots] = ids
        # a step leads to the next step of the batch unless it ends its chain; a terminated step is
        # complete on its own
        links = ~ends_chain[:-1]
        self.next_slot[slots] = slots
        self.next_slot[slots[:-1][links]] = slots[1:][links]
        self.valid[slots] = terminated
        self.valid[slots[:-1][links]] = True
        self._streams[stream] = (int(slots[-1]), first_step + n - 1, int(ids[-1]))
        self.added += n

    def _link(self, stream: Hashable, slot: int, index: int) -> None:
        """Link the stream's last step to ``slot`` (step ``index``) if it is the previous step, still in
        the ring and not the end of its chain."""
        prev = self._streams.get(stream)
        if prev is None:
            return
        prev_slot, prev_index, prev_id = prev
        if (
            prev_index != index - 1
            or prev_slot == slot
            or self._step_id[prev_slot] != prev_id
            or self._ends_chain[prev_slot]
        ):
            return
        self.next_slot[prev_slot] = slot
        self.valid[prev_slot] = True

    def recent(self, n: int) -> np.ndarray:
        """Slots of the last ``n`` steps added (fewer while the ring holds fewer), newest first."""
        k = min(n, self.added, self.capacity)
        return (self.added - 1 - np.arange(k)) % self.capacity

    def sample(self, batch_size: int, rng: np.random.Generator) -> Batch:
        """Uniform sample of complete transitions; raises ValueError while there are none."""
        idx = np.flatnonzero(self.valid)
        if idx.size == 0:
            raise ValueError("replay has no complete transition yet")
        pick = idx[rng.integers(0, idx.size, size=batch_size)]
        return Batch(
            obs=self.obs[pick],
            actions=self.action[pick],
            rewards=self.reward[pick],
            costs=self.cost[pick],
            next_obs=self.obs[self.next_slot[pick]],
            terminals=self.done[pick] > 0.5,
            proposed=self.proposed[pick],
            shielded=self.shielded[pick],
        )
