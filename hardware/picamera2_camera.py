"""Raspberry Pi CSI camera through `picamera2` (libcamera).

Freshness: the stream is configured with `queue=False` (picamera2 then never hands back a
request that completed before the call) and few buffers, and a grab thread (`FrameGrabber`)
takes every request as it completes, copies the image and releases the request at once, so
libcamera never runs out of buffers and the control loop reads the newest frame without
waiting. A frame's time is its `SensorTimestamp` (ns, start of exposure, on CLOCK_MONOTONIC —
the clock of `time.monotonic()` on Linux), so `read_latest(max_age)` measures the true age from
the sensor, not from when Python saw the frame.

Colour order: libcamera names formats after the DRM fourcc, which is the reverse of the memory
order numpy sees. picamera2's "BGR888" is stored R, G, B per pixel (what the policy wants),
"RGB888" is B, G, R. We request "BGR888", so frames are RGB with no conversion.
"""

from __future__ import annotations

import concurrent.futures
import logging
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from reachsafe.hardware.base import Camera, Frame
from reachsafe.hardware.errors import DeviceUnavailableError
from reachsafe.hardware.frame_grabber import FrameGrabber

if TYPE_CHECKING:
    from reachsafe.hardware.config import HardwareConfig

log = logging.getLogger(__name__)

#: libcamera "BGR888" == R, G, B bytes per pixel in memory (see the module docstring).
RGB_IN_MEMORY_FORMAT = "BGR888"
#: A first frame stamped further than this from now means SensorTimestamp is not on
#: CLOCK_MONOTONIC on this platform; the driver then stamps frames on arrival instead.
CLOCK_MISMATCH_S = 1.0
_POLL_S = 0.2

INSTALL_HINT = (
    "picamera2 is not installed. On Raspberry Pi OS: `sudo apt install -y python3-picamera2`, and "
    "create the runtime's venv with `python3 -m venv --system-site-packages` so it can see it"
)


class Picamera2Camera(Camera):
    def __init__(
        self,
        width: int = 64,
        height: int = 64,
        fps: float = 30.0,
        camera_num: int = 0,
        buffer_count: int = 3,
        first_frame_timeout_s: float = 3.0,
    ) -> None:
        super().__init__()
        self.size = (width, height)
        self.fps = fps
        self.camera_num = camera_num
        self.buffer_count = buffer_count
        self.first_frame_timeout_s = first_frame_timeout_s
        self._cam: Any = None
        self._job: Any = None
        self._sensor_clock = True
        self._grabber = FrameGrabber(self._grab, f"picamera2 camera {camera_num}")

    @classmethod
    def from_config(cls, hw: HardwareConfig) -> Picamera2Camera:
        c = hw.camera
        return cls(c.width, c.height, c.fps, c.camera_num, c.buffer_count, c.first_frame_timeout_s)

    @property
    def features(self) -> dict[str, Any]:
        w, h = self.size
        return {"image_shape": (h, w, 3), "rate_hz": self.fps}

    def _open(self) -> None:
        try:
            from picamera2 import Picamera2
        except ImportError as e:
            raise DeviceUnavailableError(INSTALL_HINT) from e
        try:
            cam = Picamera2(self.camera_num)
        except (RuntimeError, IndexError) as e:
            raise DeviceUnavailableError(
                f"no CSI camera {self.camera_num} ({e}): check the ribbon cable and "
                "`rpicam-hello --list-cameras`; another process may hold the camera"
            ) from e
        frame_us = int(round(1e6 / self.fps))
        try:
            config = cam.create_video_configuration(
                main={"size": self.size, "format": RGB_IN_MEMORY_FORMAT},
                buffer_count=self.buffer_count,
                queue=False,
                controls={"FrameDurationLimits": (frame_us, frame_us)},
                display=None,
                encode=None,
            )
            cam.configure(config)
            cam.start()
        except Exception as e:
            cam.close()
            raise DeviceUnavailableError(
                f"picamera2 cannot stream {self.size[0]}x{self.size[1]} at {self.fps} fps: {e}; "
                "try another size or rate"
            ) from e
        self._cam, self._job, self._sensor_clock = cam, None, True
        try:
            self._grabber.start(self.first_frame_timeout_s)
        except Exception:
            self._release_camera()
            raise
        log.info("picamera2 camera %d: %dx%d at %.1f fps", self.camera_num, *self.size, self.fps)

    def _close(self) -> None:
        self._grabber.stop()
        self._release_camera()

    def _release_camera(self) -> None:
        cam, self._cam = self._cam, None
        try:
            cam.stop()
        finally:
            cam.close()

    def _read_latest(self) -> Frame:
        return self._grabber.latest()

    def _grab(self) -> tuple[np.ndarray, float] | None:
        """Runs on the grab thread: wait (briefly) for the next completed request."""
        if self._job is None:
            self._job = self._cam.capture_request(wait=False)
        try:
            request = self._job.get_result(timeout=_POLL_S)
        except concurrent.futures.TimeoutError:
            return None  # still waiting for this request; the thread checks for stop and calls again
        self._job = None
        try:
            array = request.make_array("main")
            stamp_ns = request.get_metadata().get("SensorTimestamp")
        finally:
            request.release()
        return self._to_rgb(array), self._capture_time(stamp_ns)

    def _to_rgb(self, array: np.ndarray) -> np.ndarray:
        w, h = self.size
        if array.ndim != 3 or array.shape[0] < h or array.shape[1] < w or array.shape[2] < 3:
            raise DeviceUnavailableError(
                f"picamera2 returned a {array.shape} array for a {w}x{h} BGR888 stream"
            )
        return np.ascontiguousarray(array[:h, :w, :3], dtype=np.uint8)  # crop any alignment padding

    def _capture_time(self, stamp_ns: int | None) -> float:
        now = time.monotonic()
        if stamp_ns is None or not self._sensor_clock:
            return now
        t = stamp_ns * 1e-9
        if self._grabber.frames == 0 and abs(now - t) > CLOCK_MISMATCH_S:
            log.warning(
                "picamera2: SensorTimestamp is %.1f s away from time.monotonic(); it is not on CLOCK_MONOTONIC "
                "here, so frames are stamped on arrival (ages read a little younger than they are)",
                now - t,
            )
            self._sensor_clock = False
            return now
        return t
