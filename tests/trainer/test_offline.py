"""Offline training on a tiny synthetic state dataset: the method learns what it should."""

import numpy as np
import pytest
import torch

from reachsafe.trainer.algos.offline.config import (
    ImagineConfig,
    NetworkConfig,
    OfflineConfig,
    WorldModelConfig,
)
from reachsafe.trainer.algos.offline.learner import OfflineLearner, agent_spec_for
from reachsafe.trainer.data.augment import augment, draw_augmentation, random_shift
from reachsafe.trainer.models.networks import load_checkpoint
from reachsafe.trainer.runs.offline import train_offline
from reachsafe.trainer.runs.run_dir import RunDirError
from tests.fixtures.point_dataset import HAZARD_X, make_point_dataset

SMALL = dict(
    batch_size=64,
    network=NetworkConfig(hidden_dim=64, latent_dim=32),
    gamma=0.9,
    target_ema=0.05,
    log_every=10,
)
NO_WM, WM = WorldModelConfig(enabled=False), WorldModelConfig(enabled=True)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One thread: on a shared 2-core machine, torch's thread pool mostly waits for the other core."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def dataset():
    return make_point_dataset(episodes=60, length=25, seed=0)


@pytest.fixture(scope="module")
def trained(dataset):
    """A learner before and after 600 updates (no world model: the quickest path)."""
    cfg = OfflineConfig(steps=600, world_model=NO_WM, **SMALL)
    learner = OfflineLearner(agent_spec_for(dataset, cfg), cfg)
    before = learner.evaluate(dataset)
    rng = np.random.default_rng(0)
    for _ in range(cfg.steps):
        metrics = learner.update(dataset.sample_sequences(cfg.batch_size, learner.horizon, rng))
    return learner, before, learner.evaluate(dataset), metrics


def test_training_improves_the_weighted_likelihood(trained):
    _, before, after, metrics = trained
    assert after["weighted_log_prob"] > before["weighted_log_prob"] + 1.0
    assert all(np.isfinite(v) for v in metrics.values())


def test_q_h_is_positive_in_hazards_and_negative_in_safe_states(dataset, trained):
    _, _, after, _ = trained
    x = dataset.observations[after["index"], 0]
    hazard, safe = x > HAZARD_X + 0.1, x < -0.3
    assert np.mean(after["q_h"][hazard] > 0) > 0.9, after["q_h"][hazard]
    assert np.mean(after["q_h"][safe] < 0) > 0.9, after["q_h"][safe]


def test_q_h_prefers_stepping_away_from_the_hazard(trained):
    """From just outside the hazard, stepping in has higher Q_h than stepping away."""
    learner = trained[0]
    n = 256
    states = np.stack([np.full(n, HAZARD_X - 0.05), np.linspace(-0.5, 0.5, n)], axis=1).astype(np.float32)
    a = learner.agent
    with torch.no_grad():
        z = a.encoder(torch.from_numpy(states))
        into = a.qh_max(z, torch.tensor([[1.0, 0.0]]).expand(n, 2))
        away = a.qh_max(z, torch.tensor([[-1.0, 0.0]]).expand(n, 2))
    assert float((into > away).float().mean()) > 0.9


def test_world_model_losses_fall(dataset):
    cfg = OfflineConfig(steps=60, world_model=WorldModelConfig(horizon=3), **SMALL)
    learner = OfflineLearner(agent_spec_for(dataset, cfg), cfg)
    rng = np.random.default_rng(0)
    first = learner.update(dataset.sample_sequences(cfg.batch_size, 3, rng))
    for _ in range(cfg.steps):
        last = learner.update(dataset.sample_sequences(cfg.batch_size, 3, rng))
    assert last["wm/cost"] < first["wm/cost"] and last["wm/reward"] < first["wm/reward"]


def test_imagination_trains_and_logs_its_losses(dataset, tmp_path):
    """World model + imagined targets: the imagine scalars reach TensorBoard; imagine off logs none."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = OfflineConfig(
        steps=20, world_model=WorldModelConfig(horizon=2), imagine=ImagineConfig(horizon=3, start=10), **SMALL
    )
    train_offline(dataset, tmp_path / "on", cfg, progress=False)
    events = EventAccumulator(str(tmp_path / "on/tb")).Reload()
    keys = ("wm/imagine_loss_v", "wm/imagine_loss_h", "wm/imagine_y_h", "wm/imagine_cost_prob")
    for key in keys:
        values = [e.value for e in events.Scalars(key)]
        assert len(values) >= 1 and np.all(np.isfinite(values)), key
    assert all(0.0 <= e.value <= 1.0 for e in events.Scalars("wm/imagine_cost_prob"))
    # (1−γ)h + γ·max(h, ·) with h ∈ {−1, c_scale} is never below −1, whatever V_h bootstraps
    assert all(e.value >= -1.0 - 1e-6 for e in events.Scalars("wm/imagine_y_h"))

    learner = OfflineLearner(agent_spec_for(dataset, cfg), cfg.replace(imagine=ImagineConfig(enabled=False)))
    metrics = learner.update(dataset.sample_sequences(cfg.batch_size, 2, np.random.default_rng(0)))
    assert "wm/consistency" in metrics and not any(k.startswith("wm/imagine") for k in metrics)


def test_imagined_losses_train_only_the_value_heads(dataset):
    cfg = OfflineConfig(steps=1, world_model=WM, **SMALL)
    learner = OfflineLearner(agent_spec_for(dataset, cfg), cfg)
    a = learner.agent
    obs = torch.from_numpy(dataset.observations[:64])
    zd = a.encoder(obs).detach()
    losses, _ = learner._imagination_losses(learner.world_model, zd, a.v_r(zd), a.v_c(zd), a.v_h(zd))
    (losses["v"] + losses["h"]).backward()
    for head in (a.v_r, a.v_c, a.v_h):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())
    for frozen in (learner.world_model, a.encoder, a.actor_on, a.q_h):
        assert all(p.grad is None for p in frozen.parameters())


def test_random_shift_moves_content_by_whole_pixels():
    g = torch.Generator().manual_seed(0)
    img = torch.zeros(32, 16, 16, 3, dtype=torch.uint8)
    img[:, 8, 8] = 255
    out = augment(img, draw_augmentation(32, 3, pad=2, colour=0.0, generator=g))
    assert out.shape == (32, 16, 16, 3) and out.dtype == torch.float32
    positions = {tuple(torch.nonzero(o[..., 0] == 255)[0].tolist()) for o in out}
    assert len(positions) > 1 and all(6 <= r <= 10 and 6 <= c <= 10 for r, c in positions)


def test_random_shift_pads_by_replicating_the_border():
    """Pad-and-crop as DrQ does it: F.pad(replicate) then a crop at the drawn offset."""
    img = torch.randint(0, 256, (6, 9, 7, 3), dtype=torch.uint8)
    shifts = torch.tensor([[0, 0], [6, 6], [0, 6], [3, 1], [6, 0], [2, 5]])
    padded = torch.nn.functional.pad(img.float().permute(0, 3, 1, 2), (3, 3, 3, 3), mode="replicate")
    want = torch.stack([padded[i, :, r : r + 9, c : c + 7] for i, (r, c) in enumerate(shifts.tolist())])
    assert torch.equal(random_shift(img, shifts, 3), want.permute(0, 2, 3, 1))


def test_colour_jitter_scales_channels_within_bounds_and_clamps():
    g = torch.Generator().manual_seed(0)
    img = torch.full((64, 4, 4, 3), 100.0)
    img[:, 0, 0] = 250.0
    out = augment(img.clone(), draw_augmentation(64, 3, pad=0, colour=0.3, generator=g))
    assert out.shape == img.shape and float(out.min()) >= 0.0 and float(out.max()) <= 255.0
    # each frame: one gain per channel and one offset, the same at every pixel; gain·100 + offset ∈ 100 ± 30 ± 38.4
    flat = out[:, 1:, :, :].reshape(64, -1, 3)
    assert torch.allclose(flat, flat[:, :1, :].expand_as(flat))
    assert float(flat.min()) >= 100 - 30 - 38.4 - 1e-3 and float(flat.max()) <= 100 + 30 + 38.4 + 1e-3
    assert float(flat[:, 0].std(dim=0).min()) > 5  # frames differ from each other, per channel
    assert (out[:, 0, 0] == 255.0).any()  # bright pixels clamp rather than overflow


def test_resume_continues_exactly(dataset, tmp_path):
    cfg = OfflineConfig(steps=12, world_model=WorldModelConfig(horizon=2), checkpoint_every=8, **SMALL)
    straight = train_offline(dataset, tmp_path / "a", cfg, progress=False)
    with pytest.raises(RunDirError, match="--resume"):
        train_offline(dataset, tmp_path / "a", cfg, progress=False)
    train_offline(dataset, tmp_path / "b", cfg.replace(steps=8), progress=False)
    resumed = train_offline(dataset, tmp_path / "b", cfg, resume=True, progress=False)
    assert straight.steps == resumed.steps == 12 and resumed.bundle is None
    sa = load_checkpoint(tmp_path / "a/checkpoints/latest.pt")[1]["agent"]
    sb = load_checkpoint(tmp_path / "b/checkpoints/latest.pt")[1]["agent"]
    assert all(torch.allclose(sa[k], sb[k], atol=1e-6) for k in sa)
    assert (tmp_path / "b/checkpoints/step_00000008.pt").is_file() and any((tmp_path / "b/tb").iterdir())


def test_imagined_cost_probability_undoes_the_positive_weighting():
    """BCE with pos_weight w has optimal logit ln(w·p/(1−p)); a logit of exactly ln w is p = 0.5."""
    import math

    from reachsafe.trainer.models.world_model import WorldModel, upgrade_world_model_state

    wm = WorldModel(latent_dim=4, action_dim=2, hidden_dim=8)
    last = [m for m in wm.cost.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.fill_(math.log(10.0))
    raw = wm.imagine(torch.zeros(3, 4), lambda z: torch.zeros(z.shape[0], 2), horizon=2)
    assert torch.allclose(raw.cost_prob, torch.full((3, 2), 10 / 11))
    wm.weigh_cost_positives(10.0)
    rollout = wm.imagine(torch.zeros(3, 4), lambda z: torch.zeros(z.shape[0], 2), horizon=2)
    assert torch.allclose(rollout.cost_prob, torch.full((3, 2), 0.5))
    # the offset travels with the weights; a state saved before it existed gets it from the config
    old = {k: v for k, v in wm.state_dict().items() if k != "cost_logit_offset"}
    fresh = WorldModel(latent_dim=4, action_dim=2, hidden_dim=8)
    fresh.load_state_dict(upgrade_world_model_state(old, 10.0))
    assert torch.allclose(
        fresh.imagine(torch.zeros(3, 4), lambda z: torch.zeros(3, 2), 2).cost_prob, torch.full((3, 2), 0.5)
    )
