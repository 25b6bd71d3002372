"""Runtime metrics: counters, gauges and rolling timing windows under namespaced keys ("edge/...")."""

from __future__ import annotations

import threading
from collections import deque

import numpy as np


class Metrics:
    """Thread-safe metric store. `snapshot()` flattens timings into `<key>_p50` / `<key>_p99`."""

    def __init__(self, window: int = 1000) -> None:
        self._lock = threading.Lock()
        self._counters: dict[str, float] = {}
        self._gauges: dict[str, float] = {}
        self._timings: dict[str, deque[float]] = {}
        self._window = window

    def count(self, key: str, n: float = 1.0) -> None:
        with self._lock:
            self._counters[key] = self._counters.get(key, 0.0) + n

    def gauge(self, key: str, value: float) -> None:
        with self._lock:
            self._gauges[key] = float(value)

    def timing(self, key: str, ms: float) -> None:
        with self._lock:
            window = self._timings.get(key)
            if window is None:
                window = self._timings[key] = deque(maxlen=self._window)
            window.append(ms)

    def counter(self, key: str) -> float:
        with self._lock:
            return self._counters.get(key, 0.0)

    def window(self, key: str) -> list[float]:
        """The recent values of timing `key`, oldest first."""
        with self._lock:
            return list(self._timings.get(key, ()))

    def percentiles(self, key: str) -> tuple[float, float]:
        """(p50, p99) of the recent window of `key` (NaN when empty)."""
        values = self.window(key)
        if not values:
            return float("nan"), float("nan")
        p50, p99 = np.percentile(values, [50, 99])
        return float(p50), float(p99)

    def snapshot(self) -> dict[str, float]:
        with self._lock:
            out = {**self._counters, **self._gauges}
            timings = {k: list(v) for k, v in self._timings.items() if v}
        for key, values in timings.items():
            p50, p99 = np.percentile(values, [50, 99])
            out[f"{key}_p50"] = float(p50)
            out[f"{key}_p99"] = float(p99)
        return out
