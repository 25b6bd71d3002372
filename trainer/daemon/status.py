"""The daemon's status file: written atomically every second, read by `reachsafe daemon status`."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from reachsafe.protocol.files import write_json_atomically

STATUS_FILE = "status.json"


class StatusError(RuntimeError):
    """No readable status: the daemon has not started in this run directory, or the file is damaged."""


class RateMeter:
    """Events (or amounts) per second over a sliding window, measured on the monotonic clock."""

    def __init__(self, window_s: float = 10.0) -> None:
        self.window_s = window_s
        self._events: list[tuple[float, float]] = []
        self._created = time.monotonic()

    def tick(self, amount: float = 1.0) -> None:
        now = time.monotonic()
        self._events.append((now, amount))
        cut = now - self.window_s
        if self._events[0][0] < cut:
            self._events = [e for e in self._events if e[0] >= cut]

    def per_s(self) -> float:
        now = time.monotonic()
        recent = sum(a for t, a in list(self._events) if t >= now - self.window_s)
        return recent / max(min(now - self._created, self.window_s), 1e-3)


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
        f"errors {status.get('errors', 0)}   duplicates {status.get('duplicates', 0)}",
        f"  updates {status.get('updates', 0)} ({status.get('updates_per_s', 0.0):.2f}/s)   "
        f"lambda {status.get('lambda', 0.0):.4f}",
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
    return "\n".join(lines)


def _num(x: Any) -> str:
    return "-" if x is None else f"{float(x):.2f}"
