"""Offline results on SafeGoal1: FOSP-lite vs behaviour cloning, with and without the world model.

One mixed dataset (scripted careful / reckless / noisy / random behaviour), then for each seed and
variant an offline run of the same budget, each evaluated greedily on the train and unseen splits
through the edge runtime's inference path, with and without the shield.

    python -m bench.offline_results [--episodes 40] [--steps 5000] [--seeds 0 1 2] [--eval-episodes 50] [--workers 2]

writes the ``offline`` section of docs/results.md (also importable: ``main(argv) -> dict``). With ``--workdir``,
a re-run skips the runs already trained there to ``--steps`` updates, resumes those trained to fewer (so the
budget can be raised without starting over), and reuses a run's evaluation (RUN/bench_eval.json) when the
episodes, cost limit and reward reference match and the run was not trained further, so seeds can be added
without redoing the others.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

TASK = "reachsafe/SafeGoal1-v0"
COST_LIMIT = 10.0
DATASET_STEM = "safegoal1_mixed"
DATASET = f"{DATASET_STEM}.h5"  # with --palette-jitter S: f"{DATASET_STEM}_jitter{S:g}.h5"
DATASET_SEED = 1000  # episode i of the dataset uses seed DATASET_SEED + i
VARIANTS = {
    "bc": {"method": "bc"},
    "fosp": {"method": "fosp"},
    "fosp_no_wm": {"method": "fosp", "world_model": {"enabled": False}},
    "fosp_no_imagine": {"method": "fosp", "imagine": {"enabled": False}},
}


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--episodes", type=int, default=40, help="dataset episodes (300 steps each)")
    p.add_argument("--steps", type=int, default=5000, help="offline updates per run")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--eval-episodes", type=int, default=50, help="evaluation episodes per split")
    p.add_argument(
        "--workers", type=int, default=2, help="(variant, seed) jobs run at once, one process and thread each"
    )
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument(
        "--palette-jitter",
        type=float,
        default=0.0,
        help="collect the dataset with per-episode colour randomisation of this strength (sim collect)",
    )
    p.add_argument(
        "--also-plain",
        action="store_true",
        help="with --palette-jitter: also collect the same episodes in the task's own colours and train on both files",
    )
    p.add_argument(
        "--workdir", type=Path, help="keep datasets and runs here (default: a temporary directory)"
    )
    p.add_argument("--no-write", action="store_true", help="do not write docs/results.md")
    return p.parse_args(argv)


def _mean_std(values: list[float]) -> str:
    return f"{np.mean(values):.2f} ± {np.std(values):.2f}"


def _key(split_shield: tuple[str, bool]) -> str:
    return f"{split_shield[0]}|{'shield' if split_shield[1] else 'policy'}"


def _unkey(key: str) -> tuple[str, bool]:
    split, mode = key.split("|")
    return split, mode == "shield"


def paired_vs_bc(results: dict[tuple[str, str, bool], list[dict[str, float]]]) -> list[str]:
    """Each FOSP variant minus BC on the same seed (same init, batches and evaluation episodes), per
    split and shield: mean ± standard error over seeds of the return and cost differences, and on how
    many seeds the cost is lower. Lists are in seed order."""
    lines = []
    for (name, split, use_shield), rows in sorted(
        results.items(), key=lambda kv: (kv[0][1], kv[0][0], kv[0][2])
    ):
        base = results.get(("bc", split, False))
        if name == "bc" or base is None or len(base) != len(rows) or len(rows) < 2:
            continue
        diff = {
            k: np.array([r[f"{k}_mean"] for r in rows]) - np.array([b[f"{k}_mean"] for b in base])
            for k in ("return", "cost")
        }
        se = {k: d.std(ddof=1) / np.sqrt(len(d)) for k, d in diff.items()}
        lower = int(np.sum(diff["cost"] < 0))
        lines.append(
            f"{split}, {name}{' + shield' if use_shield else ''} − bc: return {diff['return'].mean():+.2f} ± "
            f"{se['return']:.2f}, cost {diff['cost'].mean():+.2f} ± {se['cost']:.2f}, cost lower on "
            f"{lower}/{len(rows)} seeds"
        )
    return lines


def _train_and_evaluate(
    name: str, seed: int, args: argparse.Namespace, work: Path, files: list[Path], ref: tuple[float, float]
) -> tuple[str, int, float, dict[tuple[str, bool], dict[str, float]]]:
    """One (variant, seed) job, in its own process: train to ``args.steps`` updates (resuming a run
    trained to fewer, skipping one trained to exactly as many), then evaluate greedily on both splits
    with and without the shield. Returns (name, seed, train seconds in all, results)."""
    from reachsafe.protocol.bundle import load_bundle
    from reachsafe.protocol.keys import load_trusted_keys
    from reachsafe.trainer.algos.offline.config import OfflineConfig
    from reachsafe.trainer.data.dataset import load_datasets
    from reachsafe.trainer.runs.evaluate import evaluate_bundle
    from reachsafe.trainer.runs.offline import train_offline

    keys = work / "keys"
    cfg = OfflineConfig.from_dict(
        {"steps": args.steps, "seed": seed, "log_every": 100, "checkpoint_every": 0, **VARIANTS[name]}
    )
    run_dir = work / f"{name}_seed{seed}"
    timing = run_dir / "train_seconds.json"
    cache = run_dir / "bench_eval.json"
    trained = trained_updates(run_dir)
    if trained > args.steps:
        raise SystemExit(
            f"{run_dir} holds a run of {trained} updates, more than --steps {args.steps}: "
            "give --steps of at least that or another --workdir"
        )
    if trained < args.steps or not timing.exists():  # fewer updates, or stopped before it was timed
        cache.unlink(missing_ok=True)  # the evaluation of fewer updates no longer applies
        before = json.loads(timing.read_text()) if trained and timing.exists() else 0.0
        res = train_offline(
            load_datasets(files), run_dir, cfg, keys_dir=keys, resume=trained > 0, progress=False
        )
        timing.write_text(json.dumps(before + res.seconds))
        print(
            f"trained {name} seed {seed} from update {trained} to {args.steps} in {res.seconds:.0f} s",
            flush=True,
        )
    settings = {"episodes": args.eval_episodes, "reward_ref": list(ref), "cost_limit": COST_LIMIT}
    if cache.exists():
        cached = json.loads(cache.read_text())
        if cached.get("settings") == settings:
            results = {_unkey(k): v for k, v in cached["results"].items()}
            print(f"{name} seed {seed}: evaluation reused from {cache}", flush=True)
            return name, seed, json.loads(timing.read_text()), results
    bundle = load_bundle(run_dir / "bundle", load_trusted_keys(keys))
    results = {}
    for split in ("train", "unseen"):
        for use_shield in (False, True):
            if use_shield and name == "bc":
                continue  # BC is the policy-only baseline
            s = evaluate_bundle(
                bundle,
                TASK,
                split=split,
                seeds=[10_000 + seed * 100 + i for i in range(args.eval_episodes)],
                cost_limit=COST_LIMIT,
                reward_ref=ref,
                use_shield=use_shield,
            ).to_dict()
            results[(split, use_shield)] = s
            print(f"{name} seed {seed} {split} shield={use_shield}: {s}", flush=True)
    cache.write_text(json.dumps({"settings": settings, "results": {_key(k): v for k, v in results.items()}}))
    return name, seed, json.loads(timing.read_text()), results


def trained_updates(run_dir: Path) -> int:
    """Updates in the run's latest checkpoint; 0 when it has none yet."""
    from reachsafe.trainer.models.networks import load_checkpoint
    from reachsafe.trainer.runs.run_dir import RunDir

    latest = RunDir(run_dir).latest
    return int(load_checkpoint(latest)[1]["step"]) if latest.is_file() else 0


def _dataset_file(args: argparse.Namespace, work: Path, palette_jitter: float) -> Path:
    """The bench's dataset with this colour randomisation: collected on first use, checked after."""
    from reachsafe.sim_bridge.collect import CollectConfig, collect, summarize
    from reachsafe.trainer.data.dataset import load_dataset

    data = work / (DATASET if not palette_jitter else f"{DATASET_STEM}_jitter{palette_jitter:g}.h5")
    if not data.exists():
        config = CollectConfig(
            task=TASK,
            policy="mixed",
            episodes=args.episodes,
            seed=DATASET_SEED,
            palette_jitter=palette_jitter,
        )
        print("dataset:", summarize(collect(config, data, workers=2)), flush=True)
    meta = load_dataset(data).metadata
    want = {
        "episodes": args.episodes,
        "seeds": [DATASET_SEED, DATASET_SEED + args.episodes - 1],
        "search": True,
        "palette_jitter": palette_jitter,
    }
    have = {
        "episodes": meta.get("episodes"),
        "seeds": meta.get("seeds"),
        "search": meta.get("search", False),
        "palette_jitter": meta.get("palette_jitter", 0.0),
    }
    if have != want:
        raise SystemExit(
            f"{data} was collected with {have}, this bench needs {want}: remove it or use another --workdir"
        )
    return data


def run(args: argparse.Namespace, work: Path) -> dict:
    from reachsafe.protocol.keys import generate_keys
    from reachsafe.trainer.data.dataset import load_datasets

    if args.also_plain and not args.palette_jitter:
        raise SystemExit("--also-plain adds the task's own colours to a --palette-jitter dataset: give both")
    t0 = time.monotonic()
    jitters = [0.0, args.palette_jitter] if args.also_plain else [args.palette_jitter]
    files = [_dataset_file(args, work, j) for j in jitters]
    dataset = load_datasets(files)
    returns, costs = dataset.episode_returns()
    ref = (float(returns.min()), float(returns.max()))
    if not (work / "keys" / "signing.key").exists():
        generate_keys(work / "keys")

    # results[(variant, split, shield)] -> per-seed summaries, in seed order
    results: dict[tuple[str, str, bool], list[dict[str, float]]] = {}
    train_seconds: dict[str, list[float]] = {}
    jobs = [(name, seed) for seed in args.seeds for name in args.variants]
    with ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        done = [pool.submit(_train_and_evaluate, name, seed, args, work, files, ref) for name, seed in jobs]
        for name, _seed, seconds, per_split in (f.result() for f in done):
            train_seconds.setdefault(name, []).append(seconds)
            for (split, use_shield), s in per_split.items():
                results.setdefault((name, split, use_shield), []).append(s)

    table = []
    for (name, split, use_shield), rows in results.items():
        table.append(
            {
                "variant": name,
                "world model": "off" if VARIANTS[name].get("world_model") is False else "on",
                "imagination": "off"
                if VARIANTS[name].get("world_model") is False or VARIANTS[name].get("imagine") is False
                else "on",
                "shield": "on" if use_shield else "off",
                "split": split,
                "return": _mean_std([r["return_mean"] for r in rows]),
                "cost": _mean_std([r["cost_mean"] for r in rows]),
                "collision cost": _mean_std([r["collision_cost_mean"] for r in rows]),
                "at wall": _mean_std([r["wall_share"] for r in rows]),
                "norm. return": _mean_std([r["normalized_return_mean"] for r in rows]),
                "norm. cost": _mean_std([r["normalized_cost_mean"] for r in rows]),
                "success": _mean_std([r["success_rate"] for r in rows]),
                "seeds": len(rows),
            }
        )
    table.sort(key=lambda r: (r["split"], r["variant"], r["shield"]))
    minutes = (time.monotonic() - t0) / 60
    collected = " and ".join(
        "`sim collect --policy mixed" + (f" --palette-jitter {j:g}`" if j else "`") for j in jitters
    )
    notes = (
        f"Dataset: {len(returns)} episodes of {collected} on {TASK} (train split)"
        + (", the same episodes in both files" if len(jitters) > 1 else "")
        + ", "
        f"episode return {returns.mean():.2f} ± {returns.std():.2f}, cost {costs.mean():.1f} ± {costs.std():.1f}. "
        f"Each run: {args.steps} offline updates (OfflineConfig defaults otherwise), seeds {args.seeds}; "
        f"evaluation: {args.eval_episodes} greedy episodes per split per seed through `edge_runtime` inference; "
        f"mean ± std over seeds of the per-seed means. Cost limit {COST_LIMIT:g}; normalised return = "
        f"(R − R_min)/(R_max − R_min) with the dataset's episode-return range; success = ≥ 1 goal within the "
        f"cost limit; collision cost = the steps that touched a solid object, here the unseen split's pillar "
        f"(the train split has none, so the dataset holds no example of it); at wall = the share of steps "
        f"pressed against the arena's edge, where a stuck policy costs nothing and earns nothing. "
        f"Training time per run (s, {args.workers} runs at once): "
        + ", ".join(f"{k} {np.mean(v):.0f}" for k, v in train_seconds.items())
        + f". Total {minutes:.0f} min on this machine."
    )
    paired = paired_vs_bc(results)
    if paired:
        notes += (
            " Paired with BC on the same seed (mean ± standard error over seeds of the per-seed difference): "
            + "; ".join(paired)
            + "."
        )
    command = (
        f"python -m bench.offline_results --episodes {args.episodes} --steps {args.steps} "
        f"--seeds {' '.join(map(str, args.seeds))} --eval-episodes {args.eval_episodes} --workers {args.workers} "
        f"--variants {' '.join(args.variants)}"
        + (f" --palette-jitter {args.palette_jitter:g}" if args.palette_jitter else "")
        + (" --also-plain" if args.also_plain else "")
    )
    title = "Offline pretraining on SafeGoal1: FOSP-lite vs BC"
    return {"title": title, "table": table, "notes": notes, "command": command}


def main(argv: list[str] | None = None) -> dict:
    """The bench contract's entry (``argv`` None: the defaults)."""
    args = _args([] if argv is None else argv)
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
        return run(args, args.workdir)
    with tempfile.TemporaryDirectory(prefix="offline-bench-") as tmp:
        return run(args, Path(tmp))


if __name__ == "__main__":
    from bench.run_all import to_markdown, write_section

    logging.basicConfig(level=logging.WARNING)
    result = main(sys.argv[1:])
    markdown = to_markdown("offline", result)
    print(markdown)
    if "--no-write" not in sys.argv:
        write_section("offline", markdown)
