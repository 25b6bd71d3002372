"""Re-evaluate the final agents of `reachsafe train online` runs on episode seeds they never saw.

    reachsafe train reeval [--episodes 30] [--seed-base 50000] [--no-shield] LABEL=DIR[,DIR...] ...

A run's own evaluations (``--eval-every``) reuse the same 10 episode seeds every time, so a final
evaluation partly measures how the agent does on those 10 layouts. This loads each run's final agent
(OUT/checkpoint.pt) and lets it act exactly as it did there — greedy, policy selection with the λ the
run ended with, the shield at the run's last threshold (OUT/summary.json) — on episode seeds
``seed_base + 1000 · seed + i``, and prints a markdown table: per run and, per LABEL, the mean over
its seeds and how many seeds are within the cost limit.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from reachsafe.trainer.algos.online.config import OnlineConfig
from reachsafe.trainer.models.networks import load_checkpoint
from reachsafe.trainer.runs.envs import COST_KEY, make_env
from reachsafe.trainer.runs.online import acting_policy, evaluate

logger = logging.getLogger(__name__)


class ReevalError(Exception):
    """A directory is not a finished `reachsafe train online` run."""


def reevaluate(
    out: Path, episodes: int, seed_base: int, use_shield: bool = True, obs_key: str | None = None
) -> dict[str, Any]:
    """Greedy episodes of the run's final agent on seeds ``seed_base + 1000 · seed + i``."""
    if not out.is_dir():
        raise ReevalError(
            f"{out}: no such directory; pass the --out directory of a `reachsafe train online` run"
        )
    summary_path = out / "summary.json"
    if not summary_path.is_file():
        raise ReevalError(f"{out}: no summary.json; the run has not finished (finish it with --resume)")
    try:
        summary = json.loads(summary_path.read_text())
    except json.JSONDecodeError as exc:
        raise ReevalError(f"{summary_path} is not valid JSON ({exc}); re-run or --resume the run") from None
    missing = sorted({"config", "env", "split", "steps", "shield_threshold"} - set(summary))
    if missing:
        raise ReevalError(
            f"{summary_path} lacks {missing}; it was not written by a finished train online run"
        )
    cfg = OnlineConfig.from_dict(summary["config"], source=str(summary_path))
    agent, ckpt = load_checkpoint(out / "checkpoint.pt")
    if "online" not in ckpt:
        raise ReevalError(
            f"{out / 'checkpoint.pt'} holds no online learner state; pass a train online --out directory"
        )
    kappa_c = cfg.expansion.kappa_c_at(float(ckpt["online"]["lagrange"]["lam"]))
    threshold = summary["shield_threshold"] if use_shield else None
    env = make_env(summary["env"], summary["split"], cfg.seed, summary.get("cost_key", COST_KEY))
    obs_key = obs_key or summary.get("obs_key")  # the caller's, else the one the run recorded
    try:
        row = evaluate(
            acting_policy(agent, cfg, threshold), env, obs_key, episodes, kappa_c, seed_base + 1000 * cfg.seed
        )
    finally:
        env.close()
    return {
        "run": str(out),
        "seed": cfg.seed,
        "steps": summary["steps"],
        "threshold": threshold,
        "kappa_c": kappa_c,
        **row,
    }


def table(results: dict[str, list[dict[str, Any]]], cost_limit: float) -> str:
    lines = [
        "| variant | seed | trained steps | return | cost | shield threshold |",
        "|---|---|---|---|---|---|",
    ]
    for label, rows in results.items():
        for r in rows:
            thr = "off" if r["threshold"] is None else f"{r['threshold']:.3g}"
            lines.append(
                f"| {label} | {r['seed']} | {r['steps']} | {r['return_mean']:.2f} ± {r['return_std']:.2f} "
                f"| {r['cost_mean']:.2f} ± {r['cost_std']:.2f} | {thr} |"
            )
        within = sum(r["cost_mean"] <= cost_limit for r in rows)
        lines.append(
            f"| **{label}, mean** | {within}/{len(rows)} ≤ limit | | {np.mean([r['return_mean'] for r in rows]):.2f} "
            f"| {np.mean([r['cost_mean'] for r in rows]):.2f} | |"
        )
    return "\n".join(lines)


def parse_groups(specs: list[str]) -> dict[str, list[Path]]:
    """``["LABEL=DIR[,DIR...]", ...]`` -> {label: [dirs]}; a spec without ``=`` is its own label."""
    groups: dict[str, list[Path]] = {}
    for spec in specs:
        label, sep, dirs = spec.partition("=")
        groups[label] = [Path(d) for d in (dirs if sep else spec).split(",")]
    return groups
