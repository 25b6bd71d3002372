"""In-process gymnasium envs as the trainer's rollouts see them: the cost from ``info[--cost-key]`` or
from the safety API's 6-tuple, a missing cost refused (never counted as 0), dict observations read
with ``--obs-key``, in ``train online``, ``train reeval`` and ``eval``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from reachsafe.protocol.bundle import load_bundle
from reachsafe.protocol.keys import generate_keys, load_signing_key, load_trusted_keys
from reachsafe.trainer.algos.online.config import OnlineConfig, ReplayConfig, VPAConfig
from reachsafe.trainer.models.networks import Agent, AgentSpec, save_checkpoint
from reachsafe.trainer.runs.envs import EnvSpecError, MissingCostError, frame_of, make_env
from reachsafe.trainer.runs.evaluate import evaluate_bundle
from reachsafe.trainer.runs.online import train_online
from reachsafe.trainer.runs.reeval import reevaluate
from tests.fixtures.edge_support import make_test_bundle
from tests.fixtures.point_dataset import make_point_dataset, write_hdf5

REPO = Path(__file__).resolve().parents[2]  # (not conftest's: the CLI imports this module for its envs)
EPISODE = 10  # steps per episode of the test envs


class CostlyEnv(gym.Env):
    """A point that costs 1 on every step, so a run's true cumulative cost is its step count.

    ``api``: ``"info"`` reports the cost as ``info[info_key]``, ``"six"`` returns Safety-Gymnasium's
    ``(obs, reward, cost, terminated, truncated, info)``; ``dict_obs``: observations are
    ``{"state": (2,) float32, "image": (8, 8, 3) uint8}``, as Safety-Gymnasium's vision tasks give
    sensors beside the camera image."""

    action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)

    def __init__(self, api: str = "info", info_key: str = "cost", dict_obs: bool = False) -> None:
        self.api, self.info_key, self.dict_obs = api, info_key, dict_obs
        state = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        image = gym.spaces.Box(0, 255, (8, 8, 3), np.uint8)
        self.observation_space = gym.spaces.Dict({"state": state, "image": image}) if dict_obs else state

    def _obs(self) -> np.ndarray | dict[str, np.ndarray]:
        if not self.dict_obs:
            return self.s.copy()
        image = np.full((8, 8, 3), int(127 * (self.s[0] + 1)), np.uint8)
        return {"state": self.s.copy(), "image": image}

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple:
        super().reset(seed=seed)
        self.s, self.t = self.np_random.uniform(-0.9, 0.9, 2).astype(np.float32), 0
        return self._obs(), {}

    def step(self, action: np.ndarray) -> tuple:
        self.s = np.clip(self.s + 0.1 * np.asarray(action, np.float32), -1, 1).astype(np.float32)
        self.t += 1
        reward, done = float(-abs(self.s[0])), self.t >= EPISODE
        if self.api == "six":
            return self._obs(), reward, 1.0, False, done, {"cost_sum": 1.0}
        return self._obs(), reward, False, done, {self.info_key: 1.0}


def _register(name: str, **kwargs: object) -> str:
    env_id = f"reachsafe_test/{name}-v0"
    gym.register(env_id, entry_point=CostlyEnv, kwargs=kwargs, max_episode_steps=50)
    return env_id


INFO = _register("CostInInfo")
RENAMED = _register("CostRenamed", info_key="cost_hazards")
SIX_DICT = _register("SixTupleDict", api="six", dict_obs=True)


@pytest.mark.parametrize(("env_id", "cost_key"), [(INFO, "cost"), (RENAMED, "cost_hazards"), (SIX_DICT, "x")])
def test_every_env_reports_its_cost_in_info_cost(env_id: str, cost_key: str) -> None:
    """The 6-tuple's cost wins over any key (its info has only ``cost_sum``)."""
    env = make_env(env_id, None, 0, cost_key)
    result = env.step(env.action_space.sample())
    assert len(result) == 5 and result[4]["cost"] == 1.0
    env.close()


def test_a_step_without_the_cost_is_an_error_that_names_the_option() -> None:
    env = make_env(RENAMED, None, 0)  # --cost-key left at "cost": the env has none
    with pytest.raises(MissingCostError) as err:
        env.step(env.action_space.sample())
    assert "cost_hazards" in str(err.value) and "--cost-key" in str(err.value)


def test_dict_observations_need_the_image_key() -> None:
    obs = {"state": np.zeros(2), "image": np.ones((8, 8, 3))}
    assert frame_of(obs, "state").shape == (2,)
    for key in (None, "vision"):
        with pytest.raises(EnvSpecError, match="--obs-key"):
            frame_of(obs, key)
    with pytest.raises(EnvSpecError, match="cannot import"):
        make_env("no_such_module_here:Env-v0", None, 0)


def _offline_run(tmp_path: Path) -> Path:
    write_hdf5(make_point_dataset(episodes=4, length=20), tmp_path / "ds.h5")
    torch.manual_seed(0)
    agent = Agent(AgentSpec(obs_shape=(2,), action_dim=2, latent_dim=8, hidden_dim=32, world_model=True))
    save_checkpoint(tmp_path / "run" / "checkpoints" / "latest.pt", agent, 0,
                    extra={"dataset": {"source": str(tmp_path / "ds.h5")}})  # fmt: skip
    return tmp_path / "run"


def test_train_online_counts_the_safety_apis_cost_on_dict_observations(tmp_path: Path) -> None:
    run, out = _offline_run(tmp_path), tmp_path / "online"
    cfg = OnlineConfig(batch_size=8, replay=ReplayConfig(warmup_steps=10), vpa=VPAConfig(enabled=False))
    result = train_online(run, SIX_DICT, 2 * EPISODE, cfg, out, obs_key="state", eval_episodes=1)
    assert result.cumulative_cost == 2 * EPISODE and result.costs == [EPISODE, EPISODE]
    assert result.final_eval["cost_mean"] == EPISODE
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["obs_key"], summary["cost_key"]) == ("state", "cost")
    assert reevaluate(out, 1, seed_base=0)["cost_mean"] == EPISODE  # the run's own --obs-key
    with pytest.raises(MissingCostError, match="--cost-key"):
        train_online(run, RENAMED, EPISODE, cfg, tmp_path / "renamed", eval_episodes=0)
    renamed = train_online(run, RENAMED, EPISODE, cfg, tmp_path / "renamed2", cost_key="cost_hazards",
                           eval_episodes=0)  # fmt: skip
    assert renamed.cumulative_cost == EPISODE


def test_eval_reads_dict_observations_and_the_safety_apis_cost(tmp_path: Path) -> None:
    """`eval` on a foreign task in-process, and from the CLI: a missing --obs-key is one line, exit 2."""
    generate_keys(tmp_path / "keys")
    path = make_test_bundle(tmp_path / "bundle", load_signing_key(tmp_path / "keys" / "signing.key"), 1,
                            obs_shape=(8, 8, 3))  # fmt: skip
    bundle = load_bundle(path, load_trusted_keys(tmp_path / "keys" / "signing.pub"))
    summary = evaluate_bundle(bundle, SIX_DICT, episodes=2, obs_key="image", episode_steps=4)
    assert [(e.cost, e.length) for e in summary.episodes] == [(4.0, 4), (4.0, 4)]
    task = f"tests.trainer.test_envs:{SIX_DICT}"
    cmd = [sys.executable, "-m", "reachsafe.cli", "eval", "--bundle", str(path), "--keys", str(tmp_path / "keys"),
           "--task", task, "--episodes", "1"]  # fmt: skip
    bad = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--obs-key" in bad.stderr and "Traceback" not in bad.stderr, bad.stderr
    good = subprocess.run([*cmd, "--obs-key", "image"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert good.returncode == 0 and "cost          10.000" in good.stdout, good.stderr
