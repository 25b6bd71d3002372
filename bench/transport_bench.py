"""Transport benchmark: trainer ingest from 8 robots on loopback vs a bare PUSH/PULL ceiling.

Every row moves the same encoded `steps` frames, interleaved in the same run:
- ceiling: 8 PUSH sockets → one PULL that only receives (no decode, no store, no ACK);
- ingest: 8 DEALER robots → the daemon's real :class:`reachsafe.trainer.daemon.ingest.IngestServer`
  (decode, validate, two-stage pipelined group commit to the durable store, ACK), each robot with the
  runtime's window of unacked batches (credit-based flow control), with the store on disk, on
  tmpfs, and on disk without fsync (what durability costs);
- disk line: the same bytes written to a file on disk in the largest groups the windows allow
  (robots x window batches), one fsync per group, no network: no durable ingest can beat it.
Reported: MB/s, steps/s, ratio to the ceiling (target ≥ 0.7) and CPU seconds of
this process (all threads) per GB moved.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import queue
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zmq

from reachsafe.protocol.codec import decode, encode
from reachsafe.protocol.messages import Ack, Hello, Steps
from reachsafe.protocol.sockets import client_socket, server_socket
from tests.fixtures.step_batches import synthetic_columns

logger = logging.getLogger(__name__)

OBS_SHAPE = (64, 64, 3)
ACTION_DIM = 2


def encoded_batches(robot: str, n_batches: int, batch_steps: int) -> list[bytes]:
    return [
        encode(Steps(robot_id=robot, stream_id="s0", seq=i, first_step=i * batch_steps,
                     columns=synthetic_columns(batch_steps, i * batch_steps)))
        for i in range(n_batches)
    ]  # fmt: skip


def hello_frame(first_batch: bytes) -> bytes:
    """The `hello` a robot sends before the steps of ``first_batch``'s stream (ingest refuses steps without one)."""
    steps = decode(first_batch)
    assert isinstance(steps, Steps)
    return encode(Hello(robot_id=steps.robot_id, stream_id=steps.stream_id, runtime_version="bench",
                        bundle_version=-1, obs_shape=OBS_SHAPE, action_dim=ACTION_DIM, resume_seq=0))  # fmt: skip


def ceiling(frames: list[list[bytes]]) -> float:
    """Seconds for a bare PUSH/PULL to move every frame from len(frames) pushers to one puller."""
    ctx = zmq.Context()
    pull = server_socket(ctx, zmq.PULL, "tcp://127.0.0.1:*")
    endpoint = pull.last_endpoint.decode()
    total = sum(len(f) for f in frames)
    start = threading.Barrier(len(frames) + 1)

    def push(batch: list[bytes]) -> None:
        sock = client_socket(ctx, zmq.PUSH, endpoint)
        start.wait()
        for frame in batch:
            sock.send(frame, copy=False)
        sock.close(linger=-1)

    threads = [threading.Thread(target=push, args=(f,)) for f in frames]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.monotonic()
    for _ in range(total):
        pull.recv(copy=False)
    elapsed = time.monotonic() - t0
    for t in threads:
        t.join()
    pull.close()
    ctx.term()
    return elapsed


def ingest(frames: list[list[bytes]], store_dir: Path, window: int, sync: bool = True) -> tuple[float, int]:
    """Seconds until the real ingest server has durably stored and ACKed every frame; steps stored."""
    from reachsafe.trainer.daemon.ingest import IngestServer
    from reachsafe.trainer.daemon.store import StepStore

    ctx = zmq.Context()
    router = server_socket(ctx, zmq.ROUTER, "tcp://127.0.0.1:*")
    endpoint = router.last_endpoint.decode()
    store = StepStore(store_dir / "steps", sync=sync)
    sink: queue.SimpleQueue = queue.SimpleQueue()
    server = IngestServer(router, store, OBS_SHAPE, ACTION_DIM, lambda m, e: sink.put(m.n_steps))
    stop = threading.Event()
    serve = threading.Thread(target=server.serve, args=(stop,), kwargs={"poll_ms": 5})
    serve.start()
    start = threading.Barrier(len(frames) + 1)

    def robot(batch: list[bytes]) -> None:
        sock = client_socket(ctx, zmq.DEALER, endpoint)
        sock.send(hello_frame(batch[0]))
        start.wait()
        sent, acked = 0, -1
        while acked < len(batch) - 1:
            while sent < len(batch) and sent - acked <= window:
                sock.send(batch[sent], copy=False)
                sent += 1
            if sock.poll(5000):
                msg = decode(sock.recv())
                if isinstance(msg, Ack):
                    acked = max(acked, msg.seq)
            else:
                raise RuntimeError("no ACK from the ingest server for 5 s")
        sock.close()

    threads = [threading.Thread(target=robot, args=(f,)) for f in frames]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.monotonic()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    stop.set()
    serve.join()
    router.close()
    ctx.term()
    stored = store.steps_stored
    store.close()
    return elapsed, stored


def disk_line(frames: list[list[bytes]], store_dir: Path, group: int) -> float:
    """Seconds to append every frame to one file in groups of ``group`` frames, fsync per group."""
    flat = [f for fs in frames for f in fs]
    fd = os.open(store_dir / "disk-line.bin", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    t0 = time.monotonic()
    try:
        for i in range(0, len(flat), group):
            chunk = flat[i : i + group]
            if os.writev(fd, chunk) != sum(len(c) for c in chunk):
                raise RuntimeError("short write in the disk line")
            os.fsync(fd)
        return time.monotonic() - t0
    finally:
        os.close(fd)


def _timed(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    """(wall s, CPU s of this process over all threads, fn's result)."""
    w, c = time.monotonic(), time.process_time()
    out = fn()
    return time.monotonic() - w, time.process_time() - c, out


def main(
    robots: int = 8, batches: int = 150, batch_steps: int = 16, window: int = 8, repeats: int = 5
) -> dict[str, Any]:
    frames = [encoded_batches(f"robot{r}", batches, batch_steps) for r in range(robots)]
    total_bytes = sum(len(f) for fs in frames for f in fs)
    total_steps = robots * batches * batch_steps
    tmpfs = "/dev/shm" if Path("/dev/shm").is_dir() else None  # separates transport cost from the disk's
    runs: dict[str, tuple[str | None, bool]] = {
        "store on disk": (None, True),
        "store on disk, no fsync": (None, False),
    }
    if tmpfs:
        runs["store on tmpfs"] = (tmpfs, True)
    walls: dict[str, list[float]] = {}
    cpus: dict[str, list[float]] = {}

    def keep(name: str, wall: float, cpu: float) -> None:
        walls.setdefault(name, []).append(wall)
        cpus.setdefault(name, []).append(cpu)

    for _ in range(repeats):  # interleaved, so that load from other processes hits every row alike
        wall, cpu, _ = _timed(lambda: ceiling(frames))
        keep("ceiling", wall, cpu)
        for name, (where, sync) in runs.items():
            with tempfile.TemporaryDirectory(prefix="reachsafe-bench-", dir=where) as tmp:
                wall, cpu, (_, stored) = _timed(lambda: ingest(frames, Path(tmp), window, sync))  # noqa: B023
            if stored != total_steps:
                raise RuntimeError(f"ingest ({name}) stored {stored} steps, expected {total_steps}")
            keep(name, wall, cpu)
        with tempfile.TemporaryDirectory(prefix="reachsafe-bench-") as tmp:
            wall, cpu, _ = _timed(lambda: disk_line(frames, Path(tmp), robots * window))  # noqa: B023
            keep("disk", wall, cpu)
    mb, gb = total_bytes / 1e6, total_bytes / 1e9
    ceiling_s, ceiling_med = min(walls["ceiling"]), statistics.median(walls["ceiling"])
    labels = {
        "ceiling": "bare PUSH/PULL (ceiling)",
        "disk": f"disk line: write + fsync per {robots * window} frames, no network",
    }
    table = [
        {"path": labels.get(name, f"trainer ingest, {name}"), "MB_per_s": mb / min(w), "steps_per_s": total_steps / min(w),
         "ratio": ceiling_s / min(w), "median_MB_per_s": mb / statistics.median(w),
         "median_ratio": ceiling_med / statistics.median(w), "cpu_s_per_GB": statistics.median(cpus[name]) / gb}
        for name, w in walls.items()
    ]  # fmt: skip
    cpu = {name: statistics.median(c) / gb for name, c in cpus.items()}
    disk_mbs, durable_mbs = mb / min(walls["disk"]), mb / min(walls["store on disk"])
    floor_ratio = cpu["ceiling"] / (cpu["ceiling"] + cpu["disk"])  # receive + write, nothing else
    disk_verdict = (
        f"The disk is not the limit: the disk line writes and fsyncs the same bytes at {disk_mbs:.0f} MB/s."
        if disk_mbs > 1.5 * durable_mbs
        else f"Durable ingest is close to the disk line ({disk_mbs:.0f} MB/s with fsync): the disk bounds it here."
    )
    return {
        "title": "Transport: trainer ingest from 8 robots vs bare PUSH/PULL (loopback, same bytes, same run)",
        "table": table,
        "robots": robots,
        "frame_bytes": total_bytes // (robots * batches),
        "ratio_disk": ceiling_s / min(walls["store on disk"]),
        "notes": f"{robots} robots x {batches} batches x {batch_steps} steps of 64x64x3 frames ({mb:.0f} MB) per row; "
        "ingest = zero-copy receive, decode (frames stay views of the received buffer) + validate, group commit "
        "pipelined over two threads (one group's segment writev + fsync while the previous group's SQLite index "
        "commit, WAL synchronous=FULL, runs, while the ingest thread receives the next group) + ACK, "
        f"{window} unacked batches per robot; {repeats} rounds, rows interleaved; MB_per_s and ratio: best round, "
        "median_*: median round (the machine is shared, so rounds vary); cpu_s_per_GB (median) counts every thread "
        f"of the process (senders included) on a {os.cpu_count()}-core machine; target ratio 0.7. "
        f"Why ingest stays below the target here: the ingest rows are CPU-bound, and durable ingest costs "
        f"{cpu['store on disk']:.2f} CPU-s/GB against the ceiling's {cpu['ceiling']:.2f} "
        f"(ratio of the two: {cpu['ceiling'] / cpu['store on disk']:.2f}). Receiving alone (the ceiling) plus "
        f"writing + fsyncing alone (the disk line, {cpu['disk']:.2f}) already cost "
        f"{cpu['ceiling'] + cpu['disk']:.2f} CPU-s/GB, so while CPU is the limit (as on this shared machine) "
        f"no durable ingest in this process could pass a ratio of about {floor_ratio:.2f}; the rest is the Python "
        f"decode + validation of every batch and the ACK traffic. {disk_verdict}",
    }


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--robots", type=int, default=8)
    ap.add_argument("--batches", type=int, default=150)
    ap.add_argument("--batch-steps", type=int, default=16)
    ap.add_argument("--window", type=int, default=8)
    a = ap.parse_args()
    print(json.dumps(main(a.robots, a.batches, a.batch_steps, a.window), indent=1))
