"""TensorBoard scalars of the online learner and the daemon (`online/...`, `lagrange/...`, `fleet/...`)."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

logger = logging.getLogger(__name__)


class MetricsWriter:
    """Thread-safe TensorBoard scalar writer; ``None`` directory = metrics are dropped."""

    def __init__(self, logdir: str | Path | None) -> None:
        self._writer = None
        self._lock = threading.Lock()
        if logdir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(logdir))

    def scalars(self, values: dict[str, float], step: int) -> None:
        if self._writer is None:
            return
        with self._lock:
            for key, value in values.items():
                self._writer.add_scalar(key, float(value), step)

    def close(self) -> None:
        if self._writer is not None:
            with self._lock:
                self._writer.close()
