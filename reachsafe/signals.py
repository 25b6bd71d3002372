"""SIGTERM and SIGINT as a clean stop, for every long-running command (robot, bridge, trainer).

Torch-free and import-light: the robot uses it too.
"""

from __future__ import annotations

import contextlib
import logging
import signal
from collections.abc import Callable, Iterator
from types import FrameType

logger = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@contextlib.contextmanager
def stop_on_signals(
    stop: Callable[[], None], doing: str, *, second_interrupts: bool = False
) -> Iterator[None]:
    """While inside, SIGTERM and SIGINT log ``"<SIGNAL>: <doing>"`` and call ``stop``; on leaving, the
    previous handlers come back.

    ``second_interrupts``: a second signal raises :class:`KeyboardInterrupt`, for an operator who
    will not wait for the clean stop (the robot's runtime waiting for the trainer's ACKs).
    Must be entered on the main thread (Python delivers signals there only).
    """
    received = []

    def handler(signum: int, _frame: FrameType | None) -> None:
        if received and second_interrupts:
            raise KeyboardInterrupt
        received.append(signum)
        logger.warning("%s: %s", signal.Signals(signum).name, doing)
        stop()

    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, h in previous.items():
            signal.signal(sig, h)
