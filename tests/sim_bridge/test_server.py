"""The hardware server and the runtime's ``sim`` backend over real ZeroMQ sockets."""

from __future__ import annotations

import ipaddress
import logging
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import zmq
from conftest import free_tcp_port, poll_until

from reachsafe.hardware import (
    DeviceTimeoutError,
    DeviceUnavailableError,
    HardwareError,
    StaleFrameError,
    make_robot,
)
from reachsafe.hardware.sim import SimCamera, SimDrive
from reachsafe.protocol.codec import decode, encode
from reachsafe.protocol.errors import TransportSecurityError
from reachsafe.protocol.keys import generate_keys
from reachsafe.protocol.messages import ErrorMessage, HwDrive, HwReadSignals
from reachsafe.sim_bridge.server import ServerConfig, SignalLedger, SimServer, Totals, running


@pytest.fixture
def server() -> Iterator[SimServer]:
    """Two robots at 4x real time with 40-step episodes."""
    with running(
        ServerConfig(bind=f"tcp://127.0.0.1:{free_tcp_port()}", robots=2, speed=4.0, episode_steps=40)
    ) as srv:
        yield srv


def test_frames_arrive_fresh_with_increasing_ids(server: SimServer) -> None:
    with make_robot(f"sim:{server.endpoint}/robot1") as robot:
        assert robot.features["image_shape"] == (64, 64, 3)
        assert robot.features["rate_hz"] == pytest.approx(80.0)
        first = robot.camera.read_latest(max_age=0.5)
        assert first.image.shape == (64, 64, 3) and first.image.dtype == np.uint8
        assert first.age() >= 0.0
        later = poll_until(
            lambda: (f := robot.camera.read_latest(max_age=0.5)).frame_id > first.frame_id + 5 and f,
            timeout=5,
            what="new frames",
        )
        assert later.t > first.t
        # server time mapped to ours: a frame of an 80 Hz stream is young (generous bound: loaded CI)
        assert 0.0 <= later.age() < 0.5


def test_a_stalled_stream_gives_stale_frames() -> None:
    """At 1/20 of real time a frame comes every second: between frames the newest one goes stale."""
    with running(ServerConfig(bind=f"tcp://127.0.0.1:{free_tcp_port()}", speed=0.05)) as srv:
        with make_robot(f"sim:{srv.endpoint}") as robot:

            def stale() -> bool:
                try:
                    robot.camera.read_latest(max_age=0.3)
                except StaleFrameError as e:
                    return e.age > 0.3
                return False

            poll_until(stale, timeout=5, what="a stale frame")


def test_drive_moves_only_the_addressed_robot_and_stop_holds_it(server: SimServer) -> None:
    poses = lambda: {k: r.env.unwrapped.nav_state().xy.copy() for k, r in server.robots.items()}  # noqa: E731
    with make_robot(f"sim:{server.endpoint}/robot0") as robot:
        before = poses()
        robot.drive.apply(np.array([1.0, 0.0]))
        poll_until(
            lambda: np.linalg.norm(poses()["robot0"] - before["robot0"]) > 0.2,
            timeout=5,
            what="robot0 moving",
        )
        assert np.linalg.norm(poses()["robot1"] - before["robot1"]) < 1e-9
        robot.drive.stop()  # answered between steps by the stepping thread: later steps all brake
        halted = poses()["robot0"]
        frame_id = robot.camera.read_latest().frame_id
        poll_until(lambda: robot.camera.read_latest().frame_id > frame_id + 5, timeout=5, what="frames")
        assert np.linalg.norm(poses()["robot0"] - halted) < 1e-9


def test_signals_accumulate_between_reads_and_report_episode_ends(server: SimServer) -> None:
    with make_robot(f"sim:{server.endpoint}/robot0") as robot:
        env = server.robots["robot0"].env.unwrapped
        ns = env.nav_state()  # face the goal (the robot is at rest: no step moves it meanwhile)
        env.place_robot(ns.xy, float(np.arctan2(*(ns.goal_xy - ns.xy)[::-1])))
        robot.signals.read()
        robot.drive.apply(np.array([1.0, 0.0]))
        frame_id = robot.camera.read_latest().frame_id
        poll_until(lambda: robot.camera.read_latest().frame_id >= frame_id + 10, timeout=5, what="steps")
        s = robot.signals.read()  # the sum of >= 10 steps' progress (0.05 m each), not one step's
        assert s.reward > 0.3 and s.cost >= 0.0
        # 40-step episodes at 80 Hz: within a few seconds an episode ends and is reported once
        ends = []
        poll_until(
            lambda: ends.append(robot.signals.read()) or ends[-1].truncated, timeout=5, what="episode end"
        )
        assert ends[-1].episode >= 1
        assert not robot.signals.read().truncated  # flags clear after being read


def test_unknown_robot_is_refused_with_a_clear_error(server: SimServer) -> None:
    cam = SimCamera(server.endpoint, "robot9")
    with pytest.raises(HardwareError, match="unknown robot"):
        cam.connect()
    assert not cam.is_connected


def test_timeout_when_server_is_gone_then_recovery(processes) -> None:  # noqa: ANN001
    port = free_tcp_port()
    endpoint = f"tcp://127.0.0.1:{port}"
    args = ("sim", "serve", "--bind", endpoint, "--seed", "0")
    proc = processes.reachsafe(*args, name="sim")
    drive = SimDrive(endpoint, "robot0", timeout_s=0.3)

    def connected() -> bool:
        try:
            drive.connect()
        except DeviceTimeoutError:
            return False
        return True

    poll_until(connected, timeout=30, interval=0.1, what="sim server up")
    drive.apply(np.array([0.5, 0.0]))
    assert processes.stop(proc, signal.SIGTERM) == 0, processes.log(proc)
    t0 = time.monotonic()
    with pytest.raises(DeviceTimeoutError, match="did not answer"):
        drive.apply(np.array([0.5, 0.0]))
    assert time.monotonic() - t0 < 2.0  # the 0.3 s timeout, not a hang
    with pytest.raises(DeviceTimeoutError):
        drive.stop()
    # the server comes back on the same port: the same device works again (fresh socket)
    processes.reachsafe(*args, name="sim2")
    poll_until(lambda: _try(lambda: drive.apply(np.zeros(2))), timeout=30, interval=0.1, what="recovery")
    drive.disconnect()


def _try(fn) -> bool:  # noqa: ANN001
    try:
        fn()
    except DeviceTimeoutError:
        return False
    return True


def test_malformed_and_refused_requests_get_errors_and_the_server_keeps_running(server: SimServer) -> None:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.connect(server.endpoint)
    try:
        for payload, code in [
            (b"\xc1garbage", None),
            (encode(HwDrive(robot="robot0", action=np.zeros(3, dtype=np.float32))), "bad_action"),
            (encode(HwDrive(robot="robot0", action=np.array([np.nan, 0], dtype=np.float32))), "bad_action"),
        ]:
            sock.send(payload)
            assert sock.poll(2000), "no reply"
            reply = decode(sock.recv())
            assert isinstance(reply, ErrorMessage)
            assert code is None or reply.code == code
    finally:
        sock.close(linger=0)
    assert server.errors == 3
    with make_robot(f"sim:{server.endpoint}/robot0") as robot:
        robot.drive.apply(np.array([0.2, 0.0]))
        assert robot.camera.read_latest().image.shape == (64, 64, 3)


def test_signal_answers_are_kept_until_confirmed_repeated_and_merged_never_dropped() -> None:
    ledger = SignalLedger()

    def read(read_id: int, confirmed: int):  # noqa: ANN202
        return ledger.answer(HwReadSignals(robot="r", read_id=read_id, confirmed=confirmed), 0, 0, False)

    ledger.add(Totals(reward=1.0, cost=1.0))
    first = read(0, -1)
    assert (first.read_id, first.reward, first.cost) == (0, 1.0, 1.0)
    ledger.add(Totals(reward=2.0, truncated=True))
    assert read(0, -1) == first  # the reply was lost and the client asks again: the same answer
    lost = read(1, 0)  # confirms read 0; this reply is lost ...
    assert (lost.reward, lost.truncated) == (2.0, True)
    ledger.add(Totals(reward=4.0))
    carried = read(2, 0)  # ... and the client moved on without it: read 1 is carried into read 2
    assert (carried.reward, carried.cost, carried.truncated) == (6.0, 0.0, True)
    assert read(3, 2).reward == 0.0 and ledger.pending == Totals()


def test_a_slow_reset_is_declared_and_the_server_keeps_answering() -> None:
    cfg = ServerConfig(bind=f"tcp://127.0.0.1:{free_tcp_port()}", speed=4.0, episode_steps=10, reset_s=0.6)
    with running(cfg) as srv, make_robot(f"sim:{srv.endpoint}/robot0") as robot:
        end = poll_until(lambda: (s := robot.signals.read()).truncated and s, 5, 0.01, "an episode end")
        t_end = time.monotonic()
        assert end.resetting  # the episode ended and its reset began
        frame = robot.camera.read_latest(max_age=0.01)  # old, but declared: no StaleFrameError
        assert frame.resetting
        during = robot.signals.read()
        assert during.resetting and during.empty  # the world holds still while it resets
        fresh = poll_until(
            lambda: not (f := robot.camera.read_latest()).resetting and f, 5, 0.01, "the reset's end"
        )
        assert time.monotonic() - t_end > 0.3  # answered all along, not blocked for the reset
        assert fresh.frame_id > frame.frame_id and fresh.age() < 0.3


def _mixed_keys(tmp_path: Path, robot_from: Path, server_from: Path, name: str) -> Path:
    """A robot key folder with the robot key pair of one `keys generate` and the server key of another."""
    d = tmp_path / name
    d.mkdir()
    (d / "robot.key_secret").write_bytes((robot_from / "robot.key_secret").read_bytes())
    (d / "trainer.key").write_bytes((server_from / "trainer.key").read_bytes())
    return d


def test_sim_link_over_curve_serves_only_the_robot_key_it_admits(tmp_path, caplog) -> None:  # noqa: ANN001
    keys, other = tmp_path / "keys", tmp_path / "other"
    generate_keys(keys)
    generate_keys(other)
    cfg = ServerConfig(bind=f"tcp://127.0.0.1:{free_tcp_port()}", keys=keys)
    with running(cfg) as srv:
        assert srv._sock.getsockopt(zmq.MECHANISM) == zmq.CURVE
        with make_robot(f"sim:{srv.endpoint}/robot0?keys={keys}") as robot:
            assert robot.camera.read_latest().image.shape == (64, 64, 3)
            robot.drive.apply(np.array([0.5, 0.0]))
            assert robot.signals.read().episode == 0
        caplog.set_level(logging.WARNING, logger="reachsafe.protocol.sockets")
        refused = {
            "plain": "",
            "unknown robot key": f"&keys={_mixed_keys(tmp_path, other, keys, 'unknown_robot')}",
            "wrong server key": f"&keys={_mixed_keys(tmp_path, keys, other, 'wrong_server')}",
        }
        for what, query in refused.items():
            cam = make_robot(f"sim:{srv.endpoint}/robot0?timeout_s=0.3{query}").camera
            with pytest.raises(DeviceTimeoutError, match="did not answer"):
                cam.connect()  # never served: no handshake, no answer
            assert not cam.is_connected, what
    assert any("denied a client" in r.getMessage() for r in caplog.records)  # the ZAP allow-list ran


def _own_address() -> str | None:
    """This machine's IPv4 address on its default route, or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # a UDP connect sends nothing; it only picks the route
        except OSError:
            return None
        address = s.getsockname()[0]
    return None if ipaddress.ip_address(address).is_loopback else address


def test_off_loopback_the_sim_link_is_refused_plain_and_works_with_curve(tmp_path) -> None:  # noqa: ANN001
    host = _own_address()
    if host is None:
        pytest.skip("this machine has no non-loopback IPv4 address to serve the sim link on")
    endpoint = f"tcp://{host}:{free_tcp_port(host)}"
    with pytest.raises(TransportSecurityError, match="--keys DIR"):
        SimServer(ServerConfig(bind=endpoint))
    with pytest.raises(DeviceUnavailableError, match=r"\?keys=DIR"):  # a hint that can be followed
        make_robot(f"sim:{endpoint}/robot0").camera.connect()
    generate_keys(tmp_path / "keys")
    with running(ServerConfig(bind=endpoint, keys=tmp_path / "keys")) as srv:
        with make_robot(f"sim:{endpoint}/robot0?keys={tmp_path / 'keys'}") as robot:
            assert robot.camera.read_latest().frame_id >= 0
        assert srv.errors == 0
