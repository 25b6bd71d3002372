"""Offline dataset collection with scripted policies into an HDF5 file with the DSRL keys.

Episodes are split into chunks; each worker process writes its chunk to a shard file (no pickled
data crosses processes) and the parent appends the shards in episode order, so the dataset is
the same for any number of workers. Episode ``i`` uses seed ``seed + i`` for both the env layout
and the policy's randomness.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path

import gymnasium as gym
import h5py
import numpy as np

from reachsafe.progress import Progress
from reachsafe.sim_bridge.policies import MIX_WEIGHTS, make_policy
from reachsafe.sim_bridge.registration import register_envs

log = logging.getLogger(__name__)

DSRL_KEYS = ("observations", "next_observations", "actions", "rewards", "costs", "terminals", "timeouts")
_CHUNK_EPISODES = 2


@dataclass(frozen=True)
class CollectConfig:
    task: str
    policy: str = "mixed"
    episodes: int = 10
    split: str = "train"
    obs_mode: str = "image"
    seed: int = 0
    episode_steps: int = 300
    compression: str = "lzf"  # or "gzip"
    search: bool = True  # experts turn in place while their target is out of the camera's view (policies.py)
    palette_jitter: float = 0.0  # per-episode colour randomisation strength (env.SafeNavEnv), 0 = off


@dataclass(frozen=True)
class EpisodeStats:
    index: int
    policy: str
    ret: float
    cost: float
    length: int
    goals: int


_ENVS: dict[tuple[str, str, str, int, float], gym.Env] = {}


def _env(cfg: CollectConfig) -> gym.Env:
    """One env per worker process and config (building the PyBullet scene is not free)."""
    key = (cfg.task, cfg.split, cfg.obs_mode, cfg.episode_steps, cfg.palette_jitter)
    if key not in _ENVS:
        register_envs()
        _ENVS[key] = gym.make(
            cfg.task,
            split=cfg.split,
            obs_mode=cfg.obs_mode,
            episode_steps=cfg.episode_steps,
            palette_jitter=cfg.palette_jitter,
        )
    return _ENVS[key]


def run_episode(
    env: gym.Env, policy_name: str, seed: int, search: bool = True
) -> tuple[dict[str, np.ndarray], EpisodeStats]:
    """One episode of a scripted policy: DSRL columns and its stats (index left at ``seed``)."""
    policy = make_policy(policy_name, search)
    policy.reset(np.random.default_rng(seed))
    obs, _ = env.reset(seed=seed)
    cols: dict[str, list] = {k: [] for k in DSRL_KEYS}
    goals = 0
    while True:
        action = policy.act(env.unwrapped.nav_state())
        nxt, reward, terminated, truncated, info = env.step(action)
        cols["observations"].append(obs)
        cols["next_observations"].append(nxt)
        cols["actions"].append(action)
        cols["rewards"].append(reward)
        cols["costs"].append(info["cost"])
        cols["terminals"].append(terminated)
        cols["timeouts"].append(truncated)
        goals = info["goals_reached"]
        obs = nxt
        if terminated or truncated:
            break
    out = {
        "observations": np.stack(cols["observations"]),
        "next_observations": np.stack(cols["next_observations"]),
        "actions": np.asarray(cols["actions"], dtype=np.float32),
        "rewards": np.asarray(cols["rewards"], dtype=np.float32),
        "costs": np.asarray(cols["costs"], dtype=np.float32),
        "terminals": np.asarray(cols["terminals"], dtype=bool),
        "timeouts": np.asarray(cols["timeouts"], dtype=bool),
    }
    stats = EpisodeStats(
        seed, policy.name, float(out["rewards"].sum()), float(out["costs"].sum()), len(out["rewards"]), goals
    )
    return out, stats


def _collect_chunk(cfg_json: str, first: int, count: int, shard: str) -> None:
    """Worker: episodes [first, first+count) into ``shard``, their stats in its ``stats`` attribute
    (JSON). Only strings and ints cross the process boundary; the data goes through the file."""
    cfg = CollectConfig(**json.loads(cfg_json))
    env = _env(cfg)
    stats: list[dict] = []
    with h5py.File(shard, "w") as f:
        parts: dict[str, list[np.ndarray]] = {k: [] for k in DSRL_KEYS}
        for i in range(first, first + count):
            cols, st = run_episode(env, cfg.policy, cfg.seed + i, cfg.search)
            for k in DSRL_KEYS:
                parts[k].append(cols[k])
            stats.append({**asdict(st), "index": i})
        for k in DSRL_KEYS:
            f.create_dataset(k, data=np.concatenate(parts[k]))
        f.attrs["stats"] = json.dumps(stats)


def _append(dst: h5py.File, src: h5py.File, compression: str) -> None:
    for k in DSRL_KEYS:
        data = src[k][()]
        if k not in dst:
            chunk = (min(256, len(data)),) + data.shape[1:]
            dst.create_dataset(
                k, data=data, maxshape=(None,) + data.shape[1:], chunks=chunk, compression=compression
            )
        else:
            n = dst[k].shape[0]
            dst[k].resize(n + len(data), axis=0)
            dst[k][n:] = data


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("reachsafe", "pybullet", "gymnasium", "numpy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "unknown"
    return out


def collect(cfg: CollectConfig, out: Path, workers: int = 1, progress: bool = True) -> list[EpisodeStats]:
    """Collect ``cfg.episodes`` episodes into ``out`` (HDF5, DSRL keys); returns per-episode stats."""
    if cfg.compression not in ("lzf", "gzip"):
        raise ValueError(f"compression {cfg.compression!r}: use 'lzf' or 'gzip'")
    if cfg.episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {cfg.episodes}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    chunks = [(s, min(_CHUNK_EPISODES, cfg.episodes - s)) for s in range(0, cfg.episodes, _CHUNK_EPISODES)]
    t0 = time.monotonic()
    cfg_json = json.dumps(asdict(cfg))
    with tempfile.TemporaryDirectory(prefix=".collect-", dir=out.parent) as tmp:
        shards = {first: os.path.join(tmp, f"shard_{first:06d}.h5") for first, _ in chunks}
        bar = Progress(cfg.episodes, f"collect {cfg.task}", "ep", enabled=progress)
        if workers <= 1:
            for first, count in chunks:
                _collect_chunk(cfg_json, first, count, shards[first])
                bar.update(count)
        else:
            with ProcessPoolExecutor(
                max_workers=min(workers, len(chunks)), mp_context=get_context("spawn")
            ) as pool:
                futures = {pool.submit(_collect_chunk, cfg_json, f, c, shards[f]): c for f, c in chunks}
                for fut in as_completed(futures):
                    fut.result()  # re-raises a worker's exception
                    bar.update(futures[fut])
        bar.close()
        stats = []
        for first, _ in chunks:
            with h5py.File(shards[first], "r") as f:
                stats += [EpisodeStats(**d) for d in json.loads(f.attrs["stats"])]
        metadata = {
            "task": cfg.task,
            "split": cfg.split,
            "obs_mode": cfg.obs_mode,
            "policy": cfg.policy,
            "policy_mix": MIX_WEIGHTS if cfg.policy == "mixed" else {cfg.policy: 1.0},
            "search": cfg.search,
            "palette_jitter": cfg.palette_jitter,
            "episodes": cfg.episodes,
            "episode_steps": cfg.episode_steps,
            "seeds": [cfg.seed, cfg.seed + cfg.episodes - 1],
            "versions": _versions(),
            "episode_policies": [s.policy for s in stats],
            "collect_seconds": round(time.monotonic() - t0, 2),
        }
        partial = out.with_name(out.name + ".partial")
        with h5py.File(partial, "w") as dst:
            for first, _ in chunks:
                with h5py.File(shards[first], "r") as src:
                    _append(dst, src, cfg.compression)
            dst.attrs["metadata"] = json.dumps(metadata)
        os.replace(partial, out)
    log.info("collected %d episodes in %.1f s", cfg.episodes, time.monotonic() - t0)
    return stats


def summarize(stats: list[EpisodeStats]) -> dict[str, float]:
    """Dataset statistics: steps, return and cost spread, share of episodes with any cost."""
    ret = np.array([s.ret for s in stats])
    cost = np.array([s.cost for s in stats])
    return {
        "episodes": len(stats),
        "steps": int(sum(s.length for s in stats)),
        "return_mean": float(ret.mean()),
        "return_std": float(ret.std()),
        "return_min": float(ret.min()),
        "return_max": float(ret.max()),
        "cost_mean": float(cost.mean()),
        "cost_std": float(cost.std()),
        "cost_min": float(cost.min()),
        "cost_max": float(cost.max()),
        "frac_costly_episodes": float((cost > 0).mean()),
        "goals_mean": float(np.mean([s.goals for s in stats])),
    }
