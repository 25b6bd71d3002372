"""The step record (docs/architecture.md, "Step record") and its conversion to `steps` columns."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np

from reachsafe.protocol.constants import STEP_COLUMNS


@dataclass(frozen=True)
class Step:
    """One control tick as recorded for the trainer; field names are the STEP_COLUMNS names."""

    obs: np.ndarray
    action: np.ndarray
    proposed: np.ndarray
    reward: float
    cost: float
    terminated: bool
    truncated: bool
    policy: int
    shielded: bool
    bundle_version: int
    episode: int
    t_obs: float
    t_act: float


assert {f.name for f in fields(Step)} == set(STEP_COLUMNS), (
    "Step must mirror reachsafe.protocol.constants.STEP_COLUMNS"
)


def to_columns(steps: Sequence[Step]) -> dict[str, np.ndarray]:
    """Stack steps into the column dict of a `steps` message (dtypes from STEP_COLUMNS)."""
    return {
        name: np.asarray([getattr(s, name) for s in steps], dtype=np.dtype(col.dtype))
        for name, col in STEP_COLUMNS.items()
    }
