"""Data-parallel offline training: N gloo processes follow one process at the same (global) batch."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from reachsafe.trainer.algos.offline.config import ImagineConfig, NetworkConfig, OfflineConfig
from reachsafe.trainer.models.networks import load_checkpoint
from reachsafe.trainer.models.parallel import Replica
from reachsafe.trainer.runs.offline import train_offline
from reachsafe.trainer.runs.parallel import spawn
from tests.fixtures.point_dataset import make_point_dataset

CFG = OfflineConfig(
    steps=10, batch_size=8, network=NetworkConfig(hidden_dim=32, latent_dim=16, cnn_channels=4),
    imagine=ImagineConfig(start=4), log_every=5, checkpoint_every=0, seed=5, torch_threads=1,
)  # fmt: skip


def test_two_gloo_processes_give_the_one_process_run(tmp_path: Path) -> None:
    """Every checkpoint tensor of rank 0 of 2 processes × 4 rows matches 1 process × 8 rows: the same
    sequences, the same augmentation and imagination noise, gradients averaged before each step."""
    assert "WORLD_SIZE" not in os.environ
    dataset = make_point_dataset(episodes=12, length=20, seed=0, image_size=32)
    train_offline(dataset, tmp_path / "one", CFG, progress=False, export=False)
    spawn(2, train_offline, dataset, tmp_path / "two", CFG, None, False, False, False, "cpu")
    _, one = load_checkpoint(tmp_path / "one/checkpoints/latest.pt")
    _, two = load_checkpoint(tmp_path / "two/checkpoints/latest.pt")
    assert two["compute"]["processes"] == 2 and one["compute"]["processes"] == 1
    assert two["step"] == one["step"] == CFG.steps
    for name, want in one["agent"].items():
        torch.testing.assert_close(two["agent"][name], want, rtol=1e-4, atol=1e-5, msg=name)
    assert any(name.startswith("world_model.") for name in one["agent"])  # checked with the agent above
    for part in ("target_encoder", "target_q_h"):
        for name, want in one["learner"][part].items():
            torch.testing.assert_close(two["learner"][part][name], want, rtol=1e-4, atol=1e-5)
    # the random streams stayed in step: a resumed run continues on any number of processes
    assert torch.equal(two["learner"]["generator"], one["learner"]["generator"])
    assert two["numpy_rng"] == one["numpy_rng"]


def test_each_replica_computes_its_own_rows_of_the_batch() -> None:
    second = Replica(1, 2)
    assert second.local_rows(8) == 4 and second.rows(4) == slice(4, 8)
    with pytest.raises(ValueError, match="multiple of 2"):
        second.local_rows(7)
    with pytest.raises(ValueError, match="does not exist"):
        Replica(2, 2)
    rng = np.random.default_rng(0)
    whole = make_point_dataset(episodes=4, length=10).sample_sequences(8, 3, np.random.default_rng(0))
    part = make_point_dataset(episodes=4, length=10).sample_sequences(8, 3, rng, second.rows(4))
    assert np.array_equal(part.obs, whole.obs[4:]) and np.array_equal(part.actions, whole.actions[4:])
