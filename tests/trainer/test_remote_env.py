"""``--env remote:tcp://…``: reachsafe's own sim server driven as a gymnasium env through the runtime's
hardware client, by ``make_env`` and by ``eval``; one client per robot and process."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import Processes, free_tcp_port, poll_until

from reachsafe.protocol.bundle import load_bundle
from reachsafe.protocol.keys import generate_keys, load_signing_key, load_trusted_keys
from reachsafe.trainer.algos.online.config import OnlineConfig, ReplayConfig, VPAConfig
from reachsafe.trainer.models.networks import Agent, AgentSpec, save_checkpoint
from reachsafe.trainer.runs.envs import EnvSpecError, make_env
from reachsafe.trainer.runs.evaluate import EvalError, evaluate_bundle
from reachsafe.trainer.runs.online import train_online
from reachsafe.trainer.runs.remote_env import RemoteEnv
from tests.fixtures.edge_support import make_test_bundle
from tests.fixtures.point_dataset import make_point_dataset, write_hdf5

EPISODE_STEPS = 12


@pytest.fixture
def remote(processes: Processes) -> Iterator[str]:
    """``remote:tcp://127.0.0.1:PORT`` of a running `reachsafe sim serve` (2× real time, 12-step episodes)."""
    port = free_tcp_port()
    proc = processes.reachsafe("sim", "serve", "--bind", f"tcp://127.0.0.1:{port}", "--speed", "2",
                               "--episode-steps", str(EPISODE_STEPS), name="sim")  # fmt: skip

    def up() -> bool:
        assert proc.poll() is None, processes.log(proc)
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    poll_until(up, 60.0, 0.1, "the sim server")
    yield f"remote:tcp://127.0.0.1:{port}"
    assert not RemoteEnv._open, "every remote env was closed"


def test_a_robot_server_runs_whole_episodes_as_a_gymnasium_env(remote: str) -> None:
    env = make_env(remote, None, 0)
    again = make_env(remote, None, 0)
    assert again.unwrapped is env.unwrapped, "one client per robot in a process"
    again.close()
    try:
        assert env.observation_space.shape == (64, 64, 3) and env.action_space.shape == (2,)
        for _ in range(2):
            obs, _ = env.reset()
            assert obs.shape == (64, 64, 3) and obs.dtype == np.uint8
            episodes, length, done = set(), 0, False
            while not done:
                obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
                assert np.isfinite(reward) and info["cost"] >= 0
                episodes.add(info["episode"])
                length, done = length + 1, terminated or truncated
            assert length == EPISODE_STEPS and len(episodes) <= 2  # whole episodes, from their start
    finally:
        env.close()
    with pytest.raises(EnvSpecError, match="set them on the server"):
        make_env(remote, "unseen", 0)


def test_eval_runs_a_bundle_on_a_robot_server(remote: str, tmp_path: Path) -> None:
    generate_keys(tmp_path / "keys")
    path = make_test_bundle(tmp_path / "bundle", load_signing_key(tmp_path / "keys" / "signing.key"), 1,
                            obs_shape=(64, 64, 3))  # fmt: skip
    bundle = load_bundle(path, load_trusted_keys(tmp_path / "keys" / "signing.pub"))
    summary = evaluate_bundle(bundle, remote, episodes=2)
    assert len(summary.episodes) == 2 and all(0 < e.length <= EPISODE_STEPS for e in summary.episodes)
    with pytest.raises(EvalError, match="set them on the server"):
        evaluate_bundle(bundle, remote, episodes=1, episode_steps=5)


def test_train_online_on_a_robot_server(remote: str, tmp_path: Path) -> None:
    """Whole episodes recorded from their start, the final evaluation after the training steps (on the
    same client); evaluations in between would interleave with training episodes on the one robot."""
    write_hdf5(make_point_dataset(episodes=2, length=10, image_size=64), tmp_path / "ds.h5")
    torch.manual_seed(0)
    agent = Agent(
        AgentSpec(
            obs_shape=(64, 64, 3), action_dim=2, latent_dim=8, hidden_dim=16, cnn_channels=4, world_model=True
        )
    )
    save_checkpoint(tmp_path / "run" / "checkpoints" / "latest.pt", agent, 0,
                    extra={"dataset": {"source": str(tmp_path / "ds.h5")}})  # fmt: skip
    cfg = OnlineConfig(batch_size=4, replay=ReplayConfig(warmup_steps=100), vpa=VPAConfig(enabled=False))
    result = train_online(tmp_path / "run", remote, 2 * EPISODE_STEPS, cfg, tmp_path / "out", eval_episodes=1)
    assert result.episodes == 2 and result.final_eval["episodes"] == 1
    with pytest.raises(EnvSpecError, match="--eval-every"):
        train_online(tmp_path / "run", remote, 10, cfg, tmp_path / "out2", eval_every=5)
