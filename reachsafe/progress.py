"""Progress of long work: a live bar on a terminal, periodic lines in a log file.

tqdm draws a bar only where stderr is a terminal; redirected to a file, its carriage-return frames
fill the log with one unreadable line. :class:`Progress` keeps tqdm for terminals and otherwise logs
one line every ``log_every_s`` seconds (and one at the end) through :mod:`logging`.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

logger = logging.getLogger(__name__)


class Progress:
    """``update(n)``, ``set_postfix(**values)`` and ``close()``, like a tqdm bar."""

    def __init__(
        self,
        total: int,
        desc: str,
        unit: str,
        initial: int = 0,
        enabled: bool = True,
        log_every_s: float = 30.0,
        terminal: bool | None = None,
    ) -> None:
        self.total, self.desc, self.unit, self.n = total, desc, unit, initial
        self.enabled, self.log_every_s = enabled, log_every_s
        self.postfix: dict[str, Any] = {}
        self._start_n, self._t0 = initial, time.monotonic()
        self._last_log = self._t0
        is_tty = sys.stderr.isatty() if terminal is None else terminal
        self._bar = None
        if enabled and is_tty:
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=initial, desc=desc, unit=unit)

    def update(self, n: int = 1) -> None:
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
        elif self.enabled and time.monotonic() - self._last_log >= self.log_every_s:
            self._log()

    def set_postfix(self, **values: Any) -> None:
        self.postfix = values
        if self._bar is not None:
            self._bar.set_postfix(**values)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self.enabled and self.n > self._start_n:
            self._log()

    def line(self) -> str:
        """``desc: n/total (pct) at rate unit/s, ETA …[, postfix]`` for the work done so far."""
        elapsed = max(time.monotonic() - self._t0, 1e-9)
        rate = (self.n - self._start_n) / elapsed
        pct = 100.0 * self.n / self.total if self.total else 100.0
        eta = (self.total - self.n) / rate if rate > 0 else float("inf")
        extra = "".join(f", {k} {v}" for k, v in self.postfix.items())
        return f"{self.desc}: {self.n}/{self.total} {self.unit} ({pct:.0f}%) at {rate:.3g} {self.unit}/s, ETA {eta:.0f} s{extra}"

    def _log(self) -> None:
        self._last_log = time.monotonic()
        logger.info("%s", self.line())
