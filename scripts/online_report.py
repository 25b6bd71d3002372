"""Curves (PNG) and a markdown table from `reachsafe train online` output directories.

    python scripts/online_report.py --out docs/online_curves.png LABEL=DIR[,DIR...] ...

Each LABEL groups the seeds of one variant (e.g. method=runs/m_s0,runs/m_s1). Curves are the
per-episode return and cost, the cumulative cost and (runs with ``--eval-every``) the greedy
evaluation return against environment steps, mean over seeds.
A group of 0-step runs (``--steps 0``: the offline agent's final evaluation only) is a table row
without curves.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from reachsafe.trainer.runs.reeval import parse_groups


def load_run(out: Path) -> dict[str, Any]:
    summary = json.loads((out / "summary.json").read_text())
    return {"rows": _jsonl(out / "episodes.jsonl"), "evals": _jsonl(out / "evals.jsonl"), "summary": summary}


def _jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _ms(values: list[float]) -> str:
    return f"{np.mean(values):.2f} ± {np.std(values):.2f}" if values else "—"


def table(groups: dict[str, list[dict[str, Any]]], cost_limit: float, window: int = 3) -> str:
    """Mean ± std over seeds; episode columns average the first / last ``window`` episodes of a run."""
    lines = [
        f"| variant | seeds | steps | return, first {window} ep. | return, last {window} ep. "
        f"| cost, last {window} ep. | cumulative cost | eval return at step 0 | final eval return | final eval cost "
        "| seeds ≤ limit |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, runs in groups.items():
        trained = [run for run in runs if run["rows"]]
        first = [np.mean([r["return"] for r in run["rows"][:window]]) for run in trained]
        last = [np.mean([r["return"] for r in run["rows"][-window:]]) for run in trained]
        last_cost = [np.mean([r["cost"] for r in run["rows"][-window:]]) for run in trained]
        cum = [run["summary"]["cumulative_cost"] for run in trained]
        ev_r = [run["summary"]["final_eval"].get("return_mean", float("nan")) for run in runs]
        ev_c = [run["summary"]["final_eval"].get("cost_mean", float("nan")) for run in runs]
        ev_0 = [
            run["evals"][0]["return_mean"] for run in trained if run["evals"] and run["evals"][0]["step"] == 0
        ]
        lines.append(
            f"| {label} | {len(runs)} | {runs[0]['summary']['steps']} | {_ms(first)} | {_ms(last)} | {_ms(last_cost)} "
            f"| {_ms(cum)} | {_ms(ev_0)} | {_ms(ev_r)} | {_ms(ev_c)} | {sum(c <= cost_limit for c in ev_c)}/{len(ev_c)} |"
        )
    return "\n".join(lines)


def plot(groups: dict[str, list[dict[str, Any]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(18, 3.8))
    for label, runs in groups.items():
        _plot_evals(axes[3], label, runs)
        n = min(len(run["rows"]) for run in runs)
        if n == 0:
            continue
        steps = np.array([r["step"] for r in runs[0]["rows"][:n]])
        for ax, key in zip(axes[:3], ("return", "cost", "cumulative_cost"), strict=True):
            values = np.array([[r[key] for r in run["rows"][:n]] for run in runs])
            mean, std = values.mean(axis=0), values.std(axis=0)
            ax.plot(steps, mean, label=label)
            ax.fill_between(steps, mean - std, mean + std, alpha=0.2)
            ax.set_xlabel("environment steps")
            ax.set_title(
                f"episode {key.replace('_', ' ')}" if key != "cumulative_cost" else "cumulative cost"
            )
    axes[0].legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_evals(ax: Any, label: str, runs: list[dict[str, Any]]) -> None:
    """Greedy evaluation return at the steps every seed evaluated at (mean ± std over seeds)."""
    by_step = [{e["step"]: e["return_mean"] for e in run["evals"]} for run in runs]
    steps = sorted(set.intersection(*(set(d) for d in by_step)))
    if len(steps) < 2:
        return
    values = np.array([[d[s] for s in steps] for d in by_step])
    mean, std = values.mean(axis=0), values.std(axis=0)
    ax.plot(steps, mean, marker="o", label=label)
    ax.fill_between(steps, mean - std, mean + std, alpha=0.2)
    ax.set_xlabel("environment steps")
    ax.set_title("greedy eval return")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("groups", nargs="+", help="LABEL=DIR[,DIR...]")
    ap.add_argument("--out", type=Path, required=True, help="PNG path of the curves")
    ap.add_argument("--cost-limit", type=float, default=10.0)
    ap.add_argument("--window", type=int, default=3, help="episodes averaged at the start / end of a run")
    args = ap.parse_args(argv)
    groups = {label: [load_run(d) for d in dirs] for label, dirs in parse_groups(args.groups).items()}
    plot(groups, args.out)
    print(table(groups, args.cost_limit, args.window))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
