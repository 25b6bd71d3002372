"""`reachsafe daemon serve`: the trainer daemon a lab leaves running.

Three threads: ingest (ROUTER → durable store → ACK; bundles and heartbeats out), the learner
(VPA then SAC-Lag on the stored data, bundles every N updates or T seconds, checkpoints), and the
main thread, which writes RUN/status.json every second and turns SIGTERM / SIGINT into a clean
stop (final checkpoint, final status, exit 0). If the ingest or learner thread fails (or does
not stop within a minute), the daemon stops too and exits with status 1 (`EXIT_THREAD_FAILED`),
state "failed" in the status file, so that a supervisor (systemd ``Restart=on-failure``, see
docs/deploy.md) restarts it.

RUN/online/ holds the step store (steps/), the online checkpoint (latest.pt) and
TensorBoard scalars (tb/); RUN/bundles/ the shipped bundles.
"""

from __future__ import annotations

import argparse
import logging
import os
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq

from reachsafe.protocol.codec import decode
from reachsafe.protocol.config import add_config_arguments
from reachsafe.protocol.constants import check_step_values
from reachsafe.protocol.errors import ContractError
from reachsafe.protocol.keys import load_signing_key
from reachsafe.protocol.messages import Steps
from reachsafe.protocol.sockets import ServerCurve, server_socket
from reachsafe.signals import stop_on_signals
from reachsafe.trainer.algos.config import add_device_argument
from reachsafe.trainer.algos.online.config import OnlineConfig
from reachsafe.trainer.daemon.bundles import BundleShelf
from reachsafe.trainer.daemon.ingest import IngestServer
from reachsafe.trainer.daemon.learner import DaemonLearner
from reachsafe.trainer.daemon.status import STATUS_FILE, write_status
from reachsafe.trainer.daemon.store import StepStore
from reachsafe.trainer.data.dataset import add_dataset_argument
from reachsafe.trainer.data.replay import StepReplay
from reachsafe.trainer.runs.metrics import MetricsWriter
from reachsafe.trainer.runs.run_dir import RunDir, resolve_signing_key
from reachsafe.trainer.runs.start import shield_for_ship, start_online

logger = logging.getLogger(__name__)

STATUS_EVERY_S = 1.0
#: How long a stopping daemon waits for each thread (the learner's final checkpoint included).
JOIN_TIMEOUT_S = 60.0
#: Exit status when a thread failed or hung: a supervisor should restart the daemon.
EXIT_THREAD_FAILED = 1


@dataclass(frozen=True)
class OnlinePaths:
    root: Path

    @property
    def store(self) -> Path:
        return self.root / "online" / "steps"

    @property
    def checkpoint(self) -> Path:
        return self.root / "online" / "latest.pt"

    @property
    def tensorboard(self) -> Path:
        return self.root / "online" / "tb"

    @property
    def status(self) -> Path:
        return self.root / STATUS_FILE


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, type=Path, help="Run directory of `reachsafe train offline`.")
    p.add_argument("--bind", required=True, help="ROUTER endpoint, e.g. tcp://127.0.0.1:5555.")
    p.add_argument(
        "--keys",
        type=Path,
        help="Key directory (`reachsafe keys generate`): signing.key signs bundles; with trainer.key_secret "
        "the socket uses CURVE and admits the robot keys in KEYS/robots/*.key (else KEYS/robot.key).",
    )
    add_dataset_argument(p, "Offline dataset file(s) for replay mixing and VPA (default: the run's).")
    p.add_argument("--resume", action="store_true", help="Continue from RUN/online/latest.pt.")
    p.add_argument("--config", type=Path, help="OnlineConfig YAML (kind: online); options below override it.")
    add_device_argument(p)
    add_config_arguments(p, OnlineConfig)


def refill_replay(store: StepStore, replay: StepReplay) -> int:
    """Load the newest stored steps into the replay (after a restart); returns the steps loaded.

    Batches that break the step record's value rules (stored by a daemon from before they were
    checked) are left out, with a warning.
    """
    loaded = 0
    for b in store.iter_batches(after_row=store.row_before_last(replay.capacity)):
        msg = decode(b.payload)
        assert isinstance(msg, Steps)
        try:
            check_step_values(msg.columns, msg.first_step)
        except ContractError as exc:
            logger.warning(
                "stored batch %s/%s seq %d left out of the replay: %s", b.robot_id, b.stream_id, b.seq, exc
            )
            continue
        replay.add_batch((msg.robot_id, msg.stream_id), msg.first_step, msg.columns)
        loaded += msg.n_steps
    if loaded:
        logger.info("replay refilled with %d stored steps (%d transitions)", loaded, len(replay))
    return loaded


def open_socket(ctx: zmq.Context, bind: str, keys: Path | None) -> tuple[zmq.Socket, ServerCurve | None]:
    curve = None
    if keys is not None and (keys / "trainer.key_secret").is_file():
        curve = ServerCurve.from_key_dir(ctx, keys)
    return server_socket(ctx, zmq.ROUTER, bind, curve=curve), curve


def serve(
    cfg: OnlineConfig,
    run_dir: Path,
    bind: str,
    keys: Path | None = None,
    dataset_paths: Sequence[Path] | None = None,
    resume: bool = False,
    stop: threading.Event | None = None,
    device: str = "cpu",
) -> int:
    """Serve robots on ``bind`` until ``stop`` is set or SIGTERM / SIGINT arrives; returns the exit code:
    0 after a clean stop, `EXIT_THREAD_FAILED` when a thread failed or did not stop.

    ``keys``: signing.key for bundles and, with trainer.key_secret, CURVE for the socket.
    ``dataset_paths``: offline data for replay mixing and VPA (default: the run's).
    ``device``: where the learner trains (``auto``, ``cpu``, ``cuda``, ``cuda:N``); bundles are
    exported from fp32 CPU copies of its weights.
    """
    run, paths = RunDir(run_dir), OnlinePaths(run_dir)
    start = start_online(run, paths.checkpoint, cfg, resume, dataset_paths, device, reserve_cores=1)
    learner, offline_ckpt, dataset, resume = (
        start.learner,
        start.offline_checkpoint,
        start.dataset,
        start.resumed,
    )
    spec = learner.agent.spec
    store = StepStore(paths.store)
    replay = StepReplay(cfg.replay.capacity, spec.obs_shape, spec.action_dim)
    refill_replay(store, replay)
    signing_key = load_signing_key(resolve_signing_key(keys, run))
    shelf = BundleShelf(
        run.root, signing_key, shield_for_ship(cfg, offline_ckpt, dataset, replay, learner.shield_budget),
        cfg.daemon.keep_bundles,
        selection=lambda: {"kappa_t": cfg.expansion.kappa_t, "kappa_c": learner.kappa_c()},
    )  # fmt: skip
    metrics = MetricsWriter(paths.tensorboard)
    inbox: queue.SimpleQueue = queue.SimpleQueue()

    ctx = zmq.Context()
    sock, curve = open_socket(ctx, bind, keys)
    ingest = IngestServer(sock, store, spec.obs_shape, spec.action_dim, lambda m, eps: inbox.put((m, eps)))
    ingest.current_bundle = shelf.latest_message()
    dl = DaemonLearner(
        learner, replay, dataset, cfg, shelf.ship, ingest.broadcast, paths.checkpoint, metrics, inbox,
        vpa_done=bool(resume and start.checkpoint.get("vpa_done")),
        online_steps=int(start.checkpoint.get("online_steps", 0)) if resume else 0,
        bundle_version=shelf.latest_version,
    )  # fmt: skip

    stop = stop or threading.Event()
    failed: list[str] = []  # names of the threads that raised
    threads = [
        threading.Thread(target=_guard(ingest.serve, stop, failed), args=(stop,), name="ingest", daemon=True),
        threading.Thread(target=_guard(dl.run, stop, failed), args=(stop,), name="learner", daemon=True),
    ]
    started = time.monotonic()
    security = "curve" if curve is not None else "plain"
    with stop_on_signals(stop.set, "stopping (checkpoint, then exit)"):
        for t in threads:
            t.start()
        logger.info("trainer daemon serving on %s (%s), run %s", bind, security, run.root)
        try:
            while not stop.wait(STATUS_EVERY_S):
                status = _write_status(paths.status, "running", bind, security, started, ingest, dl)
                metrics.scalars(
                    {"fleet/robots": len(status["robots"]), "fleet/steps_per_s": status["steps_per_s"],
                     "fleet/steps_stored": status["steps_stored"], "fleet/errors": status["errors"],
                     "fleet/duplicates": status["duplicates"], "online/updates_per_s": status["updates_per_s"]},
                    int(status["uptime_s"]),
                )  # fmt: skip
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=JOIN_TIMEOUT_S)
            hung = [t.name for t in threads if t.is_alive()]
            if hung:
                logger.error("thread(s) %s did not stop within %.0f s", ", ".join(hung), JOIN_TIMEOUT_S)
            state = "failed" if failed or hung else "stopped"
            _write_status(paths.status, state, bind, security, started, ingest, dl)
            if not hung:  # a hung thread may still use its sockets, and would block ctx.term() for ever
                ingest.close()
                sock.close()
                if curve is not None:
                    curve.close()
                ctx.term()
                store.close()
            metrics.close()
    if state == "failed":
        logger.error("trainer daemon stopped after a failure (exit %d)", EXIT_THREAD_FAILED)
        return EXIT_THREAD_FAILED
    logger.info("trainer daemon stopped")
    return 0


def _guard(fn: Any, stop: threading.Event, failed: list[str]) -> Any:
    """Run a thread body; if it dies, log it, note it in ``failed`` and stop the whole daemon rather
    than limp on (the exit status then says it failed)."""

    def body(*a: Any) -> None:
        try:
            fn(*a)
        except BaseException:
            name = threading.current_thread().name
            logger.exception("%s thread failed; stopping the daemon", name)
            failed.append(name)
            stop.set()

    return body


def _write_status(
    path: Path, state: str, bind: str, security: str, started: float, ingest: IngestServer, dl: DaemonLearner
) -> dict[str, Any]:
    status = {
        "state": state,
        "pid": os.getpid(),
        "bind": bind,
        "security": security,
        "uptime_s": time.monotonic() - started,
        "written_unix": time.time(),
        **ingest.snapshot(),
        **dl.status(),
    }
    try:
        write_status(path, status)
    except OSError as exc:
        logger.warning("cannot write %s: %s", path, exc)
    return status
