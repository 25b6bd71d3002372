"""Selection parameters (κ_T, κ_c) travel with the bundle; the robot's config can still override them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from reachsafe.edge_runtime.bundles import BundleManager, BundleStore
from reachsafe.edge_runtime.config import EdgeConfig, RollbackConfig
from reachsafe.edge_runtime.inference import SessionOptions
from reachsafe.edge_runtime.loop import ControlLoop
from reachsafe.edge_runtime.metrics import Metrics
from reachsafe.edge_runtime.select import SelectionParams
from reachsafe.hardware.factory import Robot
from reachsafe.protocol.bundle import (
    DEFAULT_KAPPA_C,
    DEFAULT_KAPPA_T,
    MANIFEST_FILE,
    load_bundle,
    write_bundle,
)
from reachsafe.protocol.constants import POLICY_OFFLINE, POLICY_ONLINE
from reachsafe.protocol.errors import ManifestError
from reachsafe.protocol.keys import generate_keys, load_signing_key, load_trusted_keys
from reachsafe.trainer.algos.offline.config import OfflineConfig, SelectionConfig
from reachsafe.trainer.algos.online.config import ExpansionConfig
from reachsafe.trainer.export.onnx import build_bundle
from reachsafe.trainer.models.networks import Agent, AgentSpec, save_checkpoint
from reachsafe.trainer.runs.run_dir import RunDir
from tests.fixtures.edge_support import FakeCamera, FakeDrive, FakeSignals, make_test_bundle

FILLED = ("format", "protocol_version", "created", "files", "signer")


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    generate_keys(d)
    return load_signing_key(d / "signing.key"), load_trusted_keys(d / "signing.pub")


def resigned(src, dst, key, **changes):
    """The bundle in ``src`` with manifest fields changed (None: removed), signed again into ``dst``."""
    manifest = json.loads((src / MANIFEST_FILE).read_text())
    for k in FILLED:
        manifest.pop(k)
    for k, v in changes.items():
        if v is None:
            manifest.pop(k, None)
        else:
            manifest[k] = v
    return write_bundle(dst, manifest, {"agent.onnx": (src / "agent.onnx").read_bytes()}, key)


def test_selection_round_trips_is_optional_and_is_validated(keys, tmp_path) -> None:
    key, trusted = keys
    base = make_test_bundle(tmp_path / "base", key, 1)
    with_sel = resigned(base, tmp_path / "sel", key, selection={"kappa_t": 8.0, "kappa_c": 0.5})
    loaded = load_bundle(with_sel, trusted)
    assert loaded.manifest["selection"] == {"kappa_t": 8.0, "kappa_c": 0.5}
    assert SelectionParams.from_manifest(loaded.manifest) == SelectionParams(8.0, 0.5)
    old = load_bundle(base, trusted)  # written before selection travelled with bundles
    assert "selection" not in old.manifest
    assert SelectionParams.from_manifest(old.manifest) == SelectionParams(DEFAULT_KAPPA_T, DEFAULT_KAPPA_C)
    for bad in ({"kappa_t": 1.0}, {"kappa_t": "5", "kappa_c": 0.1}, {"kappa_t": -1.0, "kappa_c": 0.1}):
        with pytest.raises(ManifestError, match="selection"):
            resigned(base, tmp_path / "bad", key, selection=bad)


def test_the_trainer_defaults_are_what_robots_assume_for_bundles_without_selection() -> None:
    defaults = SelectionParams()
    assert (OfflineConfig().selection.kappa_t, OfflineConfig().selection.kappa_c) == (
        defaults.kappa_t,
        defaults.kappa_c,
    )
    assert (ExpansionConfig().kappa_t, ExpansionConfig().kappa_c) == (defaults.kappa_t, defaults.kappa_c)


def test_export_writes_selection_and_the_shield_section_from_the_run(keys, tmp_path) -> None:
    key, trusted = keys
    torch.manual_seed(0)
    agent = Agent(AgentSpec(obs_shape=(16, 16, 3), action_dim=2, latent_dim=8, hidden_dim=16, cnn_channels=4))
    run = RunDir(tmp_path / "run")
    shield = {"threshold": 0.4, "calibration": {"method": "quantile", "safe_intervention_rate": 0.05}}
    cfg = OfflineConfig(selection=SelectionConfig(kappa_t=7.0, kappa_c=0.3))
    save_checkpoint(run.latest, agent, 5, {"config": cfg.to_dict(), "shield": shield})
    m = load_bundle(build_bundle(run.root, tmp_path / "b", 2, 1, key).path, trusted).manifest
    assert m["selection"] == {"kappa_t": 7.0, "kappa_c": 0.3}
    assert m["shield"] == shield
    m = load_bundle(build_bundle(agent, tmp_path / "c", 1, None, key).path, trusted).manifest
    assert "selection" not in m and m["shield"] == {"threshold": 0.0}


def run_eval_ticks(policy, cfg: EdgeConfig, n: int = 5) -> list[int]:
    class Fixed:
        def at_tick_boundary(self):
            return policy

        def observe(self, step, inference_failed) -> None:
            pass

    robot = Robot(FakeCamera(), FakeDrive(), FakeSignals())
    robot.connect()
    sink: list = []

    class Sink:
        def add(self, step) -> None:
            sink.append(step)

    loop = ControlLoop(robot, Fixed(), Sink(), cfg, Metrics(), rng=np.random.default_rng(0))
    for _ in range(n):
        loop.tick()
    return [s.policy for s in sink]


def test_runtime_uses_the_bundles_kappas_unless_the_config_overrides_them(keys, tmp_path) -> None:
    key, trusted = keys
    # online: Q_r ≈ 3, Q_c ≈ 10; offline: ≈ 0, 0 → κ_c = 1 (the bundle's) picks offline, the default
    # κ_c = 0.1 and the override 0.01 pick online
    base = make_test_bundle(tmp_path / "base", key, 1, q_r_bias=(3.0, 0.0), q_c_bias=(10.0, 0.0))
    bundle = resigned(base, tmp_path / "v1", key, selection={"kappa_t": 5.0, "kappa_c": 1.0})
    manager = BundleManager(
        BundleStore(tmp_path / "store", trusted), (16, 16, 3), 2, "r0", SessionOptions(providers=("cpu",)),
        RollbackConfig(), Metrics(),
    )  # fmt: skip
    manager.load_initial(bundle)
    policy = manager.active
    assert policy.selection == SelectionParams(5.0, 1.0)
    base_cfg = {"rate_hz": 200.0, "max_frame_age": 1.0, "mode": "eval"}
    assert set(run_eval_ticks(policy, EdgeConfig(**base_cfg))) == {POLICY_OFFLINE}
    assert set(run_eval_ticks(policy, EdgeConfig(kappa_c=0.01, **base_cfg))) == {POLICY_ONLINE}
