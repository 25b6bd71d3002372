"""The OpenCV camera driver replaying a small generated video file."""

from __future__ import annotations

import sys
import time

import numpy as np
import pytest
from conftest import poll_until

from reachsafe.hardware import DeviceUnavailableError, StaleFrameError
from reachsafe.hardware.opencv_camera import OpenCVCamera

cv2 = pytest.importorskip("cv2", reason="OpenCV is an optional extra: pip install 'reachsafe[opencv]'")

RGB = (200, 50, 10)


@pytest.fixture
def video(tmp_path):
    """10 frames of 96x80, solid RGB colour, with the frame index in the green channel."""
    path = tmp_path / "replay.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 50.0, (96, 80))
    for i in range(10):
        rgb = np.empty((80, 96, 3), np.uint8)
        rgb[:] = (RGB[0], 20 * i, RGB[2])
        writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def green_index(frame) -> int:
    return int(round(frame.image[..., 1].mean() / 20))


def test_replays_rgb_resized_and_loops(video) -> None:
    with OpenCVCamera(str(video), width=64, height=48, fps=100.0, loop=True) as cam:
        frame = cam.read_latest(max_age=0.5)
        assert frame.image.shape == (48, 64, 3)
        r, _, b = frame.image[20, 20].astype(int)
        assert abs(r - RGB[0]) < 8 and abs(b - RGB[2]) < 8  # RGB, not OpenCV's BGR
        seen = set()
        poll_until(
            lambda: seen.add(green_index(cam.read_latest())) or {0, 9} <= seen, 3.0, 0.002, "a full loop"
        )
        frames_before = cam.read_latest().frame_id
        poll_until(lambda: cam.read_latest().frame_id > frames_before + 10, 3.0, 0.01, "frames after looping")


def test_end_of_file_without_loop_goes_stale(video) -> None:
    with OpenCVCamera(str(video), fps=100.0, loop=False) as cam:
        poll_until(lambda: green_index(cam.read_latest()) == 9, 3.0, 0.005, "the last frame")
        time.sleep(0.12)  # a file that ended delivers nothing more; let the last frame age
        with pytest.raises(StaleFrameError):
            cam.read_latest(max_age=0.1)


def test_missing_source_is_unavailable(tmp_path) -> None:
    with pytest.raises(DeviceUnavailableError, match="does not exist"):
        OpenCVCamera(str(tmp_path / "nope.avi")).connect()
    with pytest.raises(DeviceUnavailableError, match="cannot open camera source"):
        OpenCVCamera("/dev/video99").connect()


def test_missing_opencv_says_how_to_install(monkeypatch, video) -> None:
    monkeypatch.setitem(sys.modules, "cv2", None)
    with pytest.raises(DeviceUnavailableError, match=r"reachsafe\[opencv\]"):
        OpenCVCamera(str(video)).connect()
