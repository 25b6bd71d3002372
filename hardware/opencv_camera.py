"""USB / V4L2 camera, or a video file replayed in real time, through OpenCV.

Needs the optional extra `reachsafe[opencv]` (opencv-python-headless). A grab thread drains the
device as fast as it delivers (V4L2 otherwise queues several frames and `read()` returns the
oldest), keeps the newest frame converted to RGB (OpenCV decodes to BGR) and resized to the
configured size. Live frames are stamped when the driver receives them (USB cameras give no
reliable exposure time). A video file is paced at `fps` and either loops or, with `loop=False`,
stops at the end so its last frame goes stale, as a camera that stopped would.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from reachsafe.hardware.base import Camera, Frame
from reachsafe.hardware.errors import DeviceUnavailableError
from reachsafe.hardware.frame_grabber import FrameGrabber

if TYPE_CHECKING:
    from reachsafe.hardware.config import HardwareConfig

log = logging.getLogger(__name__)

INSTALL_HINT = "OpenCV is not installed: pip install 'reachsafe[opencv]' (opencv-python-headless)"
_POLL_S = 0.2


class OpenCVCamera(Camera):
    def __init__(
        self,
        source: str = "0",
        width: int = 64,
        height: int = 64,
        fps: float = 30.0,
        loop: bool = True,
        first_frame_timeout_s: float = 3.0,
    ) -> None:
        super().__init__()
        self.source = source
        self.size = (width, height)
        self.fps = fps
        self.loop = loop
        self.first_frame_timeout_s = first_frame_timeout_s
        self.is_file = not (source.isdigit() or source.startswith("/dev/"))
        self._cv2: Any = None
        self._cap: Any = None
        self._next_t = 0.0
        self._grabber = FrameGrabber(self._grab, f"opencv camera {source}")

    @classmethod
    def from_config(cls, hw: HardwareConfig) -> OpenCVCamera:
        c = hw.camera
        return cls(c.source, c.width, c.height, c.fps, c.loop, c.first_frame_timeout_s)

    @property
    def features(self) -> dict[str, Any]:
        w, h = self.size
        return {"image_shape": (h, w, 3), "rate_hz": self.fps}

    def _open(self) -> None:
        try:
            import cv2
        except ImportError as e:
            raise DeviceUnavailableError(INSTALL_HINT) from e
        self._cv2 = cv2
        if self.is_file:
            if not Path(self.source).is_file():
                raise DeviceUnavailableError(f"video file {self.source} does not exist")
            cap = cv2.VideoCapture(self.source)
        else:
            index = int(self.source) if self.source.isdigit() else self.source
            cap = cv2.VideoCapture(index, cv2.CAP_V4L2)
        if not cap.isOpened():
            cap.release()
            raise DeviceUnavailableError(
                f"OpenCV cannot open camera source {self.source!r}: check `v4l2-ctl --list-devices`, the cable, "
                "and that the user is in the 'video' group"
            )
        if not self.is_file:
            w, h = self.size
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, w)
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, h)
            cap.set(cv2.CAP_PROP_FPS, self.fps)
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        self._cap = cap
        self._next_t = time.monotonic()
        try:
            self._grabber.start(self.first_frame_timeout_s)
        except Exception:
            self._release()
            raise
        log.info("opencv camera %s: %dx%d at %.1f fps", self.source, *self.size, self.fps)

    def _close(self) -> None:
        self._grabber.stop()
        self._release()

    def _release(self) -> None:
        cap, self._cap = self._cap, None
        cap.release()

    def _read_latest(self) -> Frame:
        return self._grabber.latest()

    def _grab(self) -> tuple[np.ndarray, float] | None:
        """Runs on the grab thread."""
        if self.is_file:
            delay = self._next_t - time.monotonic()
            if delay > 0:
                time.sleep(min(delay, _POLL_S))
                return None
            self._next_t = max(self._next_t + 1.0 / self.fps, time.monotonic() - 1.0 / self.fps)
        ok, bgr = self._cap.read()
        if not ok and self.is_file:
            if not self.loop:
                time.sleep(_POLL_S)  # end of the recording: no more frames, the last one goes stale
                return None
            self._cap.set(self._cv2.CAP_PROP_POS_FRAMES, 0)
            ok, bgr = self._cap.read()
        if not ok:
            raise DeviceUnavailableError(f"camera {self.source} returned no frame (unplugged?)")
        t = time.monotonic()
        cv2 = self._cv2
        w, h = self.size
        if bgr.shape[1] != w or bgr.shape[0] != h:
            bgr = cv2.resize(bgr, (w, h), interpolation=cv2.INTER_AREA)
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), t
