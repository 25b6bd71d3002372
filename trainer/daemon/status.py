"""The daemon's status file: written atomically every second, read by `reachsafe daemon status`;
and the rate helpers its threads share (a rate meter, warnings throttled per key)."""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reachsafe.protocol.files import write_json_atomically

STATUS_FILE = "status.json"


class StatusError(RuntimeError):
    """No readable status: the daemon has not started in this run directory, or the file is damaged."""


class RateMeter:
    """Events (or amounts) per second over a sliding window, measured on the monotonic clock.

    The window is a deque that ``tick`` trims from the old end: O(1) per tick. (Rebuilding a list
    whenever its oldest event expired cost 560 us per tick once the window was full at 2000
    batches/s, more than the rest of a batch's ingest.)
    """

    def __init__(self, window_s: float = 10.0) -> None:
        self.window_s = window_s
        self._events: deque[tuple[float, float]] = deque()
        self._created = time.monotonic()

    def tick(self, amount: float = 1.0) -> None:
        now = time.monotonic()
        self._events.append((now, amount))
        cut = now - self.window_s
        while self._events[0][0] < cut:
            self._events.popleft()

    def per_s(self) -> float:
        now = time.monotonic()
        recent = sum(a for t, a in list(self._events) if t >= now - self.window_s)
        return recent / max(min(now - self._created, self.window_s), 1e-3)


@dataclass
class _Held:
    since: float  # when the last line for this key was written
    count: int = 0  # lines held back since then
    last: tuple[str, tuple[Any, ...]] = ("", ())  # the latest one held back (format, args)


class LogThrottle:
    """Warnings at most once per key every ``every_s``; the ones held back are counted, not lost.

    A line written after a quiet spell carries "(and N more like it in the last T s)"; :meth:`flush`
    (call it about once a second) writes the latest held-back line with its count once the key's
    window has passed, so a burst that stops is still reported. At most ``max_keys`` keys are
    tracked (a peer can make up keys); beyond that the oldest is forgotten, its held-back count written.
    """

    def __init__(self, log: logging.Logger, every_s: float = 10.0, max_keys: int = 4096) -> None:
        self.log, self.every_s, self.max_keys = log, every_s, max_keys
        self._held: dict[Hashable, _Held] = {}

    def warning(self, key: Hashable, msg: str, *args: Any) -> None:
        now = time.monotonic()
        held = self._held.get(key)
        if held is not None and now - held.since < self.every_s:
            held.count += 1
            held.last = (msg, args)
            return
        self._write(msg, args, held, now)
        if held is None and len(self._held) >= self.max_keys:  # forget the oldest key, reporting its count
            oldest = self._held.pop(next(iter(self._held)))
            if oldest.count:
                self._write(*oldest.last, oldest, now)
        self._held[key] = _Held(now)

    def flush(self, now: float | None = None) -> None:
        """Write the held-back lines whose window has passed; forget keys quiet for a window."""
        now = time.monotonic() if now is None else now
        for key, held in list(self._held.items()):
            if now - held.since < self.every_s:
                continue
            if held.count:
                msg, args = held.last
                held.count -= 1  # the line written is one of them
                self._write(msg, args, held, now)
                self._held[key] = _Held(now)
            else:
                del self._held[key]

    def _write(self, msg: str, args: tuple[Any, ...], held: _Held | None, now: float) -> None:
        if held is not None and held.count:
            self.log.warning(
                msg + " (and %d more like it in the last %.0f s)", *args, held.count, now - held.since
            )
        else:
            self.log.warning(msg, *args)


def write_status(path: str | Path, status: dict[str, Any]) -> None:
    """Replace ``path`` atomically so that a reader never sees a half-written file."""
    write_json_atomically(path, status, indent=1)


def read_status(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / STATUS_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise StatusError(
            f"no {path}: start the daemon with `reachsafe daemon serve --run {run_dir}` first"
        ) from None
    except (OSError, json.JSONDecodeError) as exc:
        raise StatusError(f"cannot read {path}: {exc}") from None


def format_status(status: dict[str, Any]) -> str:
    """Human-readable summary of a status dict."""
    age = time.time() - float(status.get("written_unix", 0.0))
    state = status.get("state", "?")
    if state == "running" and age > 5.0:
        state = f"stale ({age:.0f} s old: daemon stopped or hung?)"
    lines = [
        f"trainer daemon: {state}  pid {status.get('pid')}  bind {status.get('bind')}  mode {status.get('security')}",
        f"  uptime {status.get('uptime_s', 0.0):.0f} s   robots connected {len(status.get('robots', {}))}",
        f"  steps in {status.get('steps_per_s', 0.0):.1f}/s   stored {status.get('steps_stored', 0)}   "
        f"errors {status.get('errors', 0)}   duplicates {status.get('duplicates', 0)}   "
        f"failed handshakes {status.get('handshake_failures', 0)}",
        f"  updates {status.get('updates', 0)} ({status.get('updates_per_s', 0.0):.2f}/s)   "
        f"skipped non-finite {status.get('skipped_nonfinite', 0)}   lambda {status.get('lambda', 0.0):.4f}",
        f"  bundle v{status.get('bundle_version')} (parent {status.get('bundle_parent')})",
    ]
    robots = status.get("robots", {})
    if robots:
        lines.append(
            f"  {'robot':<16} {'steps':>8} {'episodes':>8} {'last return':>12} {'last cost':>10} {'bundle':>7} {'seen':>6}"
        )
        for rid, r in sorted(robots.items()):
            lines.append(
                f"  {rid:<16} {r.get('steps', 0):>8} {r.get('episodes', 0):>8} "
                f"{_num(r.get('last_return')):>12} {_num(r.get('last_cost')):>10} "
                f"{str(r.get('bundle_version')):>7} {r.get('last_seen_s', 0.0):>5.1f}s"
            )
        rejected = {rid: r["rejected"] for rid, r in sorted(robots.items()) if r.get("rejected")}
        if rejected:
            lines.append("  rejected messages (robot: reason count):")
            for rid, reasons in rejected.items():
                lines.append(f"  {rid:<16} " + "  ".join(f"{k} {v}" for k, v in sorted(reasons.items())))
    return "\n".join(lines)


def _num(x: Any) -> str:
    return "-" if x is None else f"{float(x):.2f}"
