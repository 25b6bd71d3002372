"""Edge benchmark: policy + shield latency on one CPU thread at 64×64 (int8 and fp32 onnxruntime vs
the same network in eager torch), and missed deadlines at 50 Hz over 10 000 ticks while a new
bundle is swapped in every 1 000 ticks, with the runtime process's resident memory.

The swap run happens in a separate process that imports only the robot side (no torch), so its
resident memory is the runtime's. Run alone with ``python -m bench.edge_bench``; ``make bench``
calls ``main()`` and writes docs/results.md from the returned dict. ``--int8-formats`` compares int8
splits and formats instead (docs/results/int8.md).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

OBS_SHAPE = (64, 64, 3)
ACTION_DIM = 2
LATENCY_RUNS = 2000
SWAP_TICKS = 10_000
SWAP_EVERY = 1_000
RATE_HZ = 50.0
AIM_P99_MS = 5.0
AIM_SPEEDUP = 3.0
AIM_INT8_SPEEDUP = 1.5
AIM_RSS_MB = 200.0


# ----- synthetic hardware for the tick benchmarks (no simulator: it would steal the CPU) -----


def synthetic_robot(obs_shape: tuple[int, int, int] = OBS_SHAPE, action_dim: int = ACTION_DIM):
    """A `Robot` whose camera returns fresh random frames, whose drive discards commands and whose
    signals end an episode every 500 reads."""
    from reachsafe.hardware.base import Camera, Drive, Frame, Signals, TaskSignals
    from reachsafe.hardware.factory import Robot

    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(16, *obs_shape), dtype=np.uint8)

    class SyntheticCamera(Camera):
        features = property(lambda self: {"image_shape": obs_shape})
        _open = _close = lambda self: None
        n = 0

        def _read_latest(self) -> Frame:
            self.n += 1
            return Frame(frames[self.n % len(frames)], time.monotonic(), self.n)

    class NullDrive(Drive):
        features = property(lambda self: {"action_dim": action_dim})
        _open = _close = _stop = lambda self: None

        def _apply(self, action: np.ndarray) -> None:
            pass

    class EpisodicSignals(TaskSignals):
        features = property(lambda self: {})
        _open = _close = lambda self: None
        reads = 0

        def _read(self) -> Signals:
            self.reads += 1
            return Signals(0.0, 0.0, False, self.reads % 500 == 0, self.reads // 500)

    return Robot(SyntheticCamera(), NullDrive(), EpisodicSignals())


# ----- building the graphs and bundles (torch side) ------------------------------------------


def bench_agent(fine_tuned: bool = True):
    """The trainer's agent network at 64×64 with random weights. ``fine_tuned``: π_on and its encoder
    moved away from π_off, as on a robot after online fine-tuning; in an offline bundle they are
    equal and onnxruntime computes the shared branch once."""
    import torch

    from reachsafe.trainer.models.networks import Agent, AgentSpec

    torch.manual_seed(0)
    agent = Agent(AgentSpec(OBS_SHAPE, ACTION_DIM)).eval()
    if fine_tuned:
        with torch.no_grad():
            for p in [*agent.encoder.parameters(), *agent.actor_on.parameters()]:
                p.mul_(1 + 0.1 * torch.randn_like(p))
    return agent


def build_models(out: Path, fine_tuned: bool = True) -> dict[str, Path]:
    """The bench agent exported fp32 and int8 (the shipped recipe); returns {name: onnx path}."""
    from reachsafe.trainer.export.int8 import quantize_int8
    from reachsafe.trainer.export.onnx import export_onnx
    from reachsafe.trainer.models.networks import save_checkpoint

    agent = bench_agent(fine_tuned)
    fp32 = export_onnx(agent, out / "fp32" / "agent.onnx")
    (out / "int8").mkdir(parents=True, exist_ok=True)
    calib = random_frames(64, seed=1)  # used only by static (calibrated) parts of a recipe
    int8 = quantize_int8(fp32, out / "int8" / "agent.onnx", calib, ACTION_DIM)
    save_checkpoint(out / "agent.pt", agent, step=0)
    return {"fp32": fp32, "int8": int8}


def random_frames(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(count, *OBS_SHAPE), dtype=np.uint8)


def write_bundles(models: dict[str, Path], out: Path, count: int) -> tuple[Path, list[Path]]:
    """`count` signed bundles alternating int8/fp32 graphs (versions 1..count) and the key directory."""
    from reachsafe.protocol.bundle import write_bundle
    from reachsafe.protocol.keys import generate_keys, load_signing_key
    from reachsafe.trainer.models.networks import AgentSpec

    keys = out / "keys"
    generate_keys(keys)
    key = load_signing_key(keys / "signing.key")
    spec = AgentSpec(OBS_SHAPE, ACTION_DIM)
    paths = []
    for version in range(1, count + 1):
        kind = "int8" if version % 2 else "fp32"
        manifest = {
            "version": version,
            "parent": version - 1 or None,
            "obs": {"shape": list(OBS_SHAPE), "dtype": "uint8"},
            "action": {"dim": ACTION_DIM, "low": -1, "high": 1},
            "graph": {
                "file": "agent.onnx",
                "inputs": ["obs", "noise"],
                "outputs": ["a_on", "a_off", "q_r", "q_c", "q_h", "candidates"],
                "candidates": spec.candidate_names,
            },
            "quantization": {"shipped": kind, "reason": "benchmark", "report": {}},
            "shield": {"threshold": 0.0},
            "training_step": version,
            "metrics": {},
        }
        paths.append(
            write_bundle(out / f"bundle-v{version}", manifest, {"agent.onnx": models[kind].read_bytes()}, key)
        )
    return keys, paths


# ----- latency: onnxruntime sessions and ticks vs eager torch ----------------------------------


def _percentiles(ms: list[float]) -> tuple[float, float]:
    p50, p99 = np.percentile(ms, [50, 99])
    return float(p50), float(p99)


def _bench_session(path: Path):
    from reachsafe.edge_runtime.inference import AgentSession, SessionOptions

    return AgentSession.from_file(
        path, SessionOptions(intra_op_threads=1, providers=("cpu",), warmup_runs=20)
    )


def inference_latency(paths: dict[str, Path], runs: int = LATENCY_RUNS) -> dict[str, dict[str, float]]:
    """`AgentSession.act` alone, one intra-op thread; {name: {inference_p50_ms, inference_p99_ms}}.
    The graphs take turns of TURN_FRAMES frames (see reachsafe.trainer.export.int8._latency_ms), so
    their ratio is measured in one run."""
    from reachsafe.trainer.export.int8 import TURN_FRAMES

    sessions = {name: _bench_session(path) for name, path in paths.items()}
    frames = random_frames(16, seed=2)
    noise = np.random.default_rng(3).standard_normal((16, ACTION_DIM)).astype(np.float32)
    ms: dict[str, list[float]] = {name: [] for name in sessions}
    for start in range(0, runs, TURN_FRAMES):
        for name, session in sessions.items():
            for i in range(start, min(start + TURN_FRAMES, runs)):
                t0 = time.perf_counter()
                session.act(frames[i % 16], noise[i % 16])
                ms[name].append((time.perf_counter() - t0) * 1e3)
    out = {}
    for name, values in ms.items():
        p50, p99 = _percentiles(values)
        out[name] = {"inference_p50_ms": p50, "inference_p99_ms": p99}
    return out


def tick_latency(path: Path, runs: int = LATENCY_RUNS) -> dict[str, float]:
    """A whole control tick (camera → inference → select → shield → drive → signals → ring)."""
    from reachsafe.edge_runtime.config import EdgeConfig
    from reachsafe.edge_runtime.loop import ActivePolicy, ControlLoop
    from reachsafe.edge_runtime.metrics import Metrics

    session = _bench_session(path)

    class Fixed:
        def at_tick_boundary(self) -> ActivePolicy:
            return ActivePolicy(session, 1, 0.0)

        def observe(self, step: object, inference_failed: bool) -> None:
            pass

    class Discard:
        def add(self, step: object) -> None:
            pass

    robot = synthetic_robot()
    robot.connect()
    metrics = Metrics(window=runs)
    loop = ControlLoop(robot, Fixed(), Discard(), EdgeConfig(rate_hz=RATE_HZ, max_frame_age=1.0), metrics)
    for _ in range(runs):
        loop.tick()
    tick_p50, tick_p99 = metrics.percentiles("edge/tick_ms")
    return {"tick_p50_ms": tick_p50, "tick_p99_ms": tick_p99}


def torch_latency(checkpoint: Path, runs: int = LATENCY_RUNS) -> dict[str, float]:
    """The same network (reachsafe.trainer.models.networks.AgentGraph, same weights) in eager torch, one thread."""
    import torch

    from reachsafe.trainer.models.networks import AgentGraph, load_checkpoint

    torch.set_num_threads(1)
    agent, _ = load_checkpoint(checkpoint)
    graph = AgentGraph(agent.eval()).eval()
    frames = torch.from_numpy(
        np.random.default_rng(2).integers(0, 256, size=(16, 1, *OBS_SHAPE), dtype=np.uint8)
    )
    noise = torch.randn(16, 1, ACTION_DIM)
    ms = []
    with torch.inference_mode():
        for i in range(20):
            graph(frames[i % 16], noise[i % 16])
        for i in range(runs):
            t0 = time.perf_counter()
            graph(frames[i % 16], noise[i % 16])
            ms.append((time.perf_counter() - t0) * 1e3)
    p50, p99 = _percentiles(ms)
    return {"inference_p50_ms": p50, "inference_p99_ms": p99}


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM; unlike ru_maxrss it does not inherit the peak of
    the torch-loaded parent that forked us)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ----- the swap run (separate, torch-free process) --------------------------------------------


def _ack_server(endpoint_box: list[str], stop: threading.Event) -> None:
    """A minimal trainer: ACKs every STEPS batch it receives (cumulatively, per stream)."""
    import zmq

    from reachsafe.protocol.codec import decode, encode
    from reachsafe.protocol.messages import Ack, Steps

    sock = zmq.Context.instance().socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind("tcp://127.0.0.1:*")
    endpoint_box.append(sock.last_endpoint.decode())
    while not stop.is_set():
        if sock.poll(20):
            ident, data = sock.recv_multipart()
            msg = decode(data)
            if isinstance(msg, Steps):
                sock.send_multipart([ident, encode(Ack(stream_id=msg.stream_id, seq=msg.seq))])
    sock.close(0)


def swap_worker(keys: Path, bundles: list[Path], state: Path, ticks: int) -> dict[str, Any]:
    """Run the real loop + bundle manager + uplink + spool at 50 Hz, submitting a bundle every 1 000 ticks."""
    from reachsafe.edge_runtime.bundles import BundleManager, BundleStore
    from reachsafe.edge_runtime.config import EdgeConfig, RollbackConfig
    from reachsafe.edge_runtime.inference import SessionOptions
    from reachsafe.edge_runtime.loop import ControlLoop, Watchdog
    from reachsafe.edge_runtime.metrics import Metrics
    from reachsafe.edge_runtime.spool import Spool
    from reachsafe.edge_runtime.uplink import RobotSpec, Uplink
    from reachsafe.protocol.bundle import load_bundle
    from reachsafe.protocol.keys import load_trusted_keys

    trusted = load_trusted_keys(keys / "signing.pub")
    messages = [load_bundle(b, trusted).to_message() for b in bundles[1:]]
    stop_server = threading.Event()
    box: list[str] = []
    server = threading.Thread(target=_ack_server, args=(box, stop_server), daemon=True)
    server.start()
    deadline = time.monotonic() + 10.0
    while not box:
        if time.monotonic() > deadline or not server.is_alive():
            raise RuntimeError("the stub trainer did not bind within 10 s")
        time.sleep(0.01)
    # random weights: the shield would intervene often and the automatic rollback undo the swaps
    cfg = EdgeConfig(
        rate_hz=RATE_HZ,
        max_frame_age=0.1,
        state_dir=state,
        spool_fsync=True,
        rollback=RollbackConfig(enabled=False),
    )
    metrics = Metrics(window=ticks)
    robot = synthetic_robot()
    robot.connect()
    manager = BundleManager(
        BundleStore(state / "bundles", trusted), OBS_SHAPE, ACTION_DIM, cfg.robot_id,
        SessionOptions(intra_op_threads=1, providers=("cpu",)), cfg.rollback, metrics,
    )  # fmt: skip
    manager.load_initial(bundles[0])
    spool = Spool(cfg.spool_path, cfg.spool_max_bytes, cfg.spool_segment_bytes, cfg.spool_fsync)
    uplink = Uplink(
        cfg, spool, box[0], RobotSpec(cfg.robot_id, "bench", OBS_SHAPE, ACTION_DIM), metrics,
        bundle_version=lambda: manager.active.version if manager.active else -1, on_bundle=manager.submit,
    )  # fmt: skip
    manager.report = uplink.send
    loop = ControlLoop(robot, manager, uplink, cfg, metrics)
    manager.start()
    uplink.start()
    dog = Watchdog(loop, cfg.watchdog_periods).start()
    stop = threading.Event()

    def on_tick() -> None:
        n = int(metrics.counter("edge/ticks"))
        if n % SWAP_EVERY == SWAP_EVERY // 2 and n // SWAP_EVERY < len(messages):
            manager.submit(messages[n // SWAP_EVERY])
        if n >= ticks:
            stop.set()

    t0 = time.monotonic()
    loop.run(stop, on_tick=on_tick)
    wall = time.monotonic() - t0
    dog.stop()
    drained = uplink.close(cfg.drain_timeout)
    manager.stop()
    stop_server.set()
    server.join(5)
    snap = metrics.snapshot()
    rss_mb = peak_rss_mb()
    return {
        "ticks": int(snap["edge/ticks"]),
        "wall_s": wall,
        "deadline_misses": int(snap.get("edge/deadline_misses", 0)),
        "skipped_ticks": int(snap.get("edge/skipped_ticks", 0)),
        "brakes": int(sum(v for k, v in snap.items() if k.startswith("edge/brakes/"))),
        "swaps": int(snap.get("edge/bundles/swaps", 0)),
        "versions_seen": manager.versions_seen,
        "tick_p50_ms": snap["edge/tick_ms_p50"],
        "tick_p99_ms": snap["edge/tick_ms_p99"],
        "tick_max_ms": float(max(metrics.window("edge/tick_ms"))),
        "steps_acked": uplink.steps_acked,
        "all_acked": drained,
        "max_rss_mb": rss_mb,
        "torch_loaded": "torch" in sys.modules,
    }


# ----- main ---------------------------------------------------------------------------------


def main(ticks: int = SWAP_TICKS) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="edge-bench-") as tmp:
        out = Path(tmp)
        models = build_models(out)
        offline = build_models(out / "offline", fine_tuned=False)
        latency = inference_latency(
            {**models, "int8_offline": offline["int8"], "fp32_offline": offline["fp32"]}
        )
        int8 = {**latency["int8"], **tick_latency(models["int8"])}
        fp32 = {**latency["fp32"], **tick_latency(models["fp32"])}
        eager = torch_latency(out / "agent.pt")
        keys, bundles = write_bundles(models, out, count=ticks // SWAP_EVERY + 1)
        cmd = [sys.executable, "-m", "bench.edge_bench", "--swap-worker", str(keys), str(out / "state"), str(ticks),
               *map(str, bundles)]  # fmt: skip
        repo = Path(__file__).resolve().parents[1]
        proc = subprocess.run(
            cmd, cwd=repo, capture_output=True, text=True, timeout=ticks / RATE_HZ * 3 + 120
        )
        if proc.returncode != 0:
            raise RuntimeError(f"swap worker failed:\n{proc.stderr[-3000:]}")
        swap = json.loads(proc.stdout.strip().splitlines()[-1])
    from reachsafe.trainer.export.int8 import SHIPPED_RECIPE, TURN_FRAMES

    best = min(int8["inference_p99_ms"], fp32["inference_p99_ms"])
    speedup_p50 = eager["inference_p50_ms"] / min(int8["inference_p50_ms"], fp32["inference_p50_ms"])
    int8_gain = fp32["inference_p50_ms"] / int8["inference_p50_ms"]
    int8_off, fp32_off = latency["int8_offline"], latency["fp32_offline"]
    int8_gain_off = fp32_off["inference_p50_ms"] / int8_off["inference_p50_ms"]
    table = [
        {"metric": "int8 ORT inference p50 / p99 (ms)", "value": f"{int8['inference_p50_ms']:.3f} / {int8['inference_p99_ms']:.3f}", "aim": f"p99 ≤ {AIM_P99_MS}"},
        {"metric": "int8 ORT tick p50 / p99 (ms)", "value": f"{int8['tick_p50_ms']:.3f} / {int8['tick_p99_ms']:.3f}", "aim": ""},
        {"metric": "fp32 ORT inference p50 / p99 (ms)", "value": f"{fp32['inference_p50_ms']:.3f} / {fp32['inference_p99_ms']:.3f}", "aim": f"p99 ≤ {AIM_P99_MS}"},
        {"metric": "fp32 ORT tick p50 / p99 (ms)", "value": f"{fp32['tick_p50_ms']:.3f} / {fp32['tick_p99_ms']:.3f}", "aim": ""},
        {"metric": "int8 speedup over fp32 (inference p50, same run)", "value": f"{int8_gain:.2f}x", "aim": f"≥ {AIM_INT8_SPEEDUP}x"},
        {"metric": "offline bundle (π_on = π_off): int8 / fp32 inference p50 (ms), speedup", "value": f"{int8_off['inference_p50_ms']:.3f} / {fp32_off['inference_p50_ms']:.3f}, {int8_gain_off:.2f}x", "aim": ""},
        {"metric": "eager torch inference p50 / p99 (ms)", "value": f"{eager['inference_p50_ms']:.3f} / {eager['inference_p99_ms']:.3f}", "aim": ""},
        {"metric": "speedup vs eager torch (p50, best ORT)", "value": f"{speedup_p50:.2f}x", "aim": f"≥ {AIM_SPEEDUP}x"},
        {"metric": "speedup vs eager torch (p99, best ORT)", "value": f"{eager['inference_p99_ms'] / best:.2f}x", "aim": f"≥ {AIM_SPEEDUP}x"},
        {"metric": f"missed deadlines at {RATE_HZ:.0f} Hz / ticks", "value": f"{swap['deadline_misses']} / {swap['ticks']}", "aim": "0"},
        {"metric": "bundle swaps during the run", "value": swap["swaps"], "aim": f"every {SWAP_EVERY} ticks"},
        {"metric": "tick p50 / p99 / max during swaps (ms)", "value": f"{swap['tick_p50_ms']:.3f} / {swap['tick_p99_ms']:.3f} / {swap['tick_max_ms']:.1f}", "aim": ""},
        {"metric": "runtime max resident memory (MB)", "value": f"{swap['max_rss_mb']:.0f}", "aim": f"≤ {AIM_RSS_MB:.0f}"},
    ]  # fmt: skip
    return {
        "title": "Edge runtime: latency on one CPU thread at 64×64, deadlines through bundle swaps",
        "table": table,
        "notes": (
            "Network: reachsafe.trainer.models.networks.Agent (AgentSpec defaults, random weights, π_on and its encoder "
            "moved off π_off as after online fine-tuning) exported by reachsafe.trainer.export.onnx (fp32) and "
            f"reachsafe.trainer.export.int8 ({SHIPPED_RECIPE.describe()}); the offline-bundle row is the same network "
            "with π_on = π_off, whose shared branch onnxruntime computes once. Inference rows: the graphs take turns "
            f"of {TURN_FRAMES} frames, {LATENCY_RUNS} frames each, so the int8/fp32 ratio is measured in one run (why int8 pays "
            "where it does: docs/results/int8.md). The torch row runs AgentGraph with the same "
            f"weights under inference_mode. Ticks use synthetic in-memory hardware. The swap run is a separate "
            f"torch-free process: real ControlLoop + BundleManager + Uplink (fsync'd spool, ACKing ROUTER), "
            f"{swap['ticks']} ticks at {RATE_HZ:.0f} Hz, a signed bundle submitted every {SWAP_EVERY} ticks "
            f"(verified, built and warmed off the control thread), all steps acked: {swap['all_acked']}. "
            f"Load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPU(s); on a shared machine "
            "the p99 tails are mostly other processes' work."
        ),
        "int8": int8,
        "fp32": fp32,
        "torch": eager,
        "swap_run": swap,
    }


def int8_recipes() -> dict[str, Any]:
    """The int8 splits and formats compared by ``--int8-formats``: {label: Int8Recipe}."""
    from reachsafe.trainer.export.int8 import SHIPPED_RECIPE, Int8Recipe

    return {
        f"shipped: {SHIPPED_RECIPE.describe()}": SHIPPED_RECIPE,
        "heads dynamic, per-channel": Int8Recipe(per_channel=True),
        "heads static QDQ, per-channel": Int8Recipe(heads="static", per_channel=True),
        "heads static QOperator, per-channel": Int8Recipe(heads="static", quant_format="qoperator", per_channel=True),
        "encoder static QDQ, per-channel": Int8Recipe(encoder="static", heads="fp32", per_channel=True),
        "encoder static QDQ, per-tensor": Int8Recipe(encoder="static", heads="fp32"),
        "encoder static QOperator, per-channel": Int8Recipe(encoder="static", heads="fp32", quant_format="qoperator", per_channel=True),
        "encoder static QDQ + heads dynamic": Int8Recipe(encoder="static", per_channel=True),
        "encoder + heads static QDQ, per-channel": Int8Recipe(encoder="static", heads="static", per_channel=True),
    }  # fmt: skip


def int8_formats(run: Path | None, dataset: list[Path] | None, runs: int) -> dict[str, Any]:
    """Every recipe of :func:`int8_recipes` on one agent: parity with fp32 on held-out frames (the
    export gate's numbers) and inference latency, all graphs taking turns in one run.

    With ``run`` and ``dataset``: that run's latest checkpoint, its shield threshold and frames of the
    dataset (half calibrate the static parts, half judge); static recipes are also calibrated on
    random frames once, to show what real frames buy. Otherwise the bench agent on random frames.
    """
    from reachsafe.trainer.export.int8 import TURN_FRAMES, compare, held_out_split, quantize_int8
    from reachsafe.trainer.export.onnx import checkpoint_shield, export_onnx

    trained = run is not None and bool(dataset)
    with tempfile.TemporaryDirectory(prefix="int8-formats-") as tmp:
        out = Path(tmp)
        if trained:
            from reachsafe.trainer.data.dataset import load_datasets
            from reachsafe.trainer.models.networks import load_checkpoint
            from reachsafe.trainer.runs.run_dir import RunDir

            agent, ckpt = load_checkpoint(RunDir(run).require_checkpoint())
            threshold = float(checkpoint_shield(ckpt)["threshold"])
            frames = load_datasets(dataset).calibration_frames(256)
            source = f"the checkpoint of {run}, frames of {', '.join(map(str, dataset))}"
        else:
            agent, threshold, frames = bench_agent(), 0.0, random_frames(256, seed=4)
            source = "the bench agent (random weights), random frames"
        calib, held_out = held_out_split(frames)
        fp32 = export_onnx(agent.eval(), out / "fp32.onnx")
        variants: dict[str, tuple[Any, np.ndarray]] = {k: (r, calib) for k, r in int8_recipes().items()}
        if trained:
            for label, (recipe, _) in list(variants.items()):
                if recipe.is_static:
                    variants[f"{label}, calibrated on random frames"] = (
                        recipe,
                        random_frames(len(calib), seed=5),
                    )
        paths, rows = {"fp32": fp32}, {"fp32": {"recipe": "fp32 (baseline)"}}
        for i, (label, (recipe, calib_frames)) in enumerate(variants.items()):
            paths[label] = quantize_int8(fp32, out / f"int8_{i}.onnx", calib_frames, ACTION_DIM, recipe)
            rep = compare(fp32, paths[label], held_out, threshold, latency_runs=1)
            rows[label] = {
                "recipe": label,
                "shield agreement": f"{rep.shield_agreement:.3f}",
                "max Δa": f"{rep.action_err_max:.4f}",
                "max ΔQ_r, ΔQ_c": f"{rep.q_err_max:.4f}",
                "max ΔQ_h": f"{rep.q_h_err_max:.4f}",
            }
        latency = inference_latency(paths, runs)
    base = latency["fp32"]["inference_p50_ms"]
    for label, row in rows.items():
        lat = latency[label]
        row["p50 / p99 (ms)"] = f"{lat['inference_p50_ms']:.3f} / {lat['inference_p99_ms']:.3f}"
        row["speedup p50"] = f"{base / lat['inference_p50_ms']:.2f}x"
    return {
        "title": "int8 splits and formats against fp32, one CPU thread",
        "table": list(rows.values()),
        "notes": (
            f"Agent: {source}; shield threshold {threshold:.3g}; parity on {len(held_out)} held-out frames "
            "(max Δ: largest absolute difference from fp32); "
            f"latency: {runs} frames per graph, the graphs taking turns of {TURN_FRAMES} frames; load average "
            f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPU(s)."
        ),
        "command": "python -m bench.edge_bench --int8-formats"
        + (f" --run {run} --dataset ..." if trained else ""),
    }


def _cli() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--swap-worker", nargs="+", metavar="ARG", help=argparse.SUPPRESS)
    parser.add_argument("--ticks", type=int, default=SWAP_TICKS, help="ticks of the 50 Hz swap run")
    parser.add_argument(
        "--int8-formats",
        action="store_true",
        help="instead of the benchmark, compare int8 splits and formats with fp32 (parity and latency) "
        "and print the table as markdown",
    )
    parser.add_argument(
        "--run", type=Path, help="with --int8-formats: a trained run directory [default: the bench agent]"
    )
    parser.add_argument(
        "--dataset", type=Path, nargs="+", help="with --int8-formats --run: dataset file(s) for the frames"
    )
    parser.add_argument(
        "--runs",
        type=int,
        default=LATENCY_RUNS,
        help=f"with --int8-formats: frames timed per graph [default: {LATENCY_RUNS}]",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.swap_worker:
        keys, state, ticks, *bundles = args.swap_worker
        print(json.dumps(swap_worker(Path(keys), [Path(b) for b in bundles], Path(state), int(ticks))))
        return 0
    if args.int8_formats:
        from bench.run_all import to_markdown

        if (args.run is None) != (args.dataset is None):
            parser.error("--run and --dataset go together")
        print(to_markdown("int8-formats", int8_formats(args.run, args.dataset, args.runs)))
        return 0
    print(json.dumps(main(args.ticks), indent=2, default=str))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(_cli())
