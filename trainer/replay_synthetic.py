"""Synthetic `steps` batches (valid step-record columns) for tests and benchmarks of the ingest path."""

from __future__ import annotations

import numpy as np


def synthetic_columns(
    n: int, first_step: int, obs_shape: tuple[int, ...] = (64, 64, 3), action_dim: int = 2,
    episode_len: int = 50, seed: int = 0,
) -> dict[str, np.ndarray]:  # fmt: skip
    """A valid `steps` batch of n steps (random frames and actions, an episode end every episode_len)."""
    rng = np.random.default_rng(seed + first_step)
    idx = np.arange(first_step, first_step + n)
    ends = (idx + 1) % episode_len == 0
    return {
        "obs": rng.integers(0, 256, size=(n, *obs_shape), dtype=np.uint8),
        "action": rng.uniform(-1, 1, size=(n, action_dim)).astype(np.float32),
        "proposed": rng.uniform(-1, 1, size=(n, action_dim)).astype(np.float32),
        "reward": rng.standard_normal(n).astype(np.float32),
        "cost": (rng.random(n) < 0.1).astype(np.float32),
        "terminated": np.zeros(n, bool),
        "truncated": ends,
        "policy": rng.integers(0, 2, size=n).astype(np.uint8),
        "shielded": np.zeros(n, bool),
        "bundle_version": np.ones(n, np.int64),
        "episode": (idx // episode_len).astype(np.int64),
        "t_obs": idx.astype(np.float64) * 0.05,
        "t_act": idx.astype(np.float64) * 0.05 + 0.004,
    }
