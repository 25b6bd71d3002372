"""The daemon's learner thread (issue #24): an update that leaves a non-finite loss, gradient or parameter
is undone and counted; a bundle ships only with SAC-Lag updates made since the last one (never during
VPA alone) and only if its export passes the ONNX parity check."""

from __future__ import annotations

import queue
from pathlib import Path

import numpy as np
import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from reachsafe.protocol.messages import BundleMessage, Steps
from reachsafe.trainer.algos.online.config import DaemonConfig, OnlineConfig, ReplayConfig, VPAConfig
from reachsafe.trainer.algos.online.learner import OnlineLearner
from reachsafe.trainer.daemon.bundles import BundleShelf
from reachsafe.trainer.daemon.learner import DaemonLearner, FiniteGuard
from reachsafe.trainer.daemon.status import format_status
from reachsafe.trainer.data.replay import StepReplay
from reachsafe.trainer.models.networks import Agent, AgentSpec
from reachsafe.trainer.runs.metrics import MetricsWriter
from tests.fixtures.point_dataset import make_point_dataset
from tests.fixtures.step_batches import synthetic_columns

OBS = (8, 8, 3)


def small_learner(**cfg: object) -> OnlineLearner:
    torch.manual_seed(0)
    agent = Agent(
        AgentSpec(obs_shape=OBS, action_dim=2, latent_dim=8, hidden_dim=16, cnn_channels=4, world_model=True)
    )
    return OnlineLearner(agent, OnlineConfig(batch_size=8, **cfg))


def batch_of(learner: OnlineLearner):  # noqa: ANN201
    return make_point_dataset(episodes=2, length=8, image_size=OBS[0]).sample(8, np.random.default_rng(0))


def training_state(learner: OnlineLearner) -> dict[str, torch.Tensor | float]:
    """Every number an update changes, flattened for comparison."""
    state = {f"agent.{k}": v.clone() for k, v in learner.agent.state_dict().items()}
    state |= {f"target.{k}": v.clone() for k, v in learner.target.state_dict().items()}
    for name in ("opt_critic", "opt_actor", "opt_alpha"):
        for i, s in getattr(learner, name).state_dict()["state"].items():
            state |= {f"{name}.{i}.{k}": torch.as_tensor(v).clone() for k, v in s.items()}
    return state | {"log_alpha": learner.log_alpha.detach().clone(), "updates": learner.updates}


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(torch.as_tensor(a[k]), torch.as_tensor(b[k])), k


def poisoned(learner: OnlineLearner, batch, how: str):  # noqa: ANN001, ANN201
    """An update that makes a real step, then breaks one thing: a loss, a gradient or a parameter."""

    def update() -> dict[str, float]:
        m = learner.update(batch)
        if how == "loss":
            m["online/loss_q_r"] = float("nan")
        elif how == "gradient":
            next(learner.agent.q_r.parameters()).grad[0] = float("inf")
        elif how == "parameter":
            with torch.no_grad():
                next(learner.agent.actor_on.parameters())[0] = float("nan")
        elif how == "alpha":
            with torch.no_grad():
                learner.log_alpha.fill_(float("-inf"))
        return m

    return update


@pytest.mark.parametrize("how", ["loss", "gradient", "parameter", "alpha"])
def test_a_non_finite_update_is_undone_to_the_last_finite_state(how: str) -> None:
    learner = small_learner()
    batch = batch_of(learner)
    guard = FiniteGuard(learner)
    assert guard.run(lambda: learner.update(batch)) is not None
    learner.observe_episode(50.0)  # λ moves between updates: a rollback keeps what it was before the update
    before, lam = training_state(learner), learner.lam
    for _ in range(2):  # twice in a row: the optimisers did not keep tensors of an earlier copy
        assert guard.run(poisoned(learner, batch, how)) is None
        assert_same_state(training_state(learner), before)
    assert guard.skipped == 2 and learner.lam == lam > 0 and guard.finite()
    assert guard.run(lambda: learner.update(batch)) is not None  # and training goes on
    assert learner.updates == 2


class StopAfter:
    """A stop event for ``DaemonLearner.run`` that is set after ``n`` looks at it."""

    def __init__(self, n: int) -> None:
        self.left = n

    def is_set(self) -> bool:
        self.left -= 1
        return self.left < 0

    def wait(self, timeout: float) -> bool:
        return self.is_set()


def daemon_learner(
    tmp_path: Path, ship, vpa_steps: int = 5
) -> tuple[DaemonLearner, list[BundleMessage], queue.SimpleQueue]:  # noqa: ANN001, E501
    learner = small_learner(
        replay=ReplayConfig(warmup_steps=8, offline_ratio=0.5),
        vpa=VPAConfig(steps=vpa_steps, batch_size=8, log_every=100),
        daemon=DaemonConfig(ship_every_s=0.0, ship_every_updates=2),
    )
    shipped: list[BundleMessage] = []
    inbox: queue.SimpleQueue = queue.SimpleQueue()
    dl = DaemonLearner(
        learner, StepReplay(1000, OBS, 2), make_point_dataset(episodes=4, length=8, image_size=OBS[0]),
        learner.cfg, ship, shipped.append, tmp_path / "latest.pt", MetricsWriter(None), inbox,
    )  # fmt: skip
    return dl, shipped, inbox


def fake_bundle(agent: Agent, step: int, metrics: dict[str, float]) -> BundleMessage:
    return BundleMessage(version=step + 1, parent=None, manifest=b"{}", signature=bytes(64), files={})


def robot_steps(seq: int, n: int = 8) -> tuple[Steps, list]:
    cols = synthetic_columns(n, seq * n, obs_shape=OBS)
    return Steps(robot_id="r", stream_id="s", seq=seq, first_step=seq * n, columns=cols), []


def test_no_bundle_ships_during_vpa_or_without_new_updates(tmp_path: Path) -> None:
    dl, shipped, inbox = daemon_learner(tmp_path, fake_bundle)
    dl.run(StopAfter(40))  # VPA's 5 updates, then idle: no robot data, so no SAC-Lag update
    assert dl.vpa is None and dl.grad_steps == 5 and dl.learner.updates == 0
    assert shipped == []  # the old daemon shipped here: its policy had changed by VPA alone
    for seq in range(3):
        inbox.put(robot_steps(seq))
    dl.run(StopAfter(60))
    updates = [b.version - 1 for b in shipped]
    assert dl.learner.updates >= 2 and updates and updates[0] >= 2
    assert all(b - a >= 2 for a, b in zip(updates, updates[1:], strict=False))  # never twice at one update
    assert updates[-1] <= dl.learner.updates


def test_skipped_updates_are_counted_in_the_status(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dl, _, inbox = daemon_learner(tmp_path, fake_bundle, vpa_steps=0)
    for seq in range(3):
        inbox.put(robot_steps(seq))
    real = dl.learner.update
    calls = iter(range(100))

    def every_other_update_breaks(batch):  # noqa: ANN001, ANN202
        m = real(batch)
        if next(calls) % 2:
            m["online/loss_actor"] = float("inf")
        return m

    monkeypatch.setattr(dl.learner, "update", every_other_update_breaks)
    dl.run(StopAfter(20))
    status = dl.status()
    assert status["skipped_nonfinite"] >= 3 and status["updates"] >= 3
    assert all(np.isfinite(v) for v in dl.last_metrics.values())
    text = format_status({"state": "running", "written_unix": 0, **status})
    assert f"skipped non-finite {status['skipped_nonfinite']}" in text


@pytest.mark.parametrize("breakage", ["parity", "non-finite"])
def test_a_bundle_that_fails_its_parity_check_or_is_not_finite_is_never_shipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, breakage: str
) -> None:
    import reachsafe.trainer.export.onnx as onnx_export

    shelf = BundleShelf(
        tmp_path / "run", Ed25519PrivateKey.generate(), lambda agent: {"threshold": 0.0}, keep=3
    )
    dl, shipped, _ = daemon_learner(tmp_path, shelf.ship, vpa_steps=0)
    assert dl.ship() and [b.version for b in shipped] == [1]
    if breakage == "parity":
        monkeypatch.setattr(onnx_export, "parity_error", lambda *a: 1.0)  # torch and ONNX disagree
    else:
        with torch.no_grad():
            next(dl.learner.agent.q_h.parameters())[0] = float("nan")
    assert not dl.ship()
    assert [b.version for b in shipped] == [1] and shelf.latest_version == 1
    assert sorted(p.name for p in (tmp_path / "run" / "bundles").iterdir()) == ["v000001"]
