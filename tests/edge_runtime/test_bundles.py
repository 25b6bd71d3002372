"""BundleManager's automatic rollback rule: over the threshold AND worse than the replaced bundle."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import poll_until

from reachsafe.edge_runtime.bundles import BundleManager, BundleStore
from reachsafe.edge_runtime.config import RollbackConfig
from reachsafe.edge_runtime.inference import SessionOptions
from reachsafe.edge_runtime.metrics import Metrics
from reachsafe.edge_runtime.steps import Step
from reachsafe.protocol.bundle import load_bundle
from reachsafe.protocol.keys import generate_keys, load_signing_key, load_trusted_keys
from tests.fixtures.edge_support import make_test_bundle


def _step(version: int, shielded: bool, cost: float = 0.0) -> Step:
    z = np.zeros(2, np.float32)
    return Step(
        np.zeros((16, 16, 3), np.uint8), z, z, 0.0, cost, False, False, 0, shielded, version, 0, 0.0, 0.0
    )


@pytest.fixture
def manager(tmp_path):
    generate_keys(tmp_path / "keys")
    key = load_signing_key(tmp_path / "keys" / "signing.key")
    trusted = load_trusted_keys(tmp_path / "keys" / "signing.pub")
    v1 = make_test_bundle(tmp_path / "v1", key, 1)
    v2 = make_test_bundle(tmp_path / "v2", key, 2, parent=1, seed=1)
    statuses = []
    m = BundleManager(
        BundleStore(tmp_path / "store", trusted), (16, 16, 3), 2, "r0", SessionOptions(providers=("cpu",)),
        RollbackConfig(window_steps=100, min_steps=50, max_intervention_rate=0.5, min_degradation=0.05),
        Metrics(), report=statuses.append,
    )  # fmt: skip
    m.load_initial(v1)
    m.start()
    yield m, load_bundle(v2, trusted).to_message(), statuses
    m.stop()


def _evenly(rate: float, n: int) -> list[bool]:
    """n flags, a `rate` fraction of them true, spread evenly (every prefix is close to `rate`)."""
    return [int((i + 1) * rate) > int(i * rate) for i in range(n)]


def _swap_to_v2(m: BundleManager, msg) -> None:
    m.submit(msg)
    poll_until(lambda: m.at_tick_boundary().version == 2, 10, what="v2 swapped in")


@pytest.mark.parametrize(
    ("old_rate", "new_rate", "rolled_back"),
    [(0.0, 0.9, True), (0.9, 0.9, False), (0.6, 0.9, True), (0.0, 0.4, False)],
)
def test_rollback_only_when_over_threshold_and_worse_than_before(
    manager, old_rate, new_rate, rolled_back
) -> None:
    m, msg, statuses = manager
    for s in _evenly(old_rate, 100):
        m.observe(_step(1, s))
    _swap_to_v2(m, msg)
    for s in _evenly(new_rate, 100):
        m.observe(_step(2, s))
    if rolled_back:
        poll_until(lambda: m.at_tick_boundary().version == 1, 10, what="rollback to v1")
        assert statuses[-1].status == "rolled_back"
    else:
        assert m.metrics.counter("edge/bundles/rollback_requests") == 0
        assert m.at_tick_boundary().version == 2 and statuses[-1].status == "loaded"
