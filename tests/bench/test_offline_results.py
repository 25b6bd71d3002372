"""The offline benches' arithmetic (the runs themselves are bench-only)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from bench.offline_goal_view import action_by_view
from bench.offline_results import (
    DATASET,
    DATASET_SEED,
    DATASET_STEM,
    _args,
    _key,
    _train_and_evaluate,
    _unkey,
    paired_vs_bc,
    run,
    trained_updates,
)
from reachsafe.sim_bridge.collect import CollectConfig, collect
from reachsafe.sim_bridge.env import SIGHT_RANGE, goal_in_view, in_fov


def _s(ret: float, cost: float) -> dict[str, float]:
    return {"return_mean": ret, "cost_mean": cost}


def test_paired_differences_by_hand():
    results = {
        ("bc", "train", False): [_s(5.0, 8.0), _s(7.0, 10.0), _s(6.0, 6.0)],
        ("fosp", "train", False): [_s(6.0, 4.0), _s(6.0, 7.0), _s(6.0, 7.0)],
        ("fosp", "train", True): [_s(4.0, 2.0), _s(5.0, 3.0), _s(6.0, 1.0)],
    }
    lines = paired_vs_bc(results)
    # return differences +1, −1, 0: mean 0, SE = 1/√3 = 0.58; cost −4, −3, +1: mean −2, SE = √7/√3 = 1.53
    assert lines[0] == "train, fosp − bc: return +0.00 ± 0.58, cost -2.00 ± 1.53, cost lower on 2/3 seeds"
    # return −1, −2, 0: mean −1, SE = 1/√3; cost −6, −7, −5: mean −6, SE = 1/√3; lower on all
    assert (
        lines[1]
        == "train, fosp + shield − bc: return -1.00 ± 0.58, cost -6.00 ± 0.58, cost lower on 3/3 seeds"
    )


@pytest.mark.parametrize("missing", ["bc", "short"])
def test_no_pairs_without_a_matching_bc(missing):
    fosp = [_s(6.0, 4.0), _s(6.0, 7.0)]
    results = {("fosp", "unseen", False): fosp}
    if missing == "short":
        results[("bc", "unseen", False)] = [_s(5.0, 8.0)]
    assert paired_vs_bc(results) == []


def test_evaluation_cache_keys_round_trip():
    for split_shield in [("train", False), ("unseen", True)]:
        assert _unkey(_key(split_shield)) == split_shield


def test_action_by_view_by_hand():
    actions = np.array([[1.0, 0.2], [0.8, -0.4], [0.2, -1.0], [0.0, 0.6]])
    in_view = np.array([True, True, False, False])
    got = action_by_view(actions, in_view)
    assert got == pytest.approx(
        {
            "forward, in view": 0.9,
            "forward, out of view": 0.1,
            "turn magnitude, in view": 0.3,
            "turn magnitude, out of view": 0.8,
        }
    )
    with pytest.raises(ValueError, match="both"):
        action_by_view(actions, np.ones(4, dtype=bool))


def test_goal_in_view_follows_the_camera_cone_and_range():
    origin = np.zeros(2)
    assert goal_in_view(origin, 0.0, np.array([2.0, 0.0]))  # straight ahead
    assert goal_in_view(origin, 0.0, np.array([2.0, 1.9]))  # 43.5°: inside the 90° cone
    assert not goal_in_view(origin, 0.0, np.array([2.0, 2.1]))  # 46.4°: outside
    assert not goal_in_view(origin, 0.0, np.array([-2.0, 0.0]))  # behind
    assert goal_in_view(origin, np.pi, np.array([-2.0, 0.0]))  # behind, after turning round
    assert not goal_in_view(origin, 0.0, np.array([SIGHT_RANGE + 0.1, 0.0]))  # too far
    assert in_fov(origin, 0.0, np.array([SIGHT_RANGE + 0.1, 0.0]))  # but in the cone
    assert not in_fov(origin, 0.0, np.array([2.0, 2.1]))


def test_bench_refuses_a_dataset_collected_otherwise(tmp_path):
    """A workdir's dataset from experts that steer by the map is not silently reused."""
    cfg = CollectConfig(
        task="reachsafe/SafeGoal1-v0", episodes=1, episode_steps=5, seed=DATASET_SEED, search=False
    )
    collect(cfg, tmp_path / DATASET, progress=False)
    with pytest.raises(SystemExit, match="'search': False"):
        run(_args(["--episodes", "1"]), tmp_path)


def test_bench_keeps_each_colouring_in_its_own_file_and_needs_jitter_for_also_plain(tmp_path):
    with pytest.raises(SystemExit, match="--palette-jitter"):
        run(_args(["--episodes", "1", "--also-plain"]), tmp_path)
    cfg = CollectConfig(task="reachsafe/SafeGoal1-v0", episodes=1, episode_steps=5, seed=DATASET_SEED)
    collect(cfg, tmp_path / f"{DATASET_STEM}_jitter0.2.h5", progress=False)  # colours not randomised
    with pytest.raises(SystemExit, match=r"jitter0\.2\.h5 was collected with .*'palette_jitter': 0\.0"):
        run(_args(["--episodes", "1", "--palette-jitter", "0.2"]), tmp_path)


def test_bench_counts_a_runs_updates_and_refuses_to_shorten_it(offline_run, tmp_path):
    """A workdir run is resumed when --steps grows; one trained further than --steps is not silently reused."""
    assert trained_updates(tmp_path / "fosp_seed0") == 0  # not trained yet
    shutil.copytree(offline_run, tmp_path / "fosp_seed0")
    assert trained_updates(tmp_path / "fosp_seed0") == 10
    with pytest.raises(SystemExit, match="10 updates, more than --steps 5"):
        _train_and_evaluate("fosp", 0, _args(["--steps", "5"]), tmp_path, [], (0.0, 1.0))
