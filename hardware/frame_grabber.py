"""A background thread that keeps only the newest camera frame.

Camera SDKs queue frames (V4L2 buffers, libcamera requests): reading on demand from the control
loop would hand back a frame captured long before the call, or block the tick until the next
one. The grabber drains the camera as fast as it produces, keeps the newest frame, and lets
`Camera.read_latest` return it without waiting; the frame's age then says how fresh it is.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import numpy as np

from reachsafe.hardware.base import Frame
from reachsafe.hardware.errors import DeviceTimeoutError, DeviceUnavailableError

log = logging.getLogger(__name__)

#: grab() -> (RGB uint8 image, capture time on the local monotonic clock), or None when no frame
#: came within the grab's own short timeout (so the thread can notice a stop request).
GrabFn = Callable[[], "tuple[np.ndarray, float] | None"]


class FrameGrabber:
    def __init__(self, grab: GrabFn, name: str) -> None:
        self._grab = grab
        self._name = name
        self._cond = threading.Condition()
        self._frame: Frame | None = None
        self._error: BaseException | None = None
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.frames = 0

    def start(self, first_frame_timeout_s: float) -> None:
        """Start grabbing; return once the first frame is in (or raise and stop)."""
        self._stopping = False
        self._frame, self._error, self.frames = None, None, 0  # nothing from a previous connection
        self._thread = threading.Thread(target=self._run, name=f"grab-{self._name}", daemon=True)
        self._thread.start()
        with self._cond:
            self._cond.wait_for(
                lambda: self._frame is not None or self._error is not None, first_frame_timeout_s
            )
            error, frame = self._error, self._frame
        if frame is None:
            self.stop()
            if error is not None:
                raise DeviceUnavailableError(f"{self._name}: {error}") from error
            raise DeviceTimeoutError(
                f"{self._name}: no frame within {first_frame_timeout_s:.1f} s of starting; check the camera "
                "connection and that no other process holds it"
            )

    def latest(self) -> Frame:
        """The newest frame; raises if the grab thread died."""
        with self._cond:
            if self._error is not None:
                raise DeviceUnavailableError(
                    f"{self._name} stopped delivering frames: {self._error}; check the cable, then restart"
                ) from self._error
            assert self._frame is not None, "start() returned, so a frame exists"
            return self._frame

    def stop(self, join_timeout_s: float = 2.0) -> None:
        self._stopping = True
        if self._thread is not None:
            self._thread.join(join_timeout_s)
            if self._thread.is_alive():
                log.warning("%s: grab thread did not stop within %.1f s", self._name, join_timeout_s)
            self._thread = None

    def _run(self) -> None:
        frame_id = 0
        while not self._stopping:
            try:
                got = self._grab()
            except Exception as e:  # the SDK failed: record it for the control thread
                log.error("%s: grab failed: %s", self._name, e)
                with self._cond:
                    self._error = e
                    self._cond.notify_all()
                return
            if got is None:
                continue
            image, t = got
            frame_id += 1
            frame = Frame(image, t, frame_id)
            with self._cond:
                self._frame = frame
                self.frames = frame_id
                self._cond.notify_all()
