"""The assembled runtime in-process: fake hardware, real onnxruntime, real ZeroMQ to a stub trainer."""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
from pathlib import Path

import pytest
from conftest import free_tcp_port, poll_until

from reachsafe.edge_runtime.config import EdgeConfig, RollbackConfig
from reachsafe.edge_runtime.runtime import EdgeRuntime
from reachsafe.hardware.factory import Robot
from reachsafe.protocol.bundle import load_bundle
from reachsafe.protocol.keys import generate_keys, load_signing_key, load_trusted_keys
from reachsafe.protocol.messages import BundleMessage, ErrorMessage
from tests.fixtures.edge_support import FakeCamera, FakeDrive, FakeSignals, StubTrainer, make_test_bundle


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, object]:
    generate_keys(tmp_path / "allkeys")
    robot_keys = tmp_path / "robot_keys"  # only the bundle key: the stub trainer speaks plain loopback
    robot_keys.mkdir()
    shutil.copy(tmp_path / "allkeys" / "signing.pub", robot_keys / "signing.pub")
    return robot_keys, load_signing_key(tmp_path / "allkeys" / "signing.key")


class Running:
    """An EdgeRuntime on a thread, stopped by the test."""

    def __init__(
        self, tmp_path: Path, keys_dir: Path, bundle: Path, trainer: StubTrainer, cfg: EdgeConfig, **sig_kw
    ) -> None:
        self.robot = Robot(FakeCamera(), FakeDrive(), FakeSignals(**sig_kw))
        self.runtime = EdgeRuntime(cfg, self.robot, trainer.endpoint, keys_dir, bundle)
        self.stop = threading.Event()
        self.summary: dict | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.summary = self.runtime.run(self.stop)

    def finish(self) -> dict:
        self.stop.set()
        self.thread.join(30)
        assert self.summary is not None
        return self.summary


def _cfg(tmp_path: Path, **kw) -> EdgeConfig:
    base = dict(
        rate_hz=100.0,
        max_frame_age=1.0,
        state_dir=tmp_path / "state",
        spool_fsync=False,
        batch_size=8,
        batch_max_age=0.1,
        heartbeat_interval=0.2,
        ack_timeout=1.0,
        drain_timeout=5.0,
    )
    base.update(kw)
    return EdgeConfig(**base)


def _message(path: Path) -> BundleMessage:
    return load_bundle(
        path, load_trusted_keys(path.parent.parent / "robot_keys" / "signing.pub")
    ).to_message()


def test_steps_flow_a_new_bundle_swaps_in_and_a_tampered_one_is_rejected(tmp_path, keys) -> None:
    keys_dir, signing = keys
    v1 = make_test_bundle(tmp_path / "b" / "v1", signing, 1)
    v2 = make_test_bundle(tmp_path / "b" / "v2", signing, 2, parent=1, seed=3)
    trainer = StubTrainer(free_tcp_port()).start()
    try:
        run = Running(tmp_path, keys_dir, v1, trainer, _cfg(tmp_path))
        poll_until(lambda: trainer.hellos and len(trainer.steps_of()) >= 16, 10, what="steps at the trainer")
        # the robot's own device counters travel in the heartbeat beside the runtime's metrics
        run.robot.drive.metrics = lambda: {"drive/link_losses": 3.0}
        beat = poll_until(
            lambda: next((h for h in trainer.heartbeats if "drive/link_losses" in h.metrics), None), 5,
            what="a heartbeat with device counters",
        )  # fmt: skip
        assert beat.metrics["drive/link_losses"] == 3.0 and "edge/ticks" in beat.metrics
        hello = trainer.hellos[0]
        assert (hello.robot_id, hello.bundle_version, hello.obs_shape, hello.action_dim) == (
            "robot0",
            1,
            (16, 16, 3),
            2,
        )

        tampered = _message(v2)
        files = dict(tampered.files)
        files["agent.onnx"] = files["agent.onnx"][:-1] + bytes([files["agent.onnx"][-1] ^ 1])
        trainer.push(
            "robot0",
            BundleMessage(tampered.version, tampered.parent, tampered.manifest, tampered.signature, files),
        )
        poll_until(lambda: trainer.statuses, 10, what="a bundle status")
        assert trainer.statuses[0].status == "rejected" and "sha256" in trainer.statuses[0].reason

        trainer.push("robot0", _message(v2))
        poll_until(lambda: any(s.status == "loaded" for s in trainer.statuses), 10, what="v2 loaded")
        poll_until(
            lambda: run.runtime.metrics.snapshot().get("edge/bundle_version") == 2, 5, what="swap to v2"
        )
        summary = run.finish()
    finally:
        trainer.stop()
    assert summary["bundle_versions_seen"] == [1, 2]
    assert summary["all_acked"] and summary["steps_acked"] == summary["steps_sent"] == summary["steps"]
    assert trainer.steps_of() == list(range(summary["steps"])) and trainer.duplicates == 0
    assert trainer.heartbeats and "edge/tick_ms_p99" in trainer.heartbeats[-1].metrics
    status = (tmp_path / "state" / "status.json").read_text()
    assert '"bundle_version": 2' in status


def _push_bad_v2_until_rolled_back(tmp_path: Path, keys, rollback: RollbackConfig, **v2_faults):
    """Run v1, push a v2 built with ``v2_faults``, wait until the runtime reports it rolled back.

    Returns (the runtime's summary, the stopped stub trainer with what it received)."""
    keys_dir, signing = keys
    v1 = make_test_bundle(tmp_path / "b" / "v1", signing, 1)
    v2 = make_test_bundle(tmp_path / "b" / "v2", signing, 2, parent=1, **v2_faults)
    trainer = StubTrainer(free_tcp_port()).start()
    try:
        run = Running(tmp_path, keys_dir, v1, trainer, _cfg(tmp_path, rollback=rollback))
        poll_until(lambda: trainer.hellos, 10, what="HELLO")
        trainer.push("robot0", _message(v2))
        poll_until(lambda: any(s.status == "rolled_back" for s in trainer.statuses), 15, what="rollback")
        return run.finish(), trainer
    finally:
        trainer.stop()


def test_a_trainer_that_lost_our_hello_gets_it_again(tmp_path, keys) -> None:
    keys_dir, signing = keys
    trainer = StubTrainer(free_tcp_port()).start()
    try:
        run = Running(
            tmp_path, keys_dir, make_test_bundle(tmp_path / "b", signing, 1), trainer, _cfg(tmp_path)
        )
        poll_until(lambda: trainer.hellos and trainer.steps_of(), 10, what="steps at the trainer")
        poll_until(lambda: len(trainer.steps_of()) >= 16, 10, what="two batches stored")  # connected, settled
        before = len(trainer.hellos)
        trainer.push("robot0", ErrorMessage(code="no_hello", message="say hello first", ref_type="steps"))
        poll_until(lambda: len(trainer.hellos) > before, 10, what="another HELLO")
        assert trainer.hellos[-1].stream_id == trainer.hellos[0].stream_id
        run.finish()
    finally:
        trainer.stop()


def test_unsafe_bundle_is_rolled_back_automatically(tmp_path, keys) -> None:
    # v2's Q_h says its own actions are unsafe: the shield intervenes on every step
    summary, trainer = _push_bad_v2_until_rolled_back(
        tmp_path, keys, RollbackConfig(window_steps=100, min_steps=20, max_intervention_rate=0.5),
        q_h_bias=(5.0, 5.0, -3.0, 1.0, 1.0),
    )  # fmt: skip
    assert summary["bundle_versions_seen"] == [1, 2, 1]
    assert 20 <= summary["interventions"] < 60
    rolled = next(s for s in trainer.statuses if s.status == "rolled_back")
    assert rolled.version == 2 and "intervention rate" in rolled.reason
    pointer = json.loads((tmp_path / "state" / "bundles" / "current.json").read_text())
    assert pointer["current"] == 1 and pointer["bad"] == [
        hashlib.sha256((tmp_path / "b" / "v2" / "manifest.json").read_bytes()).hexdigest()
    ]


def test_trainer_outage_loses_and_duplicates_nothing(tmp_path, keys) -> None:
    keys_dir, signing = keys
    v1 = make_test_bundle(tmp_path / "b" / "v1", signing, 1)
    port = free_tcp_port()
    trainer = StubTrainer(port).start()
    try:
        run = Running(tmp_path, keys_dir, v1, trainer, _cfg(tmp_path))
        poll_until(lambda: len(trainer.steps_of()) >= 16, 10, what="first steps")
        trainer.stop()
        sent_before = run.runtime.metrics.counter("edge/ticks")
        poll_until(
            lambda: run.runtime.metrics.counter("edge/ticks") > sent_before + 100,
            10,
            what="ticks during outage",
        )
        trainer.start()
        poll_until(
            lambda: run.runtime.metrics.snapshot().get("edge/unacked_steps", 1e9) < 20, 15, what="catch-up"
        )
        summary = run.finish()
    finally:
        trainer.stop()
    assert summary["all_acked"]
    assert trainer.steps_of() == list(range(summary["steps"]))


def test_install_rollback_and_status_commands_steer_a_running_runtime(tmp_path, keys, capsys) -> None:
    from reachsafe.cli import main as reachsafe

    keys_dir, signing = keys
    v1 = make_test_bundle(tmp_path / "b" / "v1", signing, 1)
    v2 = make_test_bundle(tmp_path / "b" / "v2", signing, 2, parent=1, seed=5)
    state = str(tmp_path / "state")
    trainer = StubTrainer(free_tcp_port()).start()
    try:
        run = Running(tmp_path, keys_dir, v1, trainer, _cfg(tmp_path))
        poll_until(lambda: trainer.hellos, 10, what="HELLO")
        bad = tmp_path / "b" / "bad"
        shutil.copytree(v2, bad)
        (bad / "agent.onnx").write_bytes(b"\0" + (bad / "agent.onnx").read_bytes())
        assert reachsafe(["edge", "install", str(bad), "--keys", str(keys_dir), "--state-dir", state]) == 1
        assert "rejected" in capsys.readouterr().err

        assert reachsafe(["edge", "install", str(v2), "--keys", str(keys_dir), "--state-dir", state]) == 0
        poll_until(
            lambda: run.runtime.metrics.snapshot().get("edge/bundle_version") == 2, 10, what="v2 from install"
        )
        assert reachsafe(["edge", "rollback", "--state-dir", state]) == 0
        poll_until(
            lambda: run.runtime.metrics.snapshot().get("edge/bundle_version") == 1, 10, what="rollback to v1"
        )
        status_file = tmp_path / "state" / "status.json"
        poll_until(
            lambda: status_file.exists() and '"bundle_version": 1,' in status_file.read_text(),
            5,
            what="status v1",
        )
        capsys.readouterr()
        assert reachsafe(["edge", "status", "--state-dir", state]) == 0
        out = capsys.readouterr().out
        assert "running" in out and "bundle v1" in out and "edge/tick_ms_p99" in out
        summary = run.finish()
    finally:
        trainer.stop()
    assert summary["bundle_versions_seen"] == [1, 2, 1]
    assert [s.status for s in trainer.statuses] == ["loaded", "rolled_back"]
    assert reachsafe(["edge", "rollback", "--state-dir", state]) == 1  # nothing older left to go back to


def test_nan_emitting_bundle_brakes_and_is_rolled_back(tmp_path, keys) -> None:
    # v2 passes verification and its warm-up (black frames) but emits NaN on every camera frame
    summary, trainer = _push_bad_v2_until_rolled_back(
        tmp_path, keys, RollbackConfig(window_steps=100, min_steps=20), nan_above=0.0
    )
    assert summary["bundle_versions_seen"] == [1, 2, 1]
    assert 20 <= summary["brakes"]["nonfinite"] < 60
    rolled = next(s for s in trainer.statuses if s.status == "rolled_back")
    assert "inference failure rate 1.000" in rolled.reason


def test_a_brake_refused_at_exit_is_a_warning_and_the_run_still_returns_its_summary(tmp_path, keys) -> None:
    from reachsafe.hardware.errors import DeviceTimeoutError

    keys_dir, signing = keys
    trainer = StubTrainer(free_tcp_port()).start()
    try:
        run = Running(
            tmp_path, keys_dir, make_test_bundle(tmp_path / "v1", signing, 1), trainer, _cfg(tmp_path)
        )
        poll_until(lambda: len(trainer.steps_of()) >= 8, 10, what="steps at the trainer")

        def gone() -> None:
            raise DeviceTimeoutError("the drive did not answer (server busy)")

        run.robot.drive._stop = gone  # e.g. a simulator that stopped answering before the robot
        summary = run.finish()
    finally:
        trainer.stop()
    assert summary["all_acked"] and summary["steps"] > 0
    assert len(summary["shutdown_warnings"]) == 2, summary["shutdown_warnings"]  # the brake, the release
    assert all("did not answer" in w for w in summary["shutdown_warnings"])


def test_the_sim_robot_name_is_the_robot_id_the_trainer_sees(tmp_path, keys, capsys) -> None:
    from reachsafe.cli import main
    from reachsafe.sim_bridge.server import ServerConfig, running

    keys_dir, signing = keys
    bundle = make_test_bundle(tmp_path / "v1", signing, 1, obs_shape=(64, 64, 3))
    trainer = StubTrainer(free_tcp_port()).start()
    sim = ServerConfig(bind=f"tcp://127.0.0.1:{free_tcp_port()}", robots=2, speed=4.0, episode_steps=10)
    args = [
        "edge", "run", "--bundle", str(bundle), "--trainer", trainer.endpoint, "--keys", str(keys_dir),
        "--rate", "80", "--max-frame-age", "0.5", "--batch-size", "4", "--batch-max-age", "0.1",
        "--state-dir", str(tmp_path / "state"), "--spool-fsync", "false",
        "--max-episodes", "1", "--summary", str(tmp_path / "summary.json"),
    ]  # fmt: skip
    try:
        with running(sim) as server:
            uri = f"sim:{server.endpoint}/robot1"
            assert main([*args, "--hardware", uri, "--robot-id", "robot0"]) == 2  # two names: refused
            assert "set the id once" in capsys.readouterr().err
            assert main([*args, "--hardware", uri]) == 0
    finally:
        trainer.stop()
    assert {h.robot_id for h in trainer.hellos} == {"robot1"}
    assert {rid for rid, _, _ in trainer.batches} == {"robot1"}
    assert json.loads((tmp_path / "state" / "status.json").read_text())["robot_id"] == "robot1"
