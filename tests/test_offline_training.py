"""Offline training on a tiny synthetic state dataset: the method learns what it should."""

import numpy as np
import pytest
import torch

from trainer.config import OfflineConfig
from trainer.offline import OfflineLearner, agent_spec_for, random_shift
from trainer.run_dir import RunDirError
from trainer.synthetic import HAZARD_X, make_point_dataset
from trainer.train_offline import train_offline

SMALL = dict(batch_size=64, hidden_dim=64, latent_dim=32, gamma=0.9, target_ema=0.05, log_every=10)


@pytest.fixture(scope="module")
def dataset():
    return make_point_dataset(episodes=60, length=25, seed=0)


def test_training_learns_reachability_and_weighted_likelihood(dataset):
    cfg = OfflineConfig(steps=300, world_model=True, wm_horizon=2, **SMALL)
    learner = OfflineLearner(agent_spec_for(dataset, cfg), cfg)
    before = learner.evaluate(dataset)
    rng = np.random.default_rng(0)
    for _ in range(cfg.steps):
        metrics = learner.update(dataset.sample_sequences(cfg.batch_size, learner.horizon, rng))
    after = learner.evaluate(dataset)
    assert after["weighted_log_prob"] > before["weighted_log_prob"] + 1.0
    x = dataset.observations[after["index"], 0]
    hazard, safe = x > HAZARD_X + 0.1, x < -0.3
    assert np.mean(after["q_h"][hazard] > 0) > 0.9
    assert np.mean(after["q_h"][safe] < 0) > 0.9
    # hazard-seeking actions from safe states get no weight; the world model trained too
    assert all(np.isfinite(v) for v in metrics.values()) and "wm/consistency" in metrics


def test_weights_prefer_safe_actions(dataset):
    """Actions that step into the hazard from just outside it are weighted below ones that step away."""
    cfg = OfflineConfig(steps=300, world_model=False, **SMALL)
    learner = OfflineLearner(agent_spec_for(dataset, cfg), cfg)
    rng = np.random.default_rng(1)
    for _ in range(cfg.steps):
        learner.update(dataset.sample_sequences(cfg.batch_size, 1, rng))
    n = 256
    states = np.stack([np.full(n, HAZARD_X - 0.05), np.linspace(-0.5, 0.5, n)], axis=1).astype(np.float32)
    a = learner.agent
    with torch.no_grad():
        z = a.encoder(torch.from_numpy(states))
        into = a.qh_max(z, torch.tensor([[1.0, 0.0]]).expand(n, 2))
        away = a.qh_max(z, torch.tensor([[-1.0, 0.0]]).expand(n, 2))
    assert float((into > away).float().mean()) > 0.9


def test_random_shift_moves_content_by_whole_pixels():
    g = torch.Generator().manual_seed(0)
    img = torch.zeros(32, 16, 16, 3, dtype=torch.uint8)
    img[:, 8, 8] = 255
    out = random_shift(img, 2, g)
    assert out.shape == (32, 16, 16, 3) and out.dtype == torch.float32
    positions = {tuple(torch.nonzero(o[..., 0] == 255)[0].tolist()) for o in out}
    assert len(positions) > 1 and all(6 <= r <= 10 and 6 <= c <= 10 for r, c in positions)


def test_resume_continues_exactly(dataset, tmp_path):
    cfg = OfflineConfig(steps=12, world_model=True, wm_horizon=2, checkpoint_every=8, **SMALL)
    straight = train_offline(dataset, tmp_path / "a", cfg, progress=False)
    with pytest.raises(RunDirError, match="--resume"):
        train_offline(dataset, tmp_path / "a", cfg, progress=False)
    train_offline(dataset, tmp_path / "b", cfg.replace(steps=8), progress=False)
    resumed = train_offline(dataset, tmp_path / "b", cfg, resume=True, progress=False)
    assert straight.steps == resumed.steps == 12 and resumed.bundle is None
    sa = torch.load(tmp_path / "a/checkpoints/latest.pt", weights_only=True)["agent"]
    sb = torch.load(tmp_path / "b/checkpoints/latest.pt", weights_only=True)["agent"]
    assert all(torch.allclose(sa[k], sb[k], atol=1e-6) for k in sa)
    assert (tmp_path / "b/checkpoints/step_00000008.pt").is_file() and any((tmp_path / "b/tb").iterdir())
