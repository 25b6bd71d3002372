"""Data-parallel learners: which rows of a batch this process computes, and the gradient average.

N processes train one set of weights: every process draws the whole batch (indices and random
numbers, from identical generators), computes its own contiguous share of the rows, and the
gradients are averaged over the processes before each optimiser step. So N processes follow the
run of one process at the same batch, up to floating-point rounding, and a run can resume on
another number of processes. Setting the process group up is the runs' business
(:mod:`reachsafe.trainer.runs.parallel`); this is what a learner needs of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Replica:
    """Process ``index`` of ``count`` data-parallel learners (the default: the only one)."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.count:
            raise ValueError(f"replica {self.index} of {self.count} does not exist")

    def local_rows(self, global_rows: int) -> int:
        """Rows of a global batch that this process computes."""
        if global_rows % self.count:
            raise ValueError(
                f"a batch of {global_rows} does not split over {self.count} data-parallel processes; "
                f"use a multiple of {self.count}"
            )
        return global_rows // self.count

    def rows(self, local_rows: int) -> slice:
        """This process's rows of a global batch of ``count · local_rows`` rows."""
        return slice(self.index * local_rows, (self.index + 1) * local_rows)

    def average_gradients(self, params: Sequence[torch.nn.Parameter]) -> None:
        """Replace every gradient by its mean over the processes (one all-reduce of them all).

        A parameter without a gradient counts as a zero gradient, on every process alike.
        """
        if self.count == 1:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.count
        offset = 0
        for p in params:
            n = p.numel()
            p.grad = flat[offset : offset + n].view_as(p)
            offset += n

    def mean(self, values: torch.Tensor) -> torch.Tensor:
        """The mean of ``values`` over the processes (one all-reduce), e.g. the scalars each logs."""
        if self.count == 1:
            return values
        total = values.clone()
        dist.all_reduce(total)
        return total / self.count


SINGLE = Replica()
