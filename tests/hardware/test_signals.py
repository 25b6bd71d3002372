"""Referee (ZeroMQ) and manual (keyboard on a pty) task signals."""

from __future__ import annotations

import os

import pytest
from conftest import poll_until

from reachsafe.hardware import DeviceTimeoutError, DeviceUnavailableError, Signals
from reachsafe.hardware.manual_signals import ManualSignals
from reachsafe.hardware.referee_signals import RefereePublisher, RefereeSignals


def connected(pub: RefereePublisher, sig: RefereeSignals) -> None:
    """Wait out the PUB/SUB join: heartbeat until the subscriber hears one."""

    def heard() -> bool:
        pub.publish(sig.robot_id)
        sig.read()
        return sig.counters["messages"] > 0

    poll_until(heard, 5.0, 0.01, "the referee subscription")


def total(sig, until, timeout=3.0) -> Signals:
    """Read repeatedly, summing, until `until(sum)` holds."""
    acc = {"reward": 0.0, "cost": 0.0, "terminated": False, "truncated": False}
    last: list[Signals] = []

    def step() -> bool:
        s = sig.read()
        last[:] = [s]
        acc["reward"] += s.reward
        acc["cost"] += s.cost
        acc["terminated"] |= s.terminated
        acc["truncated"] |= s.truncated
        return until(acc)

    poll_until(step, timeout, 0.005, "referee signals")
    return Signals(
        acc["reward"], acc["cost"], acc["terminated"], acc["truncated"], last[0].episode, last[0].estop
    )


def test_referee_sums_rewards_costs_and_ends_episodes() -> None:
    with RefereePublisher("tcp://127.0.0.1:*") as pub:
        with RefereeSignals(pub.endpoint, "r1", timeout_s=0) as sig:
            connected(pub, sig)
            pub.publish("r1", reward=1.0, cost=0.5)
            pub.publish("r10", reward=100.0)  # another robot sharing the prefix: ignored
            pub.publish("r1", reward=2.0, terminated=True)
            got = total(sig, lambda a: a["terminated"])
            assert (got.reward, got.cost, got.episode) == (3.0, 0.5, 1)
            assert sig.read() == Signals(0.0, 0.0, False, False, 1, False)
            pub.publish("r1", estop=True)
            assert total(sig, lambda a: True, 3.0) and poll_until(
                lambda: sig.read().estop, 3.0, 0.005, "estop"
            )


def test_referee_counts_bad_and_lost_messages_and_times_out() -> None:
    with RefereePublisher("tcp://127.0.0.1:*") as pub:
        with RefereeSignals(pub.endpoint, "r1", timeout_s=0.3) as sig:
            connected(pub, sig)
            pub._sock.send_multipart([b"r1", b"\xc1not msgpack"])
            pub._sock.send_multipart([b"r1", b"\x80"])  # an empty map
            pub._seq["r1"] += 4  # four messages the robot never sees
            pub.publish("r1", cost=1.0)
            total(sig, lambda a: a["cost"] == 1.0)
            assert (
                sig.metrics() | {"signals/bad_messages": 2.0, "signals/lost_messages": 4.0} == sig.metrics()
            )
            with pytest.raises(DeviceTimeoutError, match="silent"):
                poll_until(lambda: sig.read() and False, 3.0, 0.02)


def test_referee_over_curve_delivers_its_signals_to_the_admitted_robot_only(tmp_path) -> None:
    import zmq

    from reachsafe.protocol.keys import generate_keys

    keys = generate_keys(tmp_path / "keys")
    other = generate_keys(tmp_path / "other")
    with RefereePublisher(
        "tcp://127.0.0.1:*", curve_secret_key=keys["trainer.key_secret"], allowed_robot_keys=keys["robot.key"]
    ) as pub:
        assert pub._sock.getsockopt(zmq.MECHANISM) == zmq.CURVE
        server_key = str(keys["trainer.key"])
        sig = RefereeSignals(pub.endpoint, "r1", 0, str(keys["robot.key_secret"]), server_key)
        plain = RefereeSignals(pub.endpoint, "r1", 0)
        unknown = RefereeSignals(pub.endpoint, "r1", 0, str(other["robot.key_secret"]), server_key)
        with sig, plain, unknown:
            assert sig._sock.getsockopt(zmq.MECHANISM) == zmq.CURVE
            connected(pub, sig)
            pub.publish("r1", reward=1.5, cost=2.0, terminated=True)
            got = total(sig, lambda a: a["terminated"])
            assert (got.reward, got.cost, got.terminated, got.episode) == (1.5, 2.0, True, 1)

            def outsiders_heard() -> bool:  # the referee keeps publishing; they never hear a message
                pub.publish("r1", reward=1.0)
                plain.read()
                unknown.read()
                return bool(plain.counters["messages"] or unknown.counters["messages"])

            with pytest.raises(AssertionError, match="timed out"):
                poll_until(outsiders_heard, 1.0, 0.02)


def test_plain_referee_on_another_machine_is_refused() -> None:
    with pytest.raises(DeviceUnavailableError, match="CURVE"):
        RefereeSignals("tcp://10.1.2.3:5590", "r1").connect()


def test_manual_keys_from_a_terminal() -> None:
    master, slave = os.openpty()
    try:
        with ManualSignals(os.ttyname(slave)) as sig:
            os.write(master, b"rcc n")
            got = total(sig, lambda a: a["truncated"])
            assert (got.reward, got.cost, got.episode, got.estop) == (1.0, 2.0, 1, True)
            os.write(master, b"f ")
            got = total(sig, lambda a: a["terminated"])
            assert (got.episode, got.estop, got.truncated) == (2, False, False)
    finally:
        os.close(master)
        os.close(slave)


def test_manual_without_a_terminal_is_unavailable(tmp_path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(DeviceUnavailableError, match="not a terminal"):
        ManualSignals(str(tmp_path / "file")).connect()
