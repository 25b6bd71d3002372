"""Soak (slow): 8 robots stream to a real daemon for minutes; its memory stays flat and every step is
stored exactly once."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
import zmq
from conftest import free_tcp_port, fresh_run, poll_until, start_daemon

from reachsafe.protocol.codec import decode, encode
from reachsafe.protocol.messages import Ack, Hello, Steps
from reachsafe.protocol.sockets import client_socket
from reachsafe.trainer.daemon.store import StepStore
from tests.fixtures.step_batches import synthetic_columns
from tests.fixtures.stored_steps import stored_batches

OBS = (16, 16, 3)
BATCH = 16
ROBOTS = 8
SOAK_S = float(os.environ.get("REACHSAFE_SOAK_S", "180"))


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def _robot(endpoint: str, name: str, deadline: float, sent: dict[str, int], errors: list[str]) -> None:
    """Send batches (at most 8 unACKed) until the deadline, then wait until all are ACKed."""
    ctx = zmq.Context()
    sock = client_socket(ctx, zmq.DEALER, endpoint)
    try:
        sock.send(encode(Hello(robot_id=name, stream_id="s", runtime_version="soak", bundle_version=1,
                               obs_shape=OBS, action_dim=2, resume_seq=0)))  # fmt: skip
        seq, acked, last_ack = 0, -1, time.monotonic()
        while time.monotonic() < deadline or acked < seq - 1:
            while time.monotonic() < deadline and seq - acked <= 8:
                cols = synthetic_columns(
                    BATCH, seq * BATCH, obs_shape=OBS, episode_len=50, seed=hash(name) % 1000
                )
                sock.send(
                    encode(Steps(robot_id=name, stream_id="s", seq=seq, first_step=seq * BATCH, columns=cols))
                )
                seq += 1
            if sock.poll(200):
                msg = decode(sock.recv())
                if isinstance(msg, Ack):
                    acked, last_ack = max(acked, msg.seq), time.monotonic()
            if time.monotonic() - last_ack > 30:
                errors.append(f"{name}: no ACK for 30 s at seq {acked}")
                return
        sent[name] = seq
    finally:
        sock.close(linger=0)
        ctx.term()


@pytest.mark.slow  # SOAK_S seconds (180 by default; REACHSAFE_SOAK_S overrides)
def test_eight_robots_for_minutes_memory_stays_flat_and_every_step_is_stored_once(
    processes, offline_run: Path, tmp_path: Path
) -> None:  # noqa: ANN001
    run = fresh_run(offline_run, tmp_path)
    port = free_tcp_port()
    daemon = start_daemon(processes, run, port, "--vpa.steps", "50", "--daemon.ship-every-s", "20")
    endpoint = f"tcp://127.0.0.1:{port}"
    poll_until(lambda: (run / "status.json").is_file(), 60, what="the daemon's first status")
    deadline = time.monotonic() + SOAK_S
    sent: dict[str, int] = {}
    errors: list[str] = []
    threads = [
        threading.Thread(target=_robot, args=(endpoint, f"robot{i}", deadline, sent, errors))
        for i in range(ROBOTS)
    ]
    for t in threads:
        t.start()
    rss: list[float] = []
    while any(t.is_alive() for t in threads):
        rss.append(_rss_mib(daemon.pid))
        time.sleep(1.0)  # a sampling period, not a wait for a condition
    for t in threads:
        t.join()
    assert not errors, errors
    assert processes.stop(daemon, signal.SIGTERM, timeout=120) == 0
    # memory: after the replay fills, the second half of the soak holds what the first half reached
    half = len(rss) // 2
    print(f"soak {SOAK_S:.0f} s, {sum(sent.values()) * BATCH} steps; daemon RSS MiB first half max "
          f"{max(rss[:half]):.0f}, second half max {max(rss[half:]):.0f}, last {rss[-1]:.0f}")  # fmt: skip
    assert max(rss[half:]) <= max(rss[:half]) * 1.15 + 64, f"RSS MiB grew: {rss[::10]}"
    store = StepStore(run / "online" / "steps")
    index = stored_batches(store)
    store.close()
    for name, n in sent.items():
        firsts = [first for robot, _, first, _ in index if robot == name]
        assert firsts == [seq * BATCH for seq in range(n)], f"{name}: lost or duplicated batches"
    assert len(sent) == ROBOTS and sum(sent.values()) > ROBOTS * 10
