"""λ of each controller mode on one fixed synthetic episode-cost sequence (docs/results/lagrangians.md).

    python scripts/lagrangian_comparison.py > table.md

The sequence crosses the limit d = 10 twice: costs around 25 (episodes 1–40), around 6 (41–100), a
relapse around 18 (101–140), around 4 (141–200); Gaussian noise from a fixed seed, clipped at 0.
pid and bounded step once per episode on the mean of the last ``window`` episodes; marvel steps once
per gradient update on that mean, at the given updates per episode (Marvel's schedule: 4; our
learner at UTD 1 with 300-step episodes: 300).
"""

from __future__ import annotations

import argparse
import random
from typing import Any

from reachsafe.trainer.algos.online.lagrange import LagrangeConfig, PIDLagrangian

PHASES = [(40, 25.0, 8.0), (60, 6.0, 3.0), (40, 18.0, 6.0), (60, 4.0, 2.0)]  # episodes, mean, std
MARVEL_RELEASE = dict(kp=5e-6, ki=5e-6, kd=5e-6, p_ema_alpha=0.9, d_ema_alpha=0.9, sum_norm=True, window=5)


def episode_costs(seed: int = 0) -> list[float]:
    rng = random.Random(seed)
    return [round(max(0.0, rng.gauss(mu, sd)), 1) for n, mu, sd in PHASES for _ in range(n)]


def run(costs: list[float], updates_per_episode: int, **cfg: Any) -> list[dict[str, float]]:
    """The controller's metrics after each episode, each call at its cadence (as the online learner
    makes them)."""
    lag, after = PIDLagrangian(LagrangeConfig(**cfg)), []
    for cost in costs:
        lag.observe_episode(cost)
        lag.update_from_window()
        for _ in range(updates_per_episode):
            lag.on_gradient_step()
        after.append(lag.metrics())
    return after


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cost-limit", type=float, default=10.0)
    ap.add_argument("--every", type=int, default=20, help="a row every this many episodes")
    args = ap.parse_args()
    costs, d = episode_costs(), args.cost_limit
    columns = {
        "pid": run(costs, 0, mode="pid", cost_limit=d),
        "bounded": run(costs, 0, mode="bounded", cost_limit=d),
        "marvel, 4 upd/ep": run(costs, 4, mode="marvel", cost_limit=d),
        "marvel, 300 upd/ep": run(costs, 300, mode="marvel", cost_limit=d),
        "marvel, release gains, 4 upd/ep": run(costs, 4, mode="marvel", cost_limit=d, **MARVEL_RELEASE),
        "marvel, release gains, 300 upd/ep": run(costs, 300, mode="marvel", cost_limit=d, **MARVEL_RELEASE),
    }
    print("| episodes | mean cost, last 10 | " + " | ".join(f"λ {name}" for name in columns) + " |")
    print("|---:|---:|" + "---:|" * len(columns))
    for n in range(args.every, len(costs) + 1, args.every):
        recent = costs[n - 10 : n]
        lams = " | ".join(f"{lags[n - 1]['lagrange/lambda']:.4g}" for lags in columns.values())
        print(f"| {n} | {sum(recent) / len(recent):.2f} | {lams} |")
    print()
    print("| gains after the last episode | K_p | K_i | K_d |")
    print("|---|---:|---:|---:|")
    for name, lags in columns.items():
        gains = (lags[-1][f"lagrange/{k}"] for k in ("kp", "ki", "kd"))
        print(f"| {name} | " + " | ".join(f"{g:.4g}" for g in gains) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
