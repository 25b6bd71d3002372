"""Dataset collection: a valid DSRL-layout HDF5 file, the same for any number of workers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
from conftest import REPO

from reachsafe.sim_bridge.collect import DSRL_KEYS, CollectConfig, collect, summarize


def test_collect_cli_writes_a_valid_dsrl_file_with_workers(tmp_path: Path) -> None:
    out = tmp_path / "d.h5"
    cmd = [sys.executable, "-m", "reachsafe.cli", "sim", "collect", "--task", "reachsafe/SafeGoal1-v0"]
    cmd += ["--policy", "mixed", "--episodes", "4", "--episode-steps", "25", "--workers", "2", "--seed", "3"]
    res = subprocess.run(cmd + ["--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    stats = json.loads(res.stdout)  # stdout is exactly the statistics JSON
    assert stats["episodes"] == 4 and stats["steps"] == 100
    assert out.with_suffix(".png").stat().st_size > 5000
    with h5py.File(out, "r") as f:
        assert set(DSRL_KEYS) <= set(f.keys())
        n = f["rewards"].shape[0]
        assert n == 100
        assert f["observations"].shape == (n, 64, 64, 3) and f["observations"].dtype == np.uint8
        assert f["next_observations"].shape == (n, 64, 64, 3)
        assert f["actions"].shape == (n, 2) and f["actions"].dtype == np.float32
        for k in ("rewards", "costs"):
            assert f[k].shape == (n,) and f[k].dtype == np.float32
        for k in ("terminals", "timeouts"):
            assert f[k].shape == (n,) and f[k].dtype == bool
        assert f["timeouts"][()].sum() == 4 and f["timeouts"][24] and not f["terminals"][()].any()
        # next_observations[t] is observations[t+1] inside an episode
        np.testing.assert_array_equal(f["next_observations"][0:24], f["observations"][1:25])
        assert f["rewards"].compression == "lzf"
        meta = json.loads(f.attrs["metadata"])
    assert (
        meta["task"] == "reachsafe/SafeGoal1-v0" and meta["split"] == "train" and meta["obs_mode"] == "image"
    )
    assert meta["seeds"] == [3, 6] and set(meta["policy_mix"]) == {"careful", "reckless", "noisy", "random"}
    assert len(meta["episode_policies"]) == 4 and "pybullet" in meta["versions"]
    assert meta["search"] is True  # the default: experts search while the goal is out of view


def test_collect_is_independent_of_worker_count(tmp_path: Path) -> None:
    cfg = CollectConfig(
        task="reachsafe/SafeGoal2-v0",
        policy="noisy",
        episodes=3,
        obs_mode="state",
        seed=11,
        episode_steps=30,
        compression="gzip",
        search=False,
    )
    s1 = collect(cfg, tmp_path / "a.h5", workers=1, progress=False)
    s2 = collect(cfg, tmp_path / "b.h5", workers=2, progress=False)
    assert s1 == s2
    with h5py.File(tmp_path / "a.h5") as a, h5py.File(tmp_path / "b.h5") as b:
        assert a["observations"].shape == (90, 50) and a["observations"].dtype == np.float32
        for k in DSRL_KEYS:
            np.testing.assert_array_equal(a[k][()], b[k][()])
        np.testing.assert_allclose(a["rewards"][()].reshape(3, 30).sum(1), [s.ret for s in s1], rtol=1e-5)
        assert json.loads(a.attrs["metadata"])["search"] is False
    summary = summarize(s1)
    assert summary["episodes"] == 3 and summary["steps"] == 90


def test_palette_jitter_changes_the_frames_and_nothing_else(tmp_path: Path) -> None:
    """Domain randomisation: same seeds, same actions, rewards and costs; other frames, recorded in
    the metadata; and the same again for the same seeds."""
    cfg = CollectConfig(task="reachsafe/SafeGoal1-v0", policy="mixed", episodes=2, seed=5, episode_steps=20)
    plain = collect(cfg, tmp_path / "plain.h5", workers=1, progress=False)
    jittered = CollectConfig(**{**cfg.__dict__, "palette_jitter": 0.2})
    again = collect(jittered, tmp_path / "dr.h5", workers=1, progress=False)
    assert collect(jittered, tmp_path / "dr2.h5", workers=1, progress=False) == again
    assert [(s.ret, s.cost) for s in again] == [(s.ret, s.cost) for s in plain]
    with (
        h5py.File(tmp_path / "plain.h5") as a,
        h5py.File(tmp_path / "dr.h5") as b,
        h5py.File(tmp_path / "dr2.h5") as c,
    ):
        for k in ("actions", "rewards", "costs", "timeouts"):
            np.testing.assert_array_equal(a[k][()], b[k][()])
        np.testing.assert_array_equal(b["observations"][()], c["observations"][()])
        # bottom row of each frame: the floor, averaged per episode
        floor_a = a["observations"][:, -1].reshape(2, 20, -1, 3).mean((1, 2))
        floor_b = b["observations"][:, -1].reshape(2, 20, -1, 3).mean((1, 2))
        assert np.abs(floor_a - floor_b).max() > 10 and np.abs(floor_b[0] - floor_b[1]).max() > 10
        assert json.loads(b.attrs["metadata"])["palette_jitter"] == 0.2
        assert json.loads(a.attrs["metadata"])["palette_jitter"] == 0.0
