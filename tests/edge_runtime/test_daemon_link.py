"""The runtime against the real trainer daemon (a subprocess), killed with -9 mid-stream and restarted:
the daemon's store ends up with every step of the robot's stream exactly once. A short variant runs
in `make test`, a longer one in `make test-all`."""

from __future__ import annotations

import shutil
import signal
import threading
from pathlib import Path

import pytest
from conftest import free_tcp_port, fresh_run, poll_until, start_daemon

from reachsafe.edge_runtime.config import EdgeConfig
from reachsafe.edge_runtime.runtime import EdgeRuntime
from reachsafe.hardware.factory import Robot
from tests.fixtures.edge_support import FakeCamera, FakeDrive, FakeSignals

OBS = (16, 16, 3)


@pytest.mark.parametrize(
    "before_kill, outage, after_restart",  # steps acked, ticks while the daemon is down, steps acked after
    [pytest.param(16, 25, 24, id="short"), pytest.param(64, 100, 100, id="long", marks=pytest.mark.slow)],
)  # the daemon starts twice either way (~4 s each); steps come at 50 Hz
def test_daemon_kill_9_mid_stream_every_step_exactly_once(
    processes, offline_run: Path, tmp_path: Path, before_kill: int, outage: int, after_restart: int
) -> None:  # noqa: ANN001
    from reachsafe.trainer.daemon.store import StepStore
    from tests.fixtures.stored_steps import stored_batches

    run = fresh_run(offline_run, tmp_path)
    keys = tmp_path / "robot_keys"  # the run's bundle key only: the daemon speaks plain loopback here
    keys.mkdir()
    shutil.copy(run / "keys" / "signing.pub", keys / "signing.pub")
    port = free_tcp_port()
    daemon = start_daemon(processes, run, port, "--vpa.enabled", "false")
    cfg = EdgeConfig(
        rate_hz=50.0, max_frame_age=1.0, state_dir=tmp_path / "state", spool_fsync=False, batch_size=8,
        batch_max_age=0.1, ack_timeout=1.0, drain_timeout=20.0,
    )  # fmt: skip
    runtime = EdgeRuntime(
        cfg,
        Robot(FakeCamera(OBS), FakeDrive(), FakeSignals(episode_len=40)),
        f"tcp://127.0.0.1:{port}",
        keys,
        run / "bundle",
    )
    stop = threading.Event()
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(runtime.run(stop)), daemon=True)
    thread.start()
    try:
        acked = lambda: runtime.metrics.counter("edge/uplink/steps_acked")  # noqa: E731
        poll_until(
            lambda: acked() >= before_kill or daemon.poll() is not None, 90, what="steps acked by the daemon"
        )
        assert daemon.poll() is None, processes.log(daemon)
        daemon.send_signal(signal.SIGKILL)  # mid-stream: batches in flight, some stored but not ACKed
        daemon.wait(10)
        at_kill = acked()
        poll_until(
            lambda: runtime.metrics.counter("edge/ticks") > outage + at_kill,
            20,
            what="ticks during the outage",
        )
        daemon = start_daemon(processes, run, port, "--vpa.enabled", "false")
        poll_until(lambda: acked() >= at_kill + after_restart, 90, what="steps acked after the restart")
    finally:
        stop.set()
        thread.join(60)
    assert result["all_acked"], result
    assert processes.stop(daemon, signal.SIGTERM, timeout=60) == 0
    store = StepStore(run / "online" / "steps")
    index = stored_batches(store)
    store.close()
    steps = sorted(
        first + i for robot, stream, first, n in index if stream == result["stream_id"] for i in range(n)
    )
    assert steps == list(range(result["stream_next_step"])), "lost or duplicated steps at the daemon"
