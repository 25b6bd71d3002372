"""The trainer daemon as a real subprocess on a free port, with a DEALER client standing in for a robot."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from pathlib import Path

import msgpack
import numpy as np
import pytest
import zmq
from conftest import REPO, free_tcp_port, fresh_run, poll_until, start_daemon

from reachsafe.protocol.codec import decode, encode
from reachsafe.protocol.constants import ARRAY_EXT_TYPE
from reachsafe.protocol.messages import Ack, BundleMessage, ErrorMessage, Hello, Message, Steps
from reachsafe.protocol.sockets import client_socket
from reachsafe.trainer.algos.online.config import OnlineConfig, ReplayConfig, VPAConfig
from reachsafe.trainer.daemon.ingest import IngestServer
from reachsafe.trainer.daemon.learner import DaemonLearner
from reachsafe.trainer.daemon.serve import EXIT_THREAD_FAILED, serve
from reachsafe.trainer.daemon.store import StepStore
from tests.fixtures.hostile_frames import deep_heartbeat
from tests.fixtures.step_batches import synthetic_columns
from tests.fixtures.stored_steps import stored_batches

OBS = (16, 16, 3)
BATCH = 8


class Robot:
    """A DEALER speaking the trainer link like a runtime would."""

    def __init__(self, ctx: zmq.Context, endpoint: str, robot_id: str = "r1", stream_id: str = "s1") -> None:
        self.sock = client_socket(ctx, zmq.DEALER, endpoint)
        self.robot_id, self.stream_id = robot_id, stream_id

    def send(self, msg: Message | bytes) -> None:
        self.sock.send(msg if isinstance(msg, bytes) else encode(msg))

    def hello(self, resume_seq: int = 0) -> None:
        self.send(Hello(robot_id=self.robot_id, stream_id=self.stream_id, runtime_version="test", bundle_version=1,
                        obs_shape=OBS, action_dim=2, resume_seq=resume_seq))  # fmt: skip

    def steps(self, seq: int) -> Steps:
        return Steps(robot_id=self.robot_id, stream_id=self.stream_id, seq=seq, first_step=seq * BATCH,
                     columns=synthetic_columns(BATCH, seq * BATCH, obs_shape=OBS, episode_len=20))  # fmt: skip

    def recv(self, timeout_s: float = 10.0) -> Message | None:
        if not self.sock.poll(int(timeout_s * 1000)):
            return None
        return decode(self.sock.recv())

    def recv_until(self, pred, timeout_s: float = 15.0) -> Message:  # noqa: ANN001
        return poll_until(
            lambda: (lambda m: m if m is not None and pred(m) else None)(self.recv(0.2)), timeout_s
        )

    def close(self) -> None:
        self.sock.close(linger=0)


def test_daemon_acks_dedupes_and_exits_cleanly(processes, offline_run: Path, tmp_path: Path) -> None:  # noqa: ANN001
    run = fresh_run(offline_run, tmp_path)
    port = free_tcp_port()
    daemon = start_daemon(processes, run, port, "--daemon.ship-every-updates", "5", "--vpa.steps", "3")
    ctx = zmq.Context()
    robot = Robot(ctx, f"tcp://127.0.0.1:{port}")
    try:
        robot.hello()
        for seq in range(4):
            robot.send(robot.steps(seq))
        ack = robot.recv_until(lambda m: isinstance(m, Ack) and m.seq == 3, 60.0)
        assert ack.stream_id == "s1"
        robot.send(robot.steps(1))  # a resend of an ACKed batch: stored once, ACKed again
        robot.recv_until(lambda m: isinstance(m, Ack) and m.seq == 3)
        for seq in range(4, 8):
            robot.send(robot.steps(seq))
        robot.recv_until(lambda m: isinstance(m, Ack) and m.seq == 7)
        bundle = robot.recv_until(lambda m: isinstance(m, BundleMessage), 60.0)
        assert bundle.version >= 2 and bundle.parent == bundle.version - 1
        # status.json is a periodic snapshot: wait for one taken after all eight batches were stored
        status = poll_until(
            lambda: _status_if(
                run,
                lambda s: s.get("duplicates") == 1 and s["updates"] > 0 and s["steps_stored"] >= 8 * BATCH,
            ),
            20.0,
            what="a status with the resend counted, an update made and all eight batches stored",
        )
        assert status["steps_stored"] == 8 * BATCH  # the resend was not stored twice
        assert status["robots"]["r1"]["steps"] == 8 * BATCH
        out = subprocess.run([sys.executable, "-m", "reachsafe", "daemon", "status", "--run", str(run)],
                             capture_output=True, text=True, cwd=REPO, timeout=60)  # fmt: skip
        assert out.returncode == 0 and "r1" in out.stdout and "lambda" in out.stdout, out.stdout + out.stderr
    finally:
        robot.close()
        ctx.term()
    assert processes.stop(daemon, signal.SIGTERM, timeout=60) == 0, processes.log(daemon)
    assert (run / "online" / "latest.pt").is_file()
    final = json.loads((run / "status.json").read_text())
    assert final["state"] == "stopped"
    kept = sorted(p.name for p in (run / "bundles").iterdir())
    assert len(kept) <= 5 and kept[-1] == f"v{final['bundle_version']:06d}"
    # --resume: same updates, λ state and bundle chain; the store's steps are back in the replay
    (run / "status.json").unlink()
    daemon = start_daemon(processes, run, free_tcp_port(), "--resume")
    resumed = poll_until(lambda: _status_if(run, lambda s: s["state"] == "running"), 60.0)
    assert processes.stop(daemon, signal.SIGTERM, timeout=60) == 0, processes.log(daemon)
    assert resumed["updates"] >= final["updates"] and resumed["phase"] == "online"
    assert resumed["bundle_version"] == final["bundle_version"] and resumed["steps_stored"] == 8 * BATCH
    assert resumed["replay_transitions"] > 0


def _status_if(run: Path, pred) -> dict | None:  # noqa: ANN001
    try:
        s = json.loads((run / "status.json").read_text())
    except (OSError, ValueError):
        return None
    return s if pred(s) else None


def _raw(body: dict) -> bytes:
    return msgpack.packb(body, use_bin_type=True)


def test_malformed_messages_get_typed_errors_and_daemon_keeps_serving(
    processes, offline_run: Path, tmp_path: Path
) -> None:  # noqa: ANN001
    run = fresh_run(offline_run, tmp_path)
    port = free_tcp_port()
    daemon = start_daemon(processes, run, port, "--vpa.enabled", "false")
    ctx = zmq.Context()
    robot = Robot(ctx, f"tcp://127.0.0.1:{port}", robot_id="bad", stream_id="x")
    good = encode(robot.steps(0))
    huge_array = msgpack.ExtType(
        ARRAY_EXT_TYPE, bytes([1, 5]) + b"uint8" + (1 << 40).to_bytes(8, "little") + bytes(1)
    )
    cases = {
        "decode": good[: len(good) // 2],  # truncated msgpack
        "field": _raw(
            {
                "v": 1,
                "type": "steps",
                "robot_id": 7,
                "stream_id": "x",
                "seq": "zero",
                "first_step": 0,
                "columns": {},
            }
        ),  # fmt: skip
        "version": _raw({"v": 99, "type": "hello"}),
        "unknown_type": _raw({"v": 1, "type": "launch_missiles"}),
        "int_range": _raw(
            {**msgpack.unpackb(good, ext_hook=msgpack.ExtType), "seq": 2**63}
        ),  # killed it: #24
        "depth": deep_heartbeat(1000),  # killed it too
        "oversize": _raw(
            {
                "v": 1,
                "type": "steps",
                "robot_id": "bad",
                "stream_id": "x",
                "seq": 0,
                "first_step": 0,
                "columns": {"obs": huge_array},
            }
        ),  # fmt: skip
    }
    try:
        for code, frame in cases.items():
            robot.send(frame)
            err = robot.recv_until(lambda m: isinstance(m, ErrorMessage), 60.0)
            assert err.code == code, (code, err)
        robot.hello()
        wrong_shape = Steps(robot_id="bad", stream_id="x", seq=0, first_step=0,
                            columns=synthetic_columns(4, 0, obs_shape=(8, 8, 3)))  # fmt: skip
        robot.send(wrong_shape)
        assert robot.recv_until(lambda m: isinstance(m, ErrorMessage)).code == "field"
        robot.send(good)  # the daemon still serves
        assert robot.recv_until(lambda m: isinstance(m, Ack)).seq == 0
        status = poll_until(lambda: _status_if(run, lambda s: s["errors"] >= 8), 10.0)
        assert status["errors_by_code"]["field"] >= 2 and status["robots"]["bad"]["rejected"] == {"field": 1}
    finally:
        robot.close()
        ctx.term()
    assert processes.stop(daemon, signal.SIGTERM, timeout=60) == 0


def test_kill9_mid_stream_loses_and_duplicates_nothing(processes, offline_run: Path, tmp_path: Path) -> None:  # noqa: ANN001
    run = fresh_run(offline_run, tmp_path)
    port = free_tcp_port()
    n_batches, window = 60, 6
    daemon = start_daemon(processes, run, port, "--vpa.enabled", "false")
    ctx = zmq.Context()
    robot = Robot(ctx, f"tcp://127.0.0.1:{port}")
    frames = {seq: encode(robot.steps(seq)) for seq in range(n_batches)}
    acked, sent, killed = -1, 0, False
    try:
        robot.hello()
        while acked < n_batches - 1:
            while sent < n_batches and sent - acked <= window:
                robot.send(frames[sent])
                sent += 1
            msg = robot.recv(0.5)
            if isinstance(msg, Ack):
                acked = max(acked, msg.seq)
            if not killed and acked >= n_batches // 3:
                daemon.send_signal(signal.SIGKILL)  # mid-stream: batches are in flight
                daemon.wait(10)
                killed = True
                daemon = start_daemon(processes, run, port, "--vpa.enabled", "false")
                robot.hello(resume_seq=acked + 1)
                sent = acked + 1  # resend everything not ACKed, like the runtime's spool
            elif msg is None and killed:
                robot.hello(resume_seq=acked + 1)
                sent = acked + 1
    finally:
        robot.close()
        ctx.term()
    assert killed
    assert processes.stop(daemon, signal.SIGTERM, timeout=60) == 0
    store = StepStore(run / "online" / "steps")
    index = stored_batches(store)
    store.close()
    steps = sorted(first + i for _, _, first, n in index for i in range(n))
    assert steps == list(range(n_batches * BATCH)), "every step exactly once"
    assert np.all(np.diff([first for _, _, first, _ in index]) == BATCH)


@pytest.mark.timeout(120)  # it must also stop: a socket left open once hung its ctx.term()
@pytest.mark.parametrize("thread", ["ingest", "learner", "hung learner"])
def test_a_failing_thread_stops_the_daemon_with_a_non_zero_exit_status(
    offline_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, thread: str
) -> None:
    """A fatal error in a thread, or a thread that does not stop, must end the daemon with a status that
    makes its supervisor restart it (issue #24: the daemon exited 0)."""
    from reachsafe.trainer.daemon import serve as serve_module

    release = threading.Event()

    def fatal(*args: object, **kwargs: object) -> None:
        if thread == "hung learner":
            release.wait(60)
        raise RuntimeError(f"injected fatal error in the {thread} thread")

    monkeypatch.setattr(*{"ingest": (IngestServer, "serve")}.get(thread, (DaemonLearner, "run")), fatal)
    monkeypatch.setattr(serve_module, "JOIN_TIMEOUT_S", 0.5)
    run = fresh_run(offline_run, tmp_path)
    cfg = OnlineConfig(batch_size=16, replay=ReplayConfig(warmup_steps=8), vpa=VPAConfig(enabled=False))
    stop = threading.Event()
    if thread == "hung learner":
        threading.Timer(1.0, stop.set).start()  # an operator's SIGTERM
    try:
        assert serve(cfg, run, f"tcp://127.0.0.1:{free_tcp_port()}", stop=stop) == EXIT_THREAD_FAILED == 1
    finally:
        release.set()
    assert json.loads((run / "status.json").read_text())["state"] == "failed"
