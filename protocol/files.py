"""Crash-safe file writes shared by the robot and the trainer.

A reader (another process, or this one after a kill -9) sees either the old file or the new one,
never half of one: write to a temporary name beside the target, optionally fsync, then rename.
``fsync=True`` also makes the new content survive a power cut, which is what the spool's stream
identity and the bundle store need; status files only need atomicity.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename or a new file inside directory ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: str | os.PathLike, data: bytes, *, fsync: bool = False) -> None:
    """Replace ``path`` with ``data`` atomically (unique temporary name per process and thread)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if fsync:
        fsync_dir(path.parent)


def write_json_atomically(
    path: str | os.PathLike, data: Any, *, fsync: bool = False, indent: int | None = 2
) -> None:
    """:func:`write_atomically` for a JSON document (keys sorted, so files diff cleanly)."""
    write_atomically(path, json.dumps(data, indent=indent, sort_keys=True).encode(), fsync=fsync)
