"""Shared test helpers: free ports, polling with a deadline, and processes that always end."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from reachsafe.protocol.sockets import free_tcp_port  # noqa: F401  (re-exported for the tests)

REPO = Path(__file__).resolve().parents[1]


def poll_until(
    predicate: Callable[[], Any], timeout: float, interval: float = 0.05, what: str = "condition"
) -> Any:
    """Call ``predicate`` until it returns something truthy; fail the test after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(interval)


class Processes:
    """Starts ``reachsafe`` (or any) subprocesses for a test and ends every one of them."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.procs: list[tuple[subprocess.Popen, Path]] = []

    def start(self, *args: str, name: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        log = self.logdir / f"{name}.log"
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        proc = subprocess.Popen(
            list(args),
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=REPO,
            start_new_session=True,
        )
        self.procs.append((proc, log))
        return proc

    def reachsafe(self, *args: str, name: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        return self.start(sys.executable, "-m", "reachsafe", *args, name=name, env=env)

    def log(self, proc: subprocess.Popen) -> str:
        for p, log in self.procs:
            if p is proc:
                return log.read_text(errors="replace")
        raise KeyError(proc)

    def stop(self, proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        return proc.returncode

    def close(self) -> None:
        for proc, _ in self.procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(5)


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    procs = Processes(tmp_path)
    try:
        yield procs
    finally:
        procs.close()


@pytest.fixture(scope="session")
def offline_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny offline run (16×16 frames, 10 updates, bundle v1) for daemon tests; trained once per session."""
    from reachsafe.trainer.algos.offline.config import NetworkConfig, OfflineConfig
    from reachsafe.trainer.data.dataset import load_dataset
    from reachsafe.trainer.runs.offline import train_offline
    from tests.fixtures.point_dataset import make_point_dataset, write_hdf5

    root = tmp_path_factory.mktemp("offline")
    write_hdf5(make_point_dataset(episodes=8, length=20, image_size=16), root / "ds.h5")
    cfg = OfflineConfig(
        steps=10,
        batch_size=16,
        network=NetworkConfig(latent_dim=16, hidden_dim=32, cnn_channels=8),
    )
    train_offline(
        load_dataset(root / "ds.h5"), root / "run", cfg, keys_dir=None, resume=False, progress=False
    )
    return root / "run"


def fresh_run(offline_run: Path, tmp_path: Path) -> Path:
    """A private copy of the session's offline run (the daemon writes into its run directory)."""
    run = tmp_path / "run"
    shutil.copytree(offline_run, run)
    return run


def start_daemon(processes: Processes, run: Path, port: int, *extra: str) -> subprocess.Popen:
    """`reachsafe daemon serve` on 127.0.0.1:port with small learner settings."""
    return processes.reachsafe(
        "daemon", "serve", "--run", str(run), "--bind", f"tcp://127.0.0.1:{port}", "--batch-size", "16",
        "--replay.warmup-steps", "8", *extra, name=f"daemon-{port}-{len(processes.procs)}",
    )  # fmt: skip


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    """A fresh `reachsafe keys generate` directory (signing + CurveZMQ pairs)."""
    from reachsafe.protocol.keys import generate_keys

    generate_keys(tmp_path / "keys")
    return tmp_path / "keys"
