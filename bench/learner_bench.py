"""Learner benchmark: offline (FOSP-lite) and online (SAC-Lag) updates/s and samples/s.

For batch 32 and 256 on every device present (the CPU always; CUDA when there is a GPU): fp32 and
bf16 autocast, torch.compile off and on, one process and data-parallel processes (offline: 2 gloo
processes × 1 thread against 1 process × 1 and × 2 threads on the CPU; one process per GPU with
NCCL), and the trainer as it was before this benchmark's issue (commit ``BASELINE_REV``, built
from git) on the CPU, measured in the same run. 64×64×3 frames, the default networks.

Every variant runs in its own warm worker process; a group (one kind and batch) starts all its
workers, warms them up with ``WARM_UPDATES`` updates on the same seed and batches (their losses
after those updates are the "same losses" check), then times them in turns, ``ROUNDS`` rounds of
about ``ROUND_S`` seconds each, so that the load of a shared machine falls on every variant alike;
the best and the median round are reported, and the CPU time per update (which other processes'
load changes least). An update includes sampling its batch from the dataset in memory.

Run alone with ``python -m bench.learner_bench``; ``make bench`` calls :func:`main`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from reachsafe.protocol.sockets import free_tcp_port

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
#: the trainer before issue #26 (devices, the leaner CPU path, data-parallel learners)
BASELINE_REV = "ac6cd85"
BATCHES = (32, 256)
WARM_UPDATES = 5
ROUNDS = 5
ROUND_S = 1.5
IMAGE = 64
#: the parts a baseline tree needs, at their place in the reachsafe namespace (pyproject's package-dir)
PARTS = ("protocol", "hardware", "edge_runtime", "sim_bridge", "trainer")


@dataclass(frozen=True)
class Variant:
    """One measured configuration."""

    kind: str  # offline | online
    batch: int
    device: str = "cpu"
    bf16: bool = False
    compile: bool = False
    threads: int = 1
    processes: int = 1
    before: bool = False  # the trainer at BASELINE_REV (CPU, fp32, eager)

    @property
    def label(self) -> str:
        if self.before:
            return f"before ({BASELINE_REV})"
        parts = ["bf16" if self.bf16 else "fp32"] + (["compile"] if self.compile else [])
        return " + ".join(parts)


def variants(kind: str, batch: int, gpus: int) -> list[Variant]:
    """Every variant of one group: the baseline, then precision × compile, threads and processes."""
    out = [Variant(kind, batch, before=True)]
    for device in ["cpu"] + (["cuda"] if gpus else []):
        out += [
            Variant(kind, batch, device, bf16, compiled)
            for bf16 in (False, True)
            for compiled in (False, True)
        ]
    if kind == "offline":
        out += [Variant(kind, batch, threads=2), Variant(kind, batch, processes=2)]
        if gpus >= 2:
            out.append(Variant(kind, batch, "cuda", processes=gpus))
    return out


# ----- the worker: one process (or one rank) of one variant ------------------------------------------
def worker_main(spec: dict[str, Any]) -> None:
    """Build the learner of ``spec`` and answer ``run N`` lines on stdin with one JSON line each:
    the seconds (wall, CPU) of N updates and the losses of the last one."""
    import torch

    variant = Variant(**spec)
    torch.set_num_threads(variant.threads)
    if not variant.before:
        from reachsafe.trainer.models.device import keep_freed_memory

        keep_freed_memory()  # what every run of this trainer does at its start
    with _process_group(variant) as (device, replica):
        update = _learner(variant, device, replica)
        for line in sys.stdin:
            n = int(line.split()[1])
            t0, c0 = time.monotonic(), time.process_time()
            for _ in range(n):
                metrics = update()
            reply = {"seconds": time.monotonic() - t0, "cpu_seconds": time.process_time() - c0,
                     "updates": n, "metrics": metrics}  # fmt: skip
            print(json.dumps(reply), flush=True)


@contextmanager
def _process_group(variant: Variant) -> Iterator[tuple[Any, Any]]:
    """(device, replica) of this worker; data-parallel workers join their group."""
    import torch

    if variant.before:
        yield torch.device("cpu"), None
        return
    from reachsafe.trainer.runs.parallel import join_process_group

    with join_process_group(variant.device) as group:
        yield group.device, group.replica


def _learner(variant: Variant, device: Any, replica: Any) -> Any:
    """A zero-argument function that samples a batch and makes one update; returns its metrics."""
    import torch

    from reachsafe.trainer.algos.offline.config import OfflineConfig
    from reachsafe.trainer.algos.offline.learner import OfflineLearner, agent_spec_for
    from tests.fixtures.point_dataset import make_point_dataset

    dataset = make_point_dataset(episodes=40, length=50, seed=0, image_size=IMAGE)
    compute = {} if variant.before else {"compute": {"bf16": variant.bf16, "compile": variant.compile}}
    rng = np.random.default_rng(0)
    placement = {} if variant.before else {"device": device}
    if variant.kind == "offline":
        cfg = OfflineConfig.from_dict({"batch_size": variant.batch, "imagine": {"start": 0}, **compute})
        if replica is not None:
            placement["replica"] = replica
        learner = OfflineLearner(agent_spec_for(dataset, cfg), cfg, **placement)
        if replica is None:  # the baseline's sampler knows no rows
            return lambda: learner.update(dataset.sample_sequences(variant.batch, learner.horizon, rng))
        rows = replica.rows(replica.local_rows(variant.batch))
        return lambda: learner.update(dataset.sample_sequences(variant.batch, learner.horizon, rng, rows))
    from reachsafe.trainer.algos.online.config import OnlineConfig
    from reachsafe.trainer.algos.online.learner import OnlineLearner
    from reachsafe.trainer.models.networks import Agent

    cfg = OnlineConfig.from_dict({"batch_size": variant.batch, **compute})
    torch.manual_seed(0)
    online = OnlineLearner(Agent(agent_spec_for(dataset, OfflineConfig())), cfg, **placement)
    return lambda: online.update(dataset.sample(variant.batch, rng))


# ----- the bench: workers in turns ------------------------------------------------------------------
class Worker:
    """The process(es) of one variant: one, or one per data-parallel rank."""

    def __init__(self, variant: Variant, baseline_root: Path | None, logdir: Path, name: str) -> None:
        self.variant = variant
        self.procs: list[subprocess.Popen] = []
        self.logs: list[IO[bytes]] = []
        spec = json.dumps(dataclasses.asdict(variant))
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        cwd = REPO
        if variant.before:  # the baseline's reachsafe package comes first on sys.path: its cwd
            assert baseline_root is not None
            cwd = baseline_root
        if variant.processes > 1:
            env.update(WORLD_SIZE=str(variant.processes), LOCAL_WORLD_SIZE=str(variant.processes),
                       MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_tcp_port()))  # fmt: skip
        for rank in range(variant.processes):
            log = (logdir / f"{name}-{rank}.log").open("wb")
            rank_env = {**env, "RANK": str(rank), "LOCAL_RANK": str(rank)} if variant.processes > 1 else env
            self.logs.append(log)
            self.procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "bench.learner_bench", "--worker", spec],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=log,
                    cwd=cwd,
                    env=rank_env,
                )  # fmt: skip
            )

    def run(self, n: int) -> dict[str, Any]:
        """N updates on every rank; rank 0's reply."""
        for p in self.procs:
            assert p.stdin is not None
            p.stdin.write(f"run {n}\n".encode())
            p.stdin.flush()
        replies = [self._reply(p, i) for i, p in enumerate(self.procs)]
        return replies[0]

    def _reply(self, proc: subprocess.Popen, rank: int) -> dict[str, Any]:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            self.logs[rank].flush()
            tail = Path(self.logs[rank].name).read_text(errors="replace")[-3000:]
            raise RuntimeError(f"worker {self.variant} rank {rank} died:\n{tail}")
        return json.loads(line)

    def close(self) -> None:
        for p in self.procs:
            if p.stdin is not None:
                p.stdin.close()
        for p in self.procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
        for log in self.logs:
            log.close()


def measure_group(group: list[Variant], baseline_root: Path | None, logdir: Path) -> list[dict[str, Any]]:
    """Warm every variant of the group up, then time them in turns; one row per variant."""
    measured = [v for v in group if baseline_root is not None or not v.before]
    workers = [Worker(v, baseline_root, logdir, f"{v.kind}-{v.batch}-{i}") for i, v in enumerate(measured)]
    try:
        warm = {w.variant: w.run(WARM_UPDATES) for w in workers}  # compiles, and the same-seed losses
        per_update = {v: r["seconds"] / r["updates"] for v, r in warm.items()}
        counts = {v: max(2, round(ROUND_S / t)) for v, t in per_update.items()}
        rounds: dict[Variant, list[dict[str, Any]]] = {w.variant: [] for w in workers}
        for _ in range(ROUNDS):
            for w in workers:
                rounds[w.variant].append(w.run(counts[w.variant]))
    finally:
        for w in workers:
            w.close()
    return [_row(v, rounds[v], warm[v], warm.get(group[0])) for v in rounds]


def _row(
    v: Variant, rounds: list[dict[str, Any]], warm: dict[str, Any], before: dict[str, Any] | None
) -> dict[str, Any]:
    rates = [r["updates"] / r["seconds"] for r in rounds]
    cpu = statistics.median(r["cpu_seconds"] / r["updates"] for r in rounds)
    loss_key = "train/loss_q_h" if v.kind == "offline" else "online/loss_q_h"
    loss = warm["metrics"][loss_key]
    row = {
        "kind": v.kind, "batch": v.batch, "device": v.device, "trainer": v.label,
        "processes x threads": f"{v.processes} x {v.threads}" if v.device == "cpu" else f"{v.processes} GPU",
        "updates_per_s": max(rates), "median_updates_per_s": statistics.median(rates),
        "samples_per_s": max(rates) * v.batch, "cpu_ms_per_update": 1e3 * cpu,
        f"loss_q_h after {WARM_UPDATES}": loss,
    }  # fmt: skip
    if before is not None:
        row["rel. loss diff vs before"] = abs(loss - before["metrics"][loss_key]) / abs(
            before["metrics"][loss_key]
        )
    return row


def baseline_tree(rev: str, dest: Path) -> Path:
    """The trainer at ``rev`` as an importable ``reachsafe`` package under ``dest`` (from git)."""
    archive = dest / "src.tar"
    with archive.open("wb") as f:
        subprocess.run(["git", "-C", str(REPO), "archive", rev, "reachsafe", *PARTS], stdout=f, check=True)
    src = dest / "src"
    with tarfile.open(archive) as tar:
        tar.extractall(src, filter="data")
    root = dest / "root"
    shutil.copytree(src / "reachsafe", root / "reachsafe")
    for part in PARTS:
        shutil.copytree(src / part, root / "reachsafe" / part)
    return root


def _cuda_devices() -> tuple[int, list[str]]:
    import torch

    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return n, [torch.cuda.get_device_name(i) for i in range(n)]


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ratios(rows: list[dict[str, Any]]) -> dict[tuple[str, int], dict[str, float]]:
    """Per (kind, batch), in fp32: updates/s (best round) of the new CPU trainer over the baseline's,
    the same in CPU time per update, of 2 CPU processes and of 2 threads over 1; with a GPU, one GPU
    over one CPU thread and all GPUs over one."""
    out: dict[tuple[str, int], dict[str, float]] = {}
    for kind, batch in {(r["kind"], r["batch"]) for r in rows}:
        fp32 = {(r["device"], r["trainer"], r["processes x threads"]): r
                for r in rows if (r["kind"], r["batch"]) == (kind, batch)}  # fmt: skip
        new, before = (
            fp32.get(("cpu", "fp32", "1 x 1")),
            fp32.get(("cpu", f"before ({BASELINE_REV})", "1 x 1")),
        )
        gpu = fp32.get(("cuda", "fp32", "1 GPU"))
        ratios = {}
        if new and before:
            ratios["new / before"] = new["updates_per_s"] / before["updates_per_s"]
            ratios["new / before in CPU time"] = before["cpu_ms_per_update"] / new["cpu_ms_per_update"]
        pairs = [("2 processes / 1", new, ("cpu", "fp32", "2 x 1")), ("2 threads / 1", new, ("cpu", "fp32", "1 x 2")),
                 ("1 GPU / 1 CPU thread", new, ("cuda", "fp32", "1 GPU"))]  # fmt: skip
        pairs += [
            (f"{k[2]}s / 1", gpu, k) for k in fp32 if k[0] == "cuda" and k[1] == "fp32" and k[2] != "1 GPU"
        ]
        for name, base, key in pairs:
            if base and key in fp32:
                ratios[name] = fp32[key]["updates_per_s"] / base["updates_per_s"]
        out[(kind, batch)] = ratios
    return out


def main(batches: tuple[int, ...] = BATCHES, kinds: tuple[str, ...] = ("offline", "online")) -> dict:
    t0 = time.monotonic()
    gpus, gpu_names = _cuda_devices()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="reachsafe-learner-bench-") as tmp:
        tmpdir = Path(tmp)
        try:
            baseline: Path | None = baseline_tree(BASELINE_REV, tmpdir)
        except (subprocess.CalledProcessError, OSError) as exc:
            logger.warning("no baseline trainer from git (%s): its rows are left out", exc)
            baseline = None
        for kind in kinds:
            for batch in batches:
                logger.info("learner bench: %s batch %d", kind, batch)
                rows += measure_group(variants(kind, batch, gpus), baseline, tmpdir)
    ratios = _ratios(rows)
    ratio_text = "; ".join(
        f"{kind} batch {batch}: " + ", ".join(f"{k} {v:.2f}x" for k, v in r.items())
        for (kind, batch), r in sorted(ratios.items())
    )
    devices = f"CPU: {_cpu_name()}, {os.cpu_count()} cores" + (
        f"; GPU: {', '.join(gpu_names)}" if gpus else "; no GPU present (GPU rows unmeasured)"
    )
    return {
        "title": "Learner: offline and online updates/s by device, precision, compile and processes",
        "table": rows,
        "notes": (
            f"{devices}. Ratios measured in this run (CPU, fp32): {ratio_text}. "
            f"Default networks on {IMAGE}×{IMAGE}×3 frames (point dataset, 2000 steps in memory); offline: "
            "world model and imagination on from the first update; a sample is one sequence of "
            "world_model.horizon = 3 transitions (4 frames); online: a sample is one transition (2 frames), "
            "VPA off, the anchor on. An update includes sampling its batch. "
            f"`before ({BASELINE_REV})` is the trainer before issue #26, built from git and run in the same "
            "bench; every variant starts from the same seed and batches: `loss_q_h after "
            f"{WARM_UPDATES}` is the loss of its {WARM_UPDATES}th update (data-parallel: the mean of the "
            "processes'; fp32 variants agree with `before` to float rounding, bf16 does not). Each variant is "
            f"a warm process; the variants of a row group are timed in turns, {ROUNDS} rounds of about "
            f"{ROUND_S} s: updates_per_s and samples_per_s from the best round, the median round beside them, "
            "cpu_ms_per_update (this process's CPU time, rank 0's for several) from the median round; the "
            "machine is shared, so rounds vary. `processes x threads`: data-parallel processes (gloo) × torch "
            f"threads each; batch is their batch together. Took {time.monotonic() - t0:.0f} s."
        ),
        "command": "python -m bench.run_all learner",
    }


def _cli(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument(
        "--batch", type=int, nargs="+", default=list(BATCHES), help="batch sizes [default: 32 256]"
    )
    parser.add_argument("--kind", nargs="+", default=["offline", "online"], choices=["offline", "online"])
    args = parser.parse_args(argv)
    if args.worker:
        worker_main(json.loads(args.worker))
        return
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    print(json.dumps(main(tuple(args.batch), tuple(args.kind)), indent=1, default=str))


if __name__ == "__main__":
    _cli()
