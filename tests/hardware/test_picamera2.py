"""The picamera2 camera driver against the fake `picamera2` in tests/fakes (no Pi camera here)."""

from __future__ import annotations

import sys
import time

import numpy as np
import pytest
from conftest import REPO, poll_until

from reachsafe.hardware import DeviceTimeoutError, DeviceUnavailableError, StaleFrameError
from reachsafe.hardware.picamera2_camera import Picamera2Camera


@pytest.fixture
def fake(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "tests" / "fakes"))
    monkeypatch.delitem(sys.modules, "picamera2", raising=False)
    import picamera2

    picamera2.FAKE.reset()
    yield picamera2.FAKE
    monkeypatch.delitem(sys.modules, "picamera2", raising=False)


def test_missing_library_says_how_to_install(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "picamera2", None)
    with pytest.raises(DeviceUnavailableError, match="apt install -y python3-picamera2"):
        Picamera2Camera().connect()


def test_missing_camera_is_unavailable(fake) -> None:
    fake.cameras = 0
    with pytest.raises(DeviceUnavailableError, match="ribbon cable"):
        Picamera2Camera().connect()


def test_configures_a_fresh_rgb_stream_and_releases_buffers(fake) -> None:
    cam = Picamera2Camera(width=64, height=48, fps=100.0, buffer_count=3)
    with cam:
        frame = cam.read_latest(max_age=0.5)
        assert frame.image.shape == (48, 64, 3) and frame.image.dtype == np.uint8
        # the scene is (200, 50, 10) in RGB; a swapped channel order would read (10, 50, 200)
        assert tuple(frame.image[10, 10]) == (200, 50, 10)
        first = frame.frame_id
        later = poll_until(lambda: (f := cam.read_latest(max_age=0.1)).frame_id >= first + 5 and f, 3.0, 0.01)
        assert later.age() < 0.1
        config = fake.instances[0].camera_configuration()
        assert config["queue"] is False and config["buffer_count"] == 3
        assert config["main"] == {"format": "BGR888", "size": (64, 48)}
        assert config["controls"]["FrameDurationLimits"] == (10000, 10000)
    assert fake.max_outstanding == 1  # each request is released before the next one is taken
    assert not fake.instances[0].started and not fake.instances[0].is_open


def test_old_sensor_timestamp_is_a_stale_frame(fake) -> None:
    with Picamera2Camera(fps=100.0) as cam:
        cam.read_latest(max_age=0.2)
        fake.stale_by_s = 0.5  # frames keep coming, but each was exposed 0.5 s ago
        with pytest.raises(StaleFrameError) as err:
            poll_until(lambda: cam.read_latest(max_age=0.2) and False, 2.0, 0.01)
        assert 0.45 < err.value.age < 1.0


def test_stalled_camera_goes_stale_then_recovers(fake) -> None:
    with Picamera2Camera(fps=100.0) as cam:
        fake.stalled = True
        time.sleep(0.15)  # let the last frame age past max_age (no socket or process to poll)
        with pytest.raises(StaleFrameError):
            cam.read_latest(max_age=0.1)
        fake.stalled = False
        poll_until(lambda: cam.read_latest().age() < 0.05, 2.0, 0.01, "fresh frames after the stall")


def test_camera_lost_mid_stream_is_unavailable(fake) -> None:
    with Picamera2Camera(fps=100.0) as cam:
        cam.read_latest(max_age=0.2)
        fake.unplugged = True
        with pytest.raises(DeviceUnavailableError, match="stopped delivering frames"):
            poll_until(lambda: cam.read_latest() and False, 2.0, 0.01)
    assert not fake.instances[0].is_open
    fake.unplugged = False  # plugged back in: a new connection starts clean
    with cam:
        assert cam.read_latest(max_age=0.2).frame_id >= 1
    assert len(fake.instances) == 2


def test_no_first_frame_is_a_timeout(fake) -> None:
    fake.stalled = True
    with pytest.raises(DeviceTimeoutError, match="no frame"):
        Picamera2Camera(fps=100.0, first_frame_timeout_s=0.3).connect()
    assert not fake.instances[0].is_open


def test_sensor_clock_mismatch_falls_back_to_arrival_time(fake, caplog) -> None:
    fake.stale_by_s = 100.0  # SensorTimestamp on some other clock
    with Picamera2Camera(fps=100.0) as cam:
        assert cam.read_latest(max_age=0.2).age() < 0.2
    assert "not on CLOCK_MONOTONIC" in caplog.text
