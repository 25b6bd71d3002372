"""A tiny synthetic safe-navigation dataset (point robot, one hazard band) for tests and smoke runs.

State (x, y) in [-1, 1]²; action (dx, dy) in [-1, 1]² moves the point by ``STEP``·action; the
hazard is the band x > ``HAZARD_X`` (cost 1 per step that ends inside it); reward is progress
toward the goal (0, 0.8). The behaviour policy mixes goal-seeking, hazard-seeking and random
actions, so the data holds both safe and unsafe behaviour. Images (optional) draw the point.
"""

from __future__ import annotations

import numpy as np

from trainer.dataset import OfflineDataset

STEP = 0.15
HAZARD_X = 0.5
GOAL = np.array([0.0, 0.8])


def _render(states: np.ndarray, size: int) -> np.ndarray:
    """uint8 (N, size, size, 3): hazard band in red, the point in white."""
    n = len(states)
    img = np.zeros((n, size, size, 3), np.uint8)
    col_hazard = int((HAZARD_X + 1) / 2 * size)
    img[:, :, col_hazard:, 0] = 120
    px = np.clip(((states + 1) / 2 * (size - 1)).round().astype(int), 0, size - 1)
    img[np.arange(n), px[:, 1], px[:, 0]] = 255
    return img


def make_point_dataset(
    episodes: int = 60, length: int = 25, seed: int = 0, image_size: int | None = None
) -> OfflineDataset:
    """Build the dataset in memory; ``image_size`` switches to uint8 image observations."""
    rng = np.random.default_rng(seed)
    obs, nobs, acts, rews, costs = [], [], [], [], []
    for ep in range(episodes):
        s = rng.uniform(-0.9, 0.9, size=2)
        mode = ep % 3  # 0: to the goal, 1: into the hazard, 2: random
        for _ in range(length):
            if mode == 0:
                a = np.clip((GOAL - s) / STEP, -1, 1)
            elif mode == 1:
                a = np.array([1.0, 0.0])
            else:
                a = rng.uniform(-1, 1, size=2)
            a = np.clip(a + 0.2 * rng.standard_normal(2), -1, 1)
            s2 = np.clip(s + STEP * a, -1, 1)
            obs.append(s)
            nobs.append(s2)
            acts.append(a)
            rews.append(np.linalg.norm(GOAL - s) - np.linalg.norm(GOAL - s2))
            costs.append(float(s2[0] > HAZARD_X))
            s = s2
    n = len(acts)
    timeouts = np.zeros(n, bool)
    timeouts[length - 1 :: length] = True
    states, next_states = np.array(obs, np.float32), np.array(nobs, np.float32)
    if image_size:
        observations, next_observations = _render(states, image_size), _render(next_states, image_size)
    else:
        observations, next_observations = states, next_states
    return OfflineDataset(
        observations=observations,
        next_observations=next_observations,
        actions=np.array(acts, np.float32),
        rewards=np.array(rews, np.float32),
        costs=np.array(costs, np.float32),
        terminals=np.zeros(n, bool),
        timeouts=timeouts,
        metadata={"task": "synthetic/point", "seed": seed, "obs_mode": "image" if image_size else "state"},
        source="synthetic:point",
    )


def write_hdf5(dataset: OfflineDataset, path) -> None:
    """Write a dataset in the DSRL layout (for CLI tests)."""
    import json

    import h5py

    with h5py.File(path, "w") as f:
        for key in (
            "observations",
            "next_observations",
            "actions",
            "rewards",
            "costs",
            "terminals",
            "timeouts",
        ):
            f.create_dataset(key, data=getattr(dataset, key))
        f.attrs["metadata"] = json.dumps(dataset.metadata)
