"""Nothing out of contract is stored (issue #24): the ingest server on a real socket rejects, with a
typed error naming the field, every batch whose values break the step record, whose first_step
jumps, or whose robot has not said HELLO for its stream; a rejected batch is never stored and never
ACKed, counted per robot and reason, and warned about at most once per robot and reason a window."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np
import pytest
import zmq
from conftest import poll_until

from reachsafe.protocol.codec import encode
from reachsafe.protocol.messages import Ack, ErrorMessage
from reachsafe.protocol.sockets import ServerCurve, client_socket, server_socket
from reachsafe.trainer.daemon.ingest import IngestServer
from reachsafe.trainer.daemon.status import LogThrottle
from reachsafe.trainer.daemon.store import StepStore
from tests.fixtures.ingest_server import OBS, hello, next_reply, running_ingest, steps_frame

NAN, INF = float("nan"), float("inf")

#: reason -> the column value that breaks the step record (docs/protocol.md section 5)
OUT_OF_CONTRACT = {
    "reward:nonfinite": {"reward": (1, NAN)},
    "cost:nonfinite": {"cost": (0, INF)},
    "cost:below_range": {"cost": (2, -0.25)},
    "action:nonfinite": {"action": ((1, 0), NAN)},
    "action:above_range": {"action": ((3, 1), 1.5)},
    "proposed:nonfinite": {"proposed": ((0, 1), -INF)},
    "proposed:below_range": {"proposed": ((2, 0), -1.001)},
    "t_obs:nonfinite": {"t_obs": (3, NAN)},
    "t_act:nonfinite": {"t_act": (1, -INF)},
    "policy:above_range": {"policy": (0, 3)},
    "bundle_version:below_range": {"bundle_version": (1, -2)},
    "episode:below_range": {"episode": (2, -1)},
}


def test_every_out_of_contract_column_is_rejected_with_its_name_never_stored_nor_acked(
    tmp_path: Path,
) -> None:
    with running_ingest(tmp_path) as (server, robot, seen):
        for reason, values in OUT_OF_CONTRACT.items():
            robot.send(steps_frame(0, **values))
            reply = next_reply(robot)
            column = reason.split(":")[0]
            assert isinstance(reply, ErrorMessage), (reason, reply)  # an error, not an ACK
            assert (reply.code, reply.ref_type) == ("contract", "steps") and f"'{column}'" in reply.message
        assert server.store.steps_stored == 0 and seen == []
        robot.send(steps_frame(0))  # the same seq, valid now: stored and ACKed
        assert next_reply(robot) == Ack(stream_id="s", seq=0)
        assert [b.seq for b in server.store.iter_batches()] == [0] and len(seen) == 1
        snap = server.snapshot()
        assert snap["robots"]["r"]["rejected"] == dict.fromkeys(OUT_OF_CONTRACT, 1)
        assert snap["errors_by_code"] == {"contract": len(OUT_OF_CONTRACT)}
        stored = seen[0].columns
        assert np.isfinite(stored["reward"]).all() and (stored["cost"] >= 0).all()


def test_a_jump_in_first_step_is_rejected_and_the_stream_goes_on_from_the_right_step(tmp_path: Path) -> None:
    with running_ingest(tmp_path) as (server, robot, seen):
        robot.send(steps_frame(0))
        assert next_reply(robot) == Ack(stream_id="s", seq=0)
        robot.send(steps_frame(1, first_step=9))  # steps 4..8 would be missing
        reply = next_reply(robot)
        assert isinstance(reply, ErrorMessage) and reply.code == "contract" and "first_step" in reply.message
        assert "seq 1 starts at step 9, but seq 0 ends at step 4" in reply.message
        assert next_reply(robot) == Ack(stream_id="s", seq=0)  # the cumulative ACK does not move
        robot.send(steps_frame(0, first_step=0))  # a resend is still a duplicate, ACKed again
        assert next_reply(robot) == Ack(stream_id="s", seq=0)
        robot.send(steps_frame(1))
        assert next_reply(robot) == Ack(stream_id="s", seq=1)
        assert [(m.seq, m.first_step) for m in seen] == [(0, 0), (1, 4)]
        assert server.snapshot()["robots"]["r"]["rejected"] == {"first_step:gap": 1}
        poll_until(lambda: server.duplicates == 1, 10, what="the resend counted as a duplicate")


def test_steps_without_a_hello_for_their_stream_are_rejected(tmp_path: Path) -> None:
    with running_ingest(tmp_path) as (server, robot, seen):
        other = client_socket(robot.context, zmq.DEALER, server.sock.last_endpoint.decode())
        try:
            other.send(steps_frame(0, robot="r2", stream="s2"))
            reply = next_reply(other)
            assert (
                isinstance(reply, ErrorMessage)
                and reply.code == "no_hello"
                and "send hello first" in reply.message
            )
            other.send(encode(hello("r2", "another-stream")))
            other.send(steps_frame(0, robot="r2", stream="s2"))
            reply = next_reply(other)
            assert (
                isinstance(reply, ErrorMessage)
                and reply.code == "no_hello"
                and "another-stream" in reply.message
            )
            assert server.store.steps_stored == 0
            other.send(encode(hello("r2", "s2")))
            other.send(steps_frame(0, robot="r2", stream="s2"))
            assert next_reply(other) == Ack(stream_id="s2", seq=0)
            assert server.snapshot()["robots"]["r2"]["rejected"] == {"no_hello": 2}
        finally:
            other.close(linger=0)


def test_rejection_warnings_are_throttled_per_robot_and_reason(tmp_path: Path, caplog) -> None:  # noqa: ANN001
    caplog.set_level(logging.WARNING, "reachsafe.trainer.daemon.ingest")
    with running_ingest(tmp_path) as (server, robot, _):
        for _ in range(30):
            robot.send(steps_frame(0, reward=(0, NAN)))
        robot.send(steps_frame(0, cost=(0, -1.0)))
        for _ in range(31):
            assert isinstance(next_reply(robot), ErrorMessage)
        poll_until(lambda: server.errors["contract"] == 31, 10, what="every rejection counted")
    lines = [r.getMessage() for r in caplog.records if "rejected a message from robot r" in r.getMessage()]
    assert (
        sum("reward:nonfinite" in line for line in lines) == 1
        and sum("cost:below_range" in line for line in lines) == 1
    )


def test_log_throttle_counts_what_it_held_back_and_reports_it_once_the_window_passed(caplog) -> None:  # noqa: ANN001
    log = logging.getLogger("test.throttle")
    caplog.set_level(logging.WARNING, "test.throttle")
    throttle = LogThrottle(log, every_s=0.2, max_keys=2)
    for i in range(58):
        throttle.warning(("r1", "cost:below_range"), "bad cost %d", i)
    throttle.warning(("r2", "no_hello"), "no hello")
    assert [r.getMessage() for r in caplog.records] == ["bad cost 0", "no hello"]

    def flushed() -> bool:
        throttle.flush()
        return len(caplog.records) == 3

    poll_until(flushed, 5, interval=0.05, what="the held-back lines reported")
    assert caplog.records[2].getMessage().startswith("bad cost 57 (and 56 more like it in the last")


def test_a_client_without_curve_keys_is_logged_and_counted(tmp_path: Path, keys: Path, caplog) -> None:  # noqa: ANN001
    """Its sends never go out (the spec says so); the trainer says why in its log and status."""
    caplog.set_level(logging.WARNING, "reachsafe.trainer.daemon.ingest")
    ctx = zmq.Context()
    curve = ServerCurve(ctx, keys / "trainer.key_secret", keys / "robot.key")
    router = server_socket(ctx, zmq.ROUTER, "tcp://127.0.0.1:*", curve=curve)
    store = StepStore(tmp_path / "st")
    server = IngestServer(router, store, OBS, 2, lambda m, eps: None)
    stop = threading.Event()
    thread = threading.Thread(target=server.serve, args=(stop,), kwargs={"poll_ms": 10})
    thread.start()
    plain = client_socket(ctx, zmq.DEALER, router.last_endpoint.decode())
    try:
        plain.send(encode(hello()), zmq.NOBLOCK)
        poll_until(
            lambda: server.snapshot()["handshake_failures"] >= 1, 10, what="the failed handshake counted"
        )
        assert any("security mechanism mismatch" in r.getMessage() for r in caplog.records)
        assert server.snapshot()["robots"] == {}
    finally:
        stop.set()
        thread.join(10)
        plain.close(linger=0)
        router.close(linger=0)
        curve.close()
        ctx.term()
        store.close()
    assert not thread.is_alive()


@pytest.mark.parametrize("values", [{}, {"bundle_version": (0, -1)}], ids=["valid", "no-bundle-yet"])
def test_valid_batches_pass(tmp_path: Path, values: dict) -> None:
    with running_ingest(tmp_path) as (_, robot, seen):
        robot.send(steps_frame(0, **values))
        assert next_reply(robot) == Ack(stream_id="s", seq=0) and len(seen) == 1
