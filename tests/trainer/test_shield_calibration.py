"""Shield threshold calibration from in-sample Q_h, and where the offline run keeps its dataset path."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest
import torch
from conftest import fresh_run

from reachsafe.protocol.bundle import Bundle
from reachsafe.protocol.keys import load_signing_key
from reachsafe.trainer.algos.offline.config import (
    NetworkConfig,
    OfflineConfig,
    ShieldCalibrationConfig,
    WorldModelConfig,
)
from reachsafe.trainer.algos.offline.learner import OfflineLearner, agent_spec_for
from reachsafe.trainer.algos.online.config import OnlineConfig, OnlineShieldConfig
from reachsafe.trainer.algos.shield import calibration as shield_calibration
from reachsafe.trainer.algos.shield.budget import ShieldBudget
from reachsafe.trainer.algos.shield.calibration import (
    CalibrationError,
    CalibrationSettings,
    apply_intervention_budget,
    calibrate_shield,
    calibrate_threshold,
    safe_step_mask,
)
from reachsafe.trainer.daemon.bundles import BundleShelf
from reachsafe.trainer.data.dataset import load_datasets
from reachsafe.trainer.data.replay import StepReplay
from reachsafe.trainer.models.networks import Agent, load_checkpoint
from reachsafe.trainer.runs.offline import train_offline
from reachsafe.trainer.runs.run_dir import RunDir, resolve_signing_key
from reachsafe.trainer.runs.start import load_offline_dataset, shield_for_ship
from tests.fixtures.point_dataset import make_point_dataset, write_hdf5

SAFE_Q = np.linspace(-2.0, -0.1, 20)  # 20 safe steps, sorted: the 18th smallest is -0.3
COST_Q = np.array([-1.5, -0.25, 0.5, 1.0])


def _case() -> tuple[np.ndarray, np.ndarray]:
    q = np.concatenate([SAFE_Q, COST_Q])
    safe = np.concatenate([np.ones(20, bool), np.zeros(4, bool)])
    return q, safe


def test_quantile_keeps_safe_interventions_at_the_budget_and_reports_the_catch_rate() -> None:
    q, safe = _case()
    cal = calibrate_threshold(q, safe, "quantile", max_safe_intervention=0.1, floor=None, cost_horizon=5)
    assert cal.threshold == pytest.approx(SAFE_Q[17])  # k = 20 − ⌊0.1·20⌋ = 18
    assert cal.quantile == pytest.approx(0.9)
    assert cal.safe_intervention_rate == pytest.approx(2 / 20)
    assert cal.catch_rate == pytest.approx(3 / 4)  # -0.25, 0.5 and 1.0 lie above -0.3
    assert (cal.samples, cal.safe_samples, cal.cost_leading_samples) == (24, 20, 4)
    section = cal.to_manifest()
    assert section["threshold"] == pytest.approx(SAFE_Q[17])
    assert section["calibration"]["method"] == "quantile" and section["calibration"]["cost_horizon"] == 5


def test_quantile_never_goes_below_the_floor_and_fixed_is_fixed() -> None:
    q, safe = _case()
    floored = calibrate_threshold(q, safe, "quantile", max_safe_intervention=0.1, floor=0.0)
    assert floored.threshold == 0.0 and floored.safe_intervention_rate == 0.0
    assert floored.catch_rate == pytest.approx(2 / 4)
    fixed = calibrate_threshold(q, safe, "fixed", fixed_threshold=-1.05)
    assert fixed.threshold == -1.05 and fixed.quantile is None
    assert fixed.safe_intervention_rate == pytest.approx(10 / 20)  # -1.0, -0.9, …, -0.1
    none_safe = np.zeros(len(q), bool)
    with pytest.raises(CalibrationError, match="no safe steps"):
        calibrate_threshold(q, none_safe, "quantile")


def test_safe_steps_look_ahead_within_their_own_episode_only() -> None:
    costs = np.array([0, 0, 0, 1, 0, 0, 1, 0, 0], np.float32)
    mask = safe_step_mask(costs, [(0, 6), (6, 9)], horizon=2)
    # step 5 ends episode 1: the cost at step 6 belongs to the next episode
    assert mask.tolist() == [True, True, False, False, True, True, False, True, True]


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """A 3-update offline run on a tiny state dataset in two files, trained from relative paths."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("sh")
    (root / "data").mkdir()
    write_hdf5(make_point_dataset(episodes=4, length=12, seed=0), root / "data" / "a.h5")
    write_hdf5(make_point_dataset(episodes=2, length=12, seed=1), root / "data" / "b.h5")
    cfg = OfflineConfig(
        steps=3,
        batch_size=8,
        network=NetworkConfig(hidden_dim=16, latent_dim=8),
        world_model=WorldModelConfig(enabled=False),
        shield=ShieldCalibrationConfig(calibration_samples=50),
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        train_offline(load_datasets(["data/a.h5", "data/b.h5"]), "run", cfg, progress=False, export=False)
    _, ckpt = load_checkpoint(RunDir(root / "run").require_checkpoint())
    return root, ckpt


def test_run_records_the_absolute_dataset_paths_and_the_calibrated_shield(small_run, tmp_path, monkeypatch):
    root, ckpt = small_run
    files = [str((root / "data" / name).resolve()) for name in ("a.h5", "b.h5")]
    assert ckpt["dataset"]["files"] == files and ckpt["dataset"]["steps"] == 72
    monkeypatch.chdir(tmp_path)  # the daemon starts elsewhere
    ds = load_offline_dataset(None, ckpt)
    assert ds is not None and len(ds) == 72 and ds.files == tuple(files) and len(ds.episode_bounds()) == 6
    shield = ckpt["shield"]
    assert shield["threshold"] >= 0.0 and shield["calibration"]["samples"] == 50
    agent, _ = load_checkpoint(RunDir(root / "run").require_checkpoint())
    assert shield_for_ship(OnlineConfig(), ckpt, None)(agent) == shield  # no dataset: the offline section
    assert shield_for_ship(OnlineConfig(shield=OnlineShieldConfig(threshold=2.5)), ckpt, None)(agent) == {
        "threshold": 2.5
    }


def test_a_missing_recorded_dataset_warns_with_the_path_tried(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.WARNING, logger="reachsafe.trainer.algos.online.learner"):
        assert load_offline_dataset(None, {"dataset": {"source": "gone/d.h5"}}) is None
    assert str(tmp_path / "gone" / "d.h5") in caplog.text and "WITHOUT replay mixing" in caplog.text


def test_a_run_whose_data_cannot_calibrate_ships_the_fixed_threshold(caplog, monkeypatch) -> None:
    ds = make_point_dataset(episodes=2, length=6, seed=0)
    ds.costs[:] = 1.0  # every step leads into cost: no safe steps to calibrate on
    cfg = OfflineConfig(
        network=NetworkConfig(hidden_dim=16, latent_dim=8),
        world_model=WorldModelConfig(enabled=False),
        shield=ShieldCalibrationConfig(threshold=0.7),
    )
    evaluated = []
    q_h_at = shield_calibration.q_h_at
    monkeypatch.setattr(shield_calibration, "q_h_at", lambda *a: evaluated.append(1) or q_h_at(*a))
    with caplog.at_level(logging.WARNING, logger="reachsafe.trainer.algos.shield.calibration"):
        cal = calibrate_shield(
            OfflineLearner(agent_spec_for(ds, cfg), cfg).agent, ds, CalibrationSettings.of(cfg)
        )
    assert cal.method == "fixed" and cal.threshold == 0.7 and cal.catch_rate is not None
    assert cal.samples == len(ds) and len(evaluated) == 1  # the fallback reuses the Q_h it computed
    assert "calibration failed" in caplog.text


def shift_q_h(agent: Agent, by: float) -> None:
    with torch.no_grad():
        for head in agent.q_h.members:
            head[-1].bias += by


def test_the_daemon_recalibrates_the_shield_on_the_current_q_h(small_run) -> None:
    _, ckpt = small_run
    agent, _ = load_checkpoint(RunDir(small_run[0] / "run").require_checkpoint())
    dataset = load_offline_dataset(None, ckpt)
    offline = ckpt["shield"]
    wrong = {**ckpt, "shield": {**offline, "threshold": 123.0}}  # a stale offline threshold
    shipped = shield_for_ship(OnlineConfig(), wrong, dataset)(agent)
    # same Q_h, same settings and sample as the offline export: its threshold, not the stale one
    assert shipped == {"threshold": offline["threshold"], "calibration": offline["calibration"]}
    assert shipped["calibration"]["method"] == "quantile" and shipped["calibration"]["samples"] == 50
    settings = CalibrationSettings.from_checkpoint(ckpt)
    unfloored = calibrate_shield(agent, dataset, dataclasses.replace(settings, floor=None)).threshold
    shift_q_h(agent, 5.0)  # Q_h learned online: every in-sample value 5 higher
    moved = shield_for_ship(OnlineConfig(), wrong, dataset)(agent)
    assert moved["threshold"] == pytest.approx(max(unfloored + 5.0, 0.0))
    assert (
        moved["threshold"] != offline["threshold"] and moved["calibration"]["safe_intervention_rate"] <= 0.05
    )


def test_the_daemon_ships_a_configured_or_fixed_threshold_with_its_rates(small_run) -> None:
    _, ckpt = small_run
    agent, _ = load_checkpoint(RunDir(small_run[0] / "run").require_checkpoint())
    dataset = load_offline_dataset(None, ckpt)
    configured = shield_for_ship(OnlineConfig(shield=OnlineShieldConfig(threshold=2.5)), ckpt, dataset)(agent)
    assert configured["threshold"] == 2.5 and configured["calibration"]["method"] == "fixed"
    assert configured["calibration"]["samples"] == 50 and configured["calibration"]["catch_rate"] is not None
    fixed_run = {**ckpt, "config": {**ckpt["config"], "shield": {"calibration": "fixed", "threshold": 0.3}}}
    fixed = shield_for_ship(OnlineConfig(), fixed_run, dataset)(agent)
    assert fixed["threshold"] == 0.3 and fixed["calibration"]["method"] == "fixed"
    assert shield_for_ship(OnlineConfig(shield=OnlineShieldConfig(threshold=2.5)), ckpt, None)(agent) == {
        "threshold": 2.5
    }


def test_a_shipped_online_bundle_carries_the_recalibrated_threshold(offline_run, tmp_path) -> None:
    run = RunDir(fresh_run(offline_run, tmp_path))
    agent, ckpt = load_checkpoint(run.require_checkpoint())
    shift_q_h(agent, 5.0)
    dataset = load_offline_dataset(None, ckpt)
    key = load_signing_key(resolve_signing_key(None, run))
    shelf = BundleShelf(run.root, key, shield_for_ship(OnlineConfig(), ckpt, dataset), keep=2)
    manifest = Bundle.from_message(shelf.ship(agent, 7, {}), [key.public_key()]).manifest
    offline_threshold = ckpt["shield"]["threshold"]
    assert manifest["version"] == 2 and manifest["shield"]["threshold"] != offline_threshold
    assert (
        manifest["shield"]
        == calibrate_shield(agent, dataset, CalibrationSettings.from_checkpoint(ckpt)).to_manifest()
    )


def test_the_intervention_budget_raises_the_threshold_to_the_proposals_quantile() -> None:
    q = np.arange(10.0)  # Q_h at the last 10 proposals
    raised = apply_intervention_budget({"threshold": 2.0, "calibration": {"method": "quantile"}}, q, 0.2)
    assert raised["threshold"] == 7.0  # 8 and 9 replaced: 20% of the proposals
    cal = raised["calibration"]
    assert (
        cal["method"] == "quantile" and cal["calibrated_threshold"] == 2.0 and cal["budget_threshold"] == 7.0
    )
    assert cal["proposal_intervention_rate"] == pytest.approx(0.2) and cal["budget_samples"] == 10
    kept = apply_intervention_budget({"threshold": 8.5}, q, 0.2)  # within budget already: never lowered
    assert kept["threshold"] == 8.5 and kept["calibration"]["proposal_intervention_rate"] == pytest.approx(
        0.1
    )
    assert apply_intervention_budget({"threshold": 1.0}, np.zeros(0), 0.2) == {"threshold": 1.0}
    with pytest.raises(CalibrationError, match="budget"):
        apply_intervention_budget({"threshold": 1.0}, q, 1.0)


def test_bundles_keep_the_shield_within_its_budget_on_the_recent_online_proposals(small_run) -> None:
    _, ckpt = small_run
    agent, _ = load_checkpoint(RunDir(small_run[0] / "run").require_checkpoint())
    dataset = load_offline_dataset(None, ckpt)
    n = 40
    replay = StepReplay(64, (2,), 2)
    replay.obs = np.zeros((64, 2), np.float32)  # a state replay
    replay.add_batch("robot", 0, {"obs": dataset.observations[:n], "action": dataset.actions[:n],
                                  "proposed": dataset.actions[:n], "reward": dataset.rewards[:n],
                                  "cost": dataset.costs[:n], "terminated": np.zeros(n, bool),
                                  "truncated": np.zeros(n, bool)})  # fmt: skip
    shift_q_h(agent, 5.0)
    offline_only = shield_for_ship(
        OnlineConfig(shield=OnlineShieldConfig(intervention_budget=None)), ckpt, dataset, replay
    )(agent)
    shipped = shield_for_ship(
        OnlineConfig(shield=OnlineShieldConfig(intervention_budget=0.1)), ckpt, dataset, replay
    )(agent)
    cal = shipped["calibration"]
    assert cal["calibrated_threshold"] == offline_only["threshold"] and cal["budget_samples"] == n
    assert shipped["threshold"] >= offline_only["threshold"] and cal["proposal_intervention_rate"] <= 0.1
    q = shield_calibration.q_h_at(agent, replay.obs, replay.proposed, replay.recent(n))
    assert np.mean(q > offline_only["threshold"]) > 0.1  # the offline calibration alone was over budget
    assert shipped["threshold"] > offline_only["threshold"]
    configured = shield_for_ship(
        OnlineConfig(shield=OnlineShieldConfig(threshold=2.5)), ckpt, dataset, replay
    )(agent)
    assert configured["threshold"] == 2.5  # a configured threshold is shipped as is
    budget = ShieldBudget(0.1, rate=0.2, low=0.01, high=0.5)
    adapted = shield_for_ship(OnlineConfig(), ckpt, dataset, replay, budget)
    assert adapted(agent) == shipped
    budget.value = 0.025  # the learner's budget at the next ship: one proposal of 40 may be replaced
    tighter = adapted(agent)
    assert tighter["calibration"]["intervention_budget"] == 0.025
    assert tighter["threshold"] > shipped["threshold"] and tighter["threshold"] == float(np.sort(q)[-2])
