"""The bridge's fault injection (`hw_fault`, `sim serve --faults`) over a real ROUTER socket: refused
unless allowed, validated, and reproducible by seed."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import msgpack
import numpy as np
import pytest
import zmq
from conftest import free_tcp_port, poll_until

from reachsafe.protocol.codec import decode, encode
from reachsafe.protocol.messages import ErrorMessage, HwFault, HwFrame, HwOk, HwReadFrame, Message
from reachsafe.sim_bridge.faults import HAZARD_GAP_M
from reachsafe.sim_bridge.layout import ROBOT_RADIUS
from reachsafe.sim_bridge.server import ServerConfig, SimServer, running


@contextmanager
def bridge(faults: bool = True) -> Iterator[tuple[SimServer, zmq.Socket]]:
    with running(ServerConfig(bind=f"tcp://127.0.0.1:{free_tcp_port()}", faults=faults)) as srv:
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(srv.endpoint)
        try:
            yield srv, sock
        finally:
            sock.close()


def ask(sock: zmq.Socket, msg: Message | bytes, timeout_s: float = 2.0) -> Message | None:
    """Send one request; its reply, or None if none came within ``timeout_s``."""
    sock.send(msg if isinstance(msg, bytes) else encode(msg))
    return decode(sock.recv()) if sock.poll(timeout_s * 1000) else None


def fault(kind: str, duration_s: float = 1.0, rate: float = 1.0, seed: int = 0) -> HwFault:
    return HwFault(robot="robot0", fault=kind, duration_s=duration_s, rate=rate, seed=seed)


def test_faults_are_refused_unless_the_server_allows_them() -> None:
    with bridge(faults=False) as (_, sock):
        reply = ask(sock, fault("partition"))
        assert isinstance(reply, ErrorMessage) and reply.code == "faults_disabled"
        assert "--faults" in reply.message
        assert isinstance(ask(sock, HwReadFrame(robot="robot0")), HwFrame)


def test_bad_fault_requests_are_answered_with_errors_and_the_server_serves_on() -> None:
    with bridge() as (srv, sock):
        for bad in (
            fault("partition", duration_s=-1),
            fault("partition", duration_s=math.nan),
            fault("drive_timeout", rate=2.0),
        ):
            reply = ask(sock, bad)
            assert isinstance(reply, ErrorMessage) and reply.code == "bad_fault", bad
        assert (
            ask(sock, HwFault(robot="nobody", fault="clear", duration_s=0, rate=1, seed=0)).code
            == "unknown_robot"
        )
        body = {
            "v": 1,
            "type": "hw_fault",
            "robot": "robot0",
            "fault": "meltdown",
            "duration_s": 1.0,
            "rate": 1.0,
            "seed": 0,
        }
        reply = ask(sock, msgpack.packb(body))
        assert isinstance(reply, ErrorMessage) and reply.code == "field" and "meltdown" in reply.message
        assert srv.errors == 5
        assert isinstance(ask(sock, HwReadFrame(robot="robot0")), HwFrame)


def dropped_pattern(seed: int, n: int = 16) -> list[bool]:
    """Which of n frame reads a half-rate partition leaves unanswered."""
    with bridge() as (_, sock):
        assert isinstance(ask(sock, fault("partition", duration_s=60, rate=0.5, seed=seed)), HwOk)
        pattern = [ask(sock, HwReadFrame(robot="robot0"), timeout_s=0.2) is None for _ in range(n)]
        assert isinstance(ask(sock, fault("clear")), HwOk)  # a fault request is never dropped
        assert isinstance(ask(sock, HwReadFrame(robot="robot0")), HwFrame)
    return pattern


def test_a_partition_drops_the_same_requests_for_the_same_seed() -> None:
    first = dropped_pattern(seed=3)
    assert 0 < sum(first) < len(first), first
    assert dropped_pattern(seed=3) == first
    assert dropped_pattern(seed=4) != first


def test_a_camera_stall_serves_an_ageing_frame_until_it_ends() -> None:
    with bridge() as (srv, sock):
        assert isinstance(ask(sock, fault("camera_stall", duration_s=0.5)), HwOk)
        first = ask(sock, HwReadFrame(robot="robot0"))
        later = poll_until(
            lambda: (f := ask(sock, HwReadFrame(robot="robot0"))).t_now - f.t_capture > 0.3 and f,
            timeout=5,
            what="the frame to age",
        )
        assert later.frame_id == first.frame_id
        fresh = poll_until(
            lambda: (f := ask(sock, HwReadFrame(robot="robot0"))).frame_id > first.frame_id and f,
            timeout=5,
            what="fresh frames after the stall",
        )
        assert fresh.t_now - fresh.t_capture < 0.2


def placed(seed: int) -> tuple[np.ndarray, float]:
    """Where a hazard fault with ``seed`` puts the robot (xy, yaw); checks it faces a hazard, the gap away."""
    with bridge() as (srv, sock):
        assert isinstance(ask(sock, fault("hazard", duration_s=0, seed=seed)), HwOk)
        nav = srv.robots["robot0"].env.unwrapped.nav_state()
    offsets = nav.hazards - nav.xy
    gaps = np.linalg.norm(offsets, axis=1) - nav.hazard_radii
    facing = offsets @ np.array([math.cos(nav.yaw), math.sin(nav.yaw)]) / np.linalg.norm(offsets, axis=1)
    ahead = np.isclose(facing, 1.0, atol=1e-6) & np.isclose(gaps, ROBOT_RADIUS + HAZARD_GAP_M, atol=1e-6)
    assert ahead.any(), (gaps, facing)
    assert np.all(gaps > ROBOT_RADIUS)  # clear of every hazard
    return nav.xy, nav.yaw


def test_a_hazard_fault_puts_the_robot_before_a_hazard_the_same_way_for_the_same_seed() -> None:
    xy, yaw = placed(seed=11)
    xy2, yaw2 = placed(seed=11)
    assert np.allclose(xy, xy2) and yaw == pytest.approx(yaw2)
    assert not np.allclose(placed(seed=12)[0], xy)
