"""Sim benchmark: env steps/s with 64x64 rendering on one core, collection rate with workers, and
the hardware server's frame round trip.

Run alone with ``python -m bench.sim_bench``; ``make bench`` calls ``main()`` and writes
docs/results.md from the returned dict.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import gymnasium as gym
import numpy as np

from reachsafe.sim_bridge.collect import CollectConfig, collect
from reachsafe.sim_bridge.policies import make_policy
from reachsafe.sim_bridge.registration import register_envs
from reachsafe.sim_bridge.tasks import TASKS

log = logging.getLogger(__name__)

AIM_STEPS_PER_S = 150.0


@contextmanager
def one_core() -> Iterator[None]:
    """Pin this process to one CPU for the block (where the OS allows it)."""
    if not hasattr(os, "sched_getaffinity"):
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(before)})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def env_steps_per_s(task: str, obs_mode: str, steps: int) -> float:
    env = gym.make(task, obs_mode=obs_mode)
    env.reset(seed=0)
    policy = make_policy("careful")
    policy.reset(np.random.default_rng(0))
    t0 = time.monotonic()
    for _ in range(steps):
        _, _, term, trunc, _ = env.step(policy.act(env.unwrapped.nav_state()))
        if term or trunc:
            env.reset()
    rate = steps / (time.monotonic() - t0)
    env.close()
    return rate


def collection_rate(workers: int, episodes: int, episode_steps: int) -> float:
    cfg = CollectConfig(task="reachsafe/SafeGoal1-v0", episodes=episodes, episode_steps=episode_steps)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.monotonic()
        collect(cfg, Path(tmp) / "d.h5", workers=workers, progress=False)
        return episodes * episode_steps / (time.monotonic() - t0)


def frame_round_trip_ms(n: int) -> tuple[float, float]:
    """p50 / p99 of ``SimCamera.read_latest`` against an in-process server on loopback."""
    from reachsafe.hardware.sim import SimCamera
    from reachsafe.sim_bridge.server import ServerConfig, running

    with running(ServerConfig(bind="tcp://127.0.0.1:*")) as server:
        cam = SimCamera(server.endpoint, "robot0")
        cam.connect()
        times = []
        for _ in range(n):
            t0 = time.monotonic()
            cam.read_latest()
            times.append((time.monotonic() - t0) * 1e3)
        cam.disconnect()
    return float(np.percentile(times, 50)), float(np.percentile(times, 99))


def main() -> dict:
    register_envs()
    table = []
    with one_core():
        for task in TASKS:
            rate = env_steps_per_s(task, "image", 1500)
            table.append({"measure": f"{task} steps/s (64x64 image, 1 core)", "value": round(rate, 1)})
            print(f"sim: {task} {rate:.0f} steps/s", flush=True)
        rate = env_steps_per_s("reachsafe/SafeGoal1-v0", "state", 3000)
        table.append({"measure": "SafeGoal1 steps/s (state only, 1 core)", "value": round(rate, 1)})
    for workers in (1, 2):
        rate = collection_rate(workers, episodes=12, episode_steps=300)
        table.append({"measure": f"collection steps/s, image, {workers} worker(s)", "value": round(rate, 1)})
        print(f"sim: collection with {workers} worker(s) {rate:.0f} steps/s", flush=True)
    p50, p99 = frame_round_trip_ms(500)
    table.append({"measure": "hw_read_frame round trip p50 (ms)", "value": round(p50, 3)})
    table.append({"measure": "hw_read_frame round trip p99 (ms)", "value": round(p99, 3)})
    slowest = min(row["value"] for row in table[: len(TASKS)])
    notes = (
        f"Aim: >= {AIM_STEPS_PER_S:.0f} env steps/s with 64x64 rendering on one core (process pinned with "
        f"sched_setaffinity); slowest task {slowest:.0f} steps/s = {slowest / AIM_STEPS_PER_S:.1f}x the aim. "
        "Steps are env steps (2 kinematic substeps, one TinyRenderer frame each) driven by the careful policy. "
        f"Collection: 12 episodes x 300 steps (worker start-up included) of SafeGoal1 with the mixed policy, HDF5 lzf, on {os.cpu_count()} "
        "CPU(s) shared with everything else running. Round trip: SimCamera over loopback ZeroMQ to an "
        "in-process server."
    )
    return {"title": "Simulator (sim_bridge)", "table": table, "notes": notes}


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
