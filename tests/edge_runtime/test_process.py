"""Real processes: the sim server and `reachsafe edge run`, against a de-duplicating stub trainer.

kill -9 of the runtime while it streams (plus a torn final spool record, as when the kill lands
mid-write), then a restart ended by SIGTERM: the trainer ends up with every spooled step exactly once."""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

from conftest import free_tcp_port, poll_until

from reachsafe.protocol.keys import generate_keys, load_signing_key
from tests.fixtures.edge_support import StubTrainer, make_test_bundle


def _edge_args(tmp_path: Path, bundle: Path, trainer: StubTrainer, sim_port: int, *extra: str) -> list[str]:
    return [
        "edge", "run",
        "--bundle", str(bundle),
        "--trainer", trainer.endpoint,
        "--hardware", f"sim:tcp://127.0.0.1:{sim_port}",
        "--rate", "20",
        "--keys", str(tmp_path / "robot_keys"),
        "--spool", str(tmp_path / "spool"),
        "--state-dir", str(tmp_path / "state"),
        "--batch-size", "4",
        "--batch-max-age", "0.1",
        "--max-frame-age", "0.5",
        *extra,
    ]  # fmt: skip


def test_kill_9_mid_stream_then_restart_gives_every_step_exactly_once(tmp_path, processes) -> None:
    generate_keys(tmp_path / "keys")
    (tmp_path / "robot_keys").mkdir()
    shutil.copy(tmp_path / "keys" / "signing.pub", tmp_path / "robot_keys" / "signing.pub")
    bundle = make_test_bundle(
        tmp_path / "bundle", load_signing_key(tmp_path / "keys" / "signing.key"), 1, obs_shape=(64, 64, 3)
    )
    sim_port = free_tcp_port()
    sim = processes.reachsafe(
        "sim", "serve", "--bind", f"tcp://127.0.0.1:{sim_port}", "--seed", "0", name="sim"
    )
    trainer = StubTrainer(free_tcp_port()).start()
    try:
        edge = processes.reachsafe(*_edge_args(tmp_path, bundle, trainer, sim_port), name="edge1")
        poll_until(
            lambda: len(trainer.steps_of()) >= 24 or edge.poll() is not None, 60, what="steps before the kill"
        )
        assert edge.poll() is None, processes.log(edge)
        trainer.ack = False  # the trainer stores but stops ACKing: unacked batches pile up in the spool
        n0 = len(trainer.steps_of())
        poll_until(
            lambda: list((tmp_path / "spool").glob("seg-*.log")) and len(trainer.steps_of()) >= n0 + 8,
            30,
            what="unacked batches stored by the trainer and kept in the spool",
        )
        edge.send_signal(signal.SIGKILL)
        edge.wait(10)
        before = len(trainer.steps_of())
        segments = sorted((tmp_path / "spool").glob("seg-*.log"))
        with open(segments[-1], "ab") as f:  # what a kill during the write leaves behind
            f.write((5000).to_bytes(4, "little") + b"\x01\x02\x03\x04" + b"\x00" * 1000)

        trainer.ack = True
        summary_path = tmp_path / "summary.json"
        edge2 = processes.reachsafe(
            *_edge_args(tmp_path, bundle, trainer, sim_port, "--summary", str(summary_path)), name="edge2"
        )
        poll_until(
            lambda: len(trainer.steps_of()) >= before + 40 or edge2.poll() is not None,
            60,
            what="steps after restart",
        )
        assert processes.stop(edge2, signal.SIGTERM) == 0, processes.log(edge2)  # brake, flush, drain, exit 0
    finally:
        trainer.stop()
        processes.stop(sim)
    log2 = processes.log(edge2)
    assert "torn or corrupt record" in log2
    summary = json.loads(summary_path.read_text())
    assert summary["all_acked"] and summary["steps"] > 20
    stored = trainer.steps_of()
    assert len(stored) > before and trainer.duplicates > 0  # unacked batches were re-sent and de-duplicated
    assert stored == list(range(summary["stream_next_step"])), "lost or duplicated steps"
    assert "edge summary:" in log2 and "SIGTERM: stopping" in log2 and "brake (shutdown" in log2


def test_stalled_robot_brakes_and_the_runtime_recovers(tmp_path, processes) -> None:
    """SIGSTOP the sim server (camera, drive and signals all stall), then SIGCONT it; then stop it
    again and stop the runtime: the brake at exit times out, which is a warning, not a failed run."""
    generate_keys(tmp_path / "keys")
    (tmp_path / "robot_keys").mkdir()
    shutil.copy(tmp_path / "keys" / "signing.pub", tmp_path / "robot_keys" / "signing.pub")
    key = load_signing_key(tmp_path / "keys" / "signing.key")
    bundle = make_test_bundle(tmp_path / "bundle", key, 1, obs_shape=(64, 64, 3))
    sim_port = free_tcp_port()
    sim = processes.reachsafe(
        "sim", "serve", "--bind", f"tcp://127.0.0.1:{sim_port}", "--seed", "0", name="sim"
    )
    trainer = StubTrainer(free_tcp_port()).start()
    summary_path = tmp_path / "summary.json"
    try:
        edge = processes.reachsafe(
            *_edge_args(tmp_path, bundle, trainer, sim_port, "--summary", str(summary_path)), name="edge"
        )
        poll_until(lambda: len(trainer.steps_of()) >= 20 or edge.poll() is not None, 60, what="steps")
        assert edge.poll() is None, processes.log(edge)
        sim.send_signal(signal.SIGSTOP)
        poll_until(
            lambda: "brake (camera_error" in processes.log(edge), 10, what="a brake on the stalled camera"
        )
        sim.send_signal(signal.SIGCONT)
        resumed = len(trainer.steps_of())
        poll_until(lambda: len(trainer.steps_of()) >= resumed + 20, 30, what="steps after the stall")
        sim.send_signal(signal.SIGSTOP)
        assert processes.stop(edge, signal.SIGTERM) == 0, processes.log(edge)
    finally:
        sim.send_signal(signal.SIGCONT)
        trainer.stop()
        processes.stop(sim)
    summary = json.loads(summary_path.read_text())
    assert summary["shutdown_warnings"] and "did not answer" in summary["shutdown_warnings"][0]
    assert "cannot start" not in processes.log(edge)
    assert summary["brakes"]["camera_error"] >= 1 and summary["brakes"]["watchdog"] >= 1
    assert summary["deadline_misses"] >= 1
    assert summary["all_acked"] and trainer.steps_of() == list(range(summary["stream_next_step"]))
