"""ONNX latency of an online checkpoint's graph with critic selection scores vs imagined ones.

python scripts/selection_latency.py CHECKPOINT [--horizon 5] [--ticks 2000]: exports the agent twice (the
selection horizon 0, then H), one ORT thread, batch 1; prints p50 / p99 of each, in one run, with their ratio.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from reachsafe.trainer.export.onnx import example_inputs, export_onnx, onnx_session
from reachsafe.trainer.models.networks import load_checkpoint


def latency_ms(path: Path, obs: np.ndarray, noise: np.ndarray, ticks: int) -> np.ndarray:
    session = onnx_session(path, threads=1)
    feed = {"obs": obs, "noise": noise}
    for _ in range(200):
        session.run(None, feed)
    times = np.empty(ticks)
    for i in range(ticks):
        t0 = time.perf_counter()
        session.run(None, feed)
        times[i] = time.perf_counter() - t0
    return 1e3 * times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--horizon", type=int, default=5)
    p.add_argument("--ticks", type=int, default=2000)
    args = p.parse_args()
    agent, _ = load_checkpoint(args.checkpoint)
    if agent.world_model is None:
        raise SystemExit(f"{args.checkpoint} has no world model: nothing to imagine with")
    obs, noise = example_inputs(agent, batch=1)
    p50 = {}
    with tempfile.TemporaryDirectory() as tmp:
        for horizon in (0, args.horizon):
            agent.spec.selection_horizon = horizon
            ms = latency_ms(export_onnx(agent, Path(tmp) / f"h{horizon}.onnx"), obs, noise, args.ticks)
            p50[horizon] = float(np.percentile(ms, 50))
            print(
                f"selection horizon {horizon}: p50 {p50[horizon]:.3f} ms, p99 {np.percentile(ms, 99):.3f} ms"
            )
    print(f"imagined / critic scores, p50: {p50[args.horizon] / p50[0]:.2f}x")


if __name__ == "__main__":
    main()
