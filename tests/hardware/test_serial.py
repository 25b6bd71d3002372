"""The serial differential drive against a fake motor controller over a pty pair."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
import tty
from functools import reduce

import numpy as np
import pytest
from conftest import REPO, poll_until
from fakes.diffdrive import FakeController

from reachsafe.hardware import DeviceTimeoutError, DeviceUnavailableError
from reachsafe.hardware.serial_drive import SerialDrive, encode_line, parse_line, wheel_speeds


@pytest.fixture
def controller(tmp_path):
    ctl = FakeController(tmp_path / "ttyROBOT")
    yield ctl
    ctl.close()


def make_drive(controller, **kw) -> SerialDrive:
    opts = dict(
        controller_timeout_ms=200, keepalive_s=0.05, reply_timeout_s=0.3, reconnect_s=0.05, boot_wait_s=0.3
    )
    opts |= kw
    return SerialDrive(str(controller.link), **opts)


def test_line_format_and_checksum() -> None:
    body = b"D,7,150,-150"
    assert encode_line("D", 7, 150, -150) == b"$" + body + b"*%02X\n" % reduce(lambda a, b: a ^ b, body)
    assert parse_line(
        b"$A,7,150,-150,0*" + b"%02X" % reduce(lambda a, b: a ^ b, b"A,7,150,-150,0")
    ).fields == (
        "7",
        "150",
        "-150",
        "0",
    )
    assert parse_line(b"$A,7,150,-150,0*00") is None
    assert parse_line(b"garbage") is None


def test_action_to_wheel_speeds() -> None:
    args = (300.0, 3.0, 160.0)
    assert wheel_speeds(np.array([0.5, 0.0]), *args) == (150, 150)
    assert wheel_speeds(np.array([0.0, 1.0]), *args) == (-240, 240)  # counter-clockwise spin
    left, right = wheel_speeds(np.array([1.0, 1.0]), *args)  # would be (60, 540): scaled to the cap
    assert right == 300 and left == 33


def test_handshake_drive_and_stop_on_disconnect(controller) -> None:
    drive = make_drive(controller)
    with drive:
        assert controller.kinds()[0] == "H" and controller.timeout_ms == 200
        drive.apply(np.array([0.5, 0.0]))
        poll_until(lambda: controller.speeds == (150, 150), 2.0, 0.005, "wheel speeds at the controller")
        poll_until(lambda: drive.applied == (150, 150), 2.0, 0.005, "the ack's telemetry")
    assert controller.kinds()[-1] == "S" and controller.speeds == (0, 0)
    assert not drive.is_connected


def test_controller_timeout_stops_motors_despite_keepalives(controller) -> None:
    with make_drive(controller) as drive:
        drive.apply(np.array([1.0, 0.0]))
        poll_until(lambda: controller.speeds == (300, 300), 2.0, 0.005, "motion")
        t_cmd = time.monotonic()
        poll_until(lambda: controller.timeout_stops, 2.0, 0.005, "the controller's timeout stop")
        assert 0.18 < controller.timeout_stops[0] - t_cmd < 0.5
        assert controller.speeds == (0, 0)
        assert controller.kinds().count("K") >= 2  # the link stayed alive: keepalives do not keep motors on
        poll_until(lambda: drive.counters["timeout_stops"] == 1, 2.0, 0.005, "the timeout flag reported")
        assert drive.link_up


def test_cable_loss_then_reconnect(controller) -> None:
    with make_drive(controller) as drive:
        drive.apply(np.array([0.2, 0.0]))
        controller.unplug()
        poll_until(lambda: not drive.link_up, 2.0, 0.005, "the link loss noticed")
        with pytest.raises(DeviceUnavailableError, match="link down"):
            drive.apply(np.array([0.2, 0.0]))
        drive.stop()  # braking with no link is not an error: the controller timeout has stopped it
        controller.replug()
        poll_until(lambda: drive.link_up, 3.0, 0.01, "the reconnect")
        assert drive.metrics() | {"drive/link_losses": 1.0, "drive/reconnects": 1.0} == drive.metrics()
        assert controller.kinds()[-1] == "H"  # a fresh hello (which stops the motors) after the replug
        drive.apply(np.array([-0.2, 0.0]))
        poll_until(lambda: controller.speeds == (-60, -60), 2.0, 0.005, "driving after the reconnect")


def test_silent_controller_is_a_lost_link(controller) -> None:
    with make_drive(controller) as drive:
        controller.mute = True
        poll_until(lambda: not drive.link_up, 2.0, 0.01, "no replies noticed")
        controller.mute = False
        poll_until(lambda: drive.link_up, 3.0, 0.01, "recovery")


def test_garbage_from_the_controller_is_counted_and_ignored(controller) -> None:
    with make_drive(controller) as drive:
        controller.send_raw(b"$A,1,2,3,0*00\nnoise\n")
        poll_until(lambda: drive.counters["bad_lines"] == 2, 2.0, 0.005, "bad lines counted")
        drive.apply(np.array([0.1, 0.0]))
        poll_until(lambda: controller.speeds == (30, 30), 2.0, 0.005, "driving still works")
        assert drive.link_up


def test_hello_is_repeated_while_the_board_boots(controller) -> None:
    controller.mute = True  # an Arduino resets when the port opens and hears nothing for a while
    threading.Timer(0.5, lambda: setattr(controller, "mute", False)).start()
    with make_drive(controller, boot_wait_s=3.0) as drive:
        assert drive.link_up
    assert controller.kinds()[0] == "H"


def test_missing_port_and_dead_controller(controller, tmp_path) -> None:
    with pytest.raises(DeviceUnavailableError, match="dialout"):
        SerialDrive(str(tmp_path / "ttyNONE")).connect()
    controller.mute = True
    with pytest.raises(DeviceTimeoutError, match="did not answer"):
        make_drive(controller).connect()


@pytest.fixture
def firmware(tmp_path):
    """docs/firmware/diffdrive.ino built for Linux against tests/fakes/arduino, on a pty."""
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler to build the reference firmware")
    binary = tmp_path / "diffdrive"
    subprocess.run(
        [
            cxx,
            "-std=c++17",
            "-O1",
            "-I",
            str(REPO / "tests/fakes/arduino"),
            "-x",
            "c++",
            str(REPO / "docs/firmware/diffdrive.ino"),
            "-o",
            str(binary),
        ],
        check=True,
        timeout=120,
    )
    master, slave = os.openpty()
    tty.setraw(master)
    proc = subprocess.Popen([str(binary)], stdin=master, stdout=master, stderr=subprocess.DEVNULL)
    try:
        yield os.ttyname(slave)
    finally:
        proc.kill()
        proc.wait(10)
        os.close(master)
        os.close(slave)


def test_reference_firmware_sketch_speaks_the_protocol(firmware) -> None:
    with SerialDrive(firmware, controller_timeout_ms=200, keepalive_s=0.05, reply_timeout_s=0.5) as drive:
        drive.apply(np.array([0.5, -0.25]))  # 150 mm/s forward, turning right
        poll_until(lambda: drive.applied == (210, 90), 2.0, 0.005, "the firmware's applied speeds")
        poll_until(lambda: drive.counters["timeout_stops"] == 1, 2.0, 0.005, "the firmware's timeout stop")
        poll_until(lambda: drive.applied == (0, 0), 2.0, 0.005, "motors reported stopped")
        assert drive.link_up and drive.counters["bad_lines"] == 0
        drive.apply(np.array([-1.0, 0.0]))
        poll_until(lambda: drive.applied == (-300, -300), 2.0, 0.005, "reverse")
    assert drive.applied == (0, 0)  # the stop on disconnect was acknowledged
