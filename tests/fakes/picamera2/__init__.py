"""A stand-in for the `picamera2` package, for tests on machines without a Pi camera.

Same class and method names, signatures and return shapes as the real library for what
`reachsafe.hardware.picamera2_camera` uses: `Picamera2(camera_num)`, `create_video_configuration(main=,
buffer_count=, queue=, controls=, display=, encode=)` returning a dict, `configure`, `start`,
`capture_request(wait=None)` (a `CompletedRequest`, or a `Job` with `get_result(timeout)` when
`wait=False`), `CompletedRequest.make_array(name)` / `get_metadata()` / `release()`, `stop`,
`close`. Like the real camera it produces frames on its own clock at the configured
`FrameDurationLimits`, stamps `SensorTimestamp` in ns on CLOCK_MONOTONIC, holds at most one
completed request when `queue=True` (none when `queue=False`), and stops producing frames when
the application holds every buffer without releasing it.

Memory order follows libcamera's naming, as the real one does: "BGR888" arrays hold R, G, B per
pixel and "RGB888" arrays hold B, G, R; the X formats add a fourth byte.

Tests steer it through `FAKE` (module global): `scene_rgb` (the colour the camera sees),
`stale_by_s` (SensorTimestamp lags the real capture time), `stalled` (no frames), `unplugged`
(pending captures fail as libcamera's do when the sensor drops off the bus), `cameras`
(how many are attached), and read `instances` / `FAKE.max_outstanding`.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

_CHANNELS = {
    "BGR888": (0, 1, 2),
    "RGB888": (2, 1, 0),
    "XBGR8888": (0, 1, 2, None),
    "XRGB8888": (2, 1, 0, None),
}


@dataclass
class FakeControls:
    scene_rgb: tuple[int, int, int] = (200, 50, 10)
    stale_by_s: float = 0.0
    stalled: bool = False
    unplugged: bool = False
    cameras: int = 1
    instances: list = field(default_factory=list)
    max_outstanding: int = 0

    def reset(self) -> None:
        self.__init__()


FAKE = FakeControls()


class Job:
    """A pending capture, completed by the camera thread (`get_result` blocks like the real one)."""

    def __init__(self) -> None:
        self._future: Future = Future()
        self._future.set_running_or_notify_cancel()

    def get_result(self, timeout: float | None = None):
        return self._future.result(timeout=timeout)


class CompletedRequest:
    def __init__(self, picam2: Picamera2, image: np.ndarray, metadata: dict) -> None:
        self.picam2 = picam2
        self._image = image
        self._metadata = metadata
        self._released = False

    def make_array(self, name: str) -> np.ndarray:
        if self._released:
            raise RuntimeError("CompletedRequest: buffer used after release")
        if name != "main":
            raise KeyError(name)
        return self._image.copy()

    def get_metadata(self) -> dict:
        return dict(self._metadata)

    def release(self) -> None:
        if not self._released:
            self._released = True
            self.picam2._buffer_returned()


class Picamera2:
    def __init__(self, camera_num: int = 0, verbose_console=None, tuning=None) -> None:
        if camera_num >= FAKE.cameras:
            raise RuntimeError("Camera __init__ sequence did not complete.")
        self.camera_idx = camera_num
        self.camera_config: dict | None = None
        self.started = False
        self.is_open = True
        self._lock = threading.Lock()
        self._held: CompletedRequest | None = None
        self._jobs: list[Job] = []
        self._outstanding = 0
        self._thread: threading.Thread | None = None
        FAKE.instances.append(self)

    def create_video_configuration(
        self,
        main={},  # noqa: B006 (the real signature)
        lores=None,
        raw={},  # noqa: B006
        transform=None,
        colour_space=None,
        buffer_count=6,
        controls={},  # noqa: B006
        display="main",
        encode="main",
        queue=True,
    ) -> dict:
        stream = {"format": "XBGR8888", "size": (1280, 720)}
        for key, value in main.items():
            if key not in ("format", "size"):
                raise ValueError(f"Bad key {key!r}: valid stream configuration keys are ('format', 'size')")
            stream[key] = value
        controls = {"FrameDurationLimits": (33333, 33333)} | controls
        return {
            "use_case": "video",
            "transform": transform,
            "colour_space": colour_space,
            "buffer_count": buffer_count,
            "queue": queue,
            "main": stream,
            "lores": lores,
            "raw": raw,
            "controls": controls,
            "display": display,
            "encode": encode,
        }

    def configure(self, camera_config: dict) -> None:
        main = camera_config["main"]
        if main["format"] not in _CHANNELS:
            raise RuntimeError("Bad format " + main["format"] + " in stream main")
        size = main["size"]
        if type(size) is not tuple or len(size) != 2:
            raise RuntimeError("size in main stream should be (width, height)")
        if size[0] % 2 or size[1] % 2:
            raise RuntimeError("width and height should be even")
        self.camera_config = camera_config

    def camera_configuration(self) -> dict:
        return self.camera_config

    def start(self, config=None, show_preview=False) -> None:
        if config is not None:
            self.configure(config)
        if self.camera_config is None:
            raise RuntimeError("Camera has not been configured")
        if self.started:
            return
        self.started = True
        self._thread = threading.Thread(target=self._run, name="fake-picamera2", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if not self.started:
            return
        self.started = False
        assert self._thread is not None
        self._thread.join()
        with self._lock:
            if self._held is not None:
                self._held.release()
                self._held = None

    def close(self) -> None:
        self.stop()
        self.is_open = False

    def capture_request(self, wait=None, signal_function=None):
        job = Job()
        with self._lock:
            if self._held is not None:
                job._future.set_result(self._held)
                self._held = None
            else:
                self._jobs.append(job)
        if wait is None:
            wait = signal_function is None
        return job.get_result() if wait else job

    def wait(self, job: Job, timeout: float | None = None):
        return job.get_result(timeout=timeout)

    # ----- the camera side -----------------------------------------------------------------
    def _buffer_returned(self) -> None:
        with self._lock:
            self._outstanding -= 1

    def _image(self) -> np.ndarray:
        fmt = self.camera_config["main"]["format"]
        w, h = self.camera_config["main"]["size"]
        pixel = [255 if c is None else FAKE.scene_rgb[c] for c in _CHANNELS[fmt]]
        return np.tile(np.array(pixel, np.uint8), (h, w, 1))

    def _run(self) -> None:
        period = self.camera_config["controls"]["FrameDurationLimits"][0] * 1e-6
        next_t = time.monotonic() + period
        while self.started:
            time.sleep(max(0.0, next_t - time.monotonic()))
            next_t += period
            with self._lock:
                if FAKE.unplugged:
                    for job in self._jobs:
                        job._future.set_exception(RuntimeError("Camera frontend has timed out!"))
                    self._jobs.clear()
                    continue
                if FAKE.stalled or self._outstanding >= self.camera_config["buffer_count"]:
                    continue  # no frame: the sensor is stalled or the application holds every buffer
                stamp = time.monotonic_ns() - int(FAKE.stale_by_s * 1e9)
                md = {"SensorTimestamp": stamp, "FrameDuration": int(period * 1e6), "ExposureTime": 10000}
                if not self._jobs and not self.camera_config["queue"]:
                    continue  # nobody asked and nothing is held: the buffer is recycled at once
                req = CompletedRequest(self, self._image(), md)
                if self._jobs:
                    self._jobs.pop(0)._future.set_result(req)
                else:
                    if self._held is not None:  # queue=True keeps only the newest completed request
                        self._held._released = True
                        self._outstanding -= 1
                    self._held = req
                self._outstanding += 1
                FAKE.max_outstanding = max(FAKE.max_outstanding, self._outstanding)
