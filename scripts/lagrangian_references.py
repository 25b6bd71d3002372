"""λ sequences from the published controllers' own code, for tests/trainer/test_lagrange.py.

    pip download omnisafe==0.5.0 --no-deps -d /tmp/omni
    python scripts/lagrangian_references.py --omnisafe /tmp/omni/omnisafe-0.5.0-py3-none-any.whl \\
        --marvel PATH/TO/Marvel-O2O_Safe_RL/utils.py --out tests/fixtures/lagrangian_references.json

OmniSafe: ``omnisafe/common/pid_lagrange.py`` is loaded on its own from the wheel (it imports only the
standard library). Marvel (github.com/CLIVERCHEN/Marvel-O2O_Safe_RL, ``utils.py`` at commit 6f5453e):
that file imports torch, gym, dsrl and pybullet at the top, so only its ``PIDLagrangian`` class is
taken out of it (``ast``) and run with numpy. Each case is one of our ``LagrangeConfig``s, mapped to
the reference's constructor arguments; the fixture records the inputs and the outputs after each call.
"""

from __future__ import annotations

import argparse
import ast
import json
import random
import zipfile
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np

from reachsafe.trainer.algos.online.lagrange import LagrangeConfig

OMNISAFE_MODULE = "omnisafe/common/pid_lagrange.py"

# (label, our LagrangeConfig fields); the pid cases run OmniSafe's class, the marvel cases Marvel's
OMNISAFE_CASES: list[tuple[str, dict[str, Any]]] = [
    (  # OmniSafe's CPPOPID.yaml lagrange_cfgs
        "omnisafe CPPOPID defaults",
        dict(
            kp=0.1,
            ki=0.01,
            kd=0.01,
            d_delay=10,
            p_ema_alpha=0.95,
            d_ema_alpha=0.95,
            sum_norm=True,
            lambda_max=100.0,
            lambda_init=0.001,
            cost_limit=25.0,
        ),
    ),
    (
        "penalty_max clip binds",
        dict(
            kp=0.5,
            ki=0.05,
            kd=0.2,
            d_delay=3,
            p_ema_alpha=0.8,
            d_ema_alpha=0.6,
            lambda_max=2.0,
            cost_limit=25.0,
        ),
    ),
    (
        "diff_norm clamps I and λ to [0, 1]",
        dict(
            kp=0.05,
            ki=0.02,
            kd=0.05,
            d_delay=4,
            p_ema_alpha=0.9,
            d_ema_alpha=0.9,
            diff_norm=True,
            lambda_init=0.5,
            cost_limit=25.0,
        ),
    ),
]
MARVEL_CASES: list[tuple[str, dict[str, Any]]] = [
    (  # the class's own defaults (Marvel's utils.py)
        "marvel PIDLagrangian defaults",
        dict(
            kp=0.1,
            ki=0.01,
            kd=0.01,
            d_delay=5,
            p_ema_alpha=0.9,
            d_ema_alpha=0.9,
            sum_norm=True,
            lambda_max=100.0,
            lambda_init=0.001,
            cost_limit=20.0,
        ),
    ),
    (  # what online/sac_lag.py passes (cost limit: exp_Marvel.py's default)
        "marvel release (sac_lag.py)",
        dict(
            kp=5e-6,
            ki=5e-6,
            kd=5e-6,
            d_delay=10,
            p_ema_alpha=0.9,
            d_ema_alpha=0.9,
            sum_norm=True,
            cost_limit=20.0,
        ),
    ),
    (
        "fast EMAs: K_p, K_i at their floor, λ clipped",
        dict(
            kp=1.0,
            ki=0.1,
            kd=0.5,
            d_delay=3,
            p_ema_alpha=0.5,
            d_ema_alpha=0.5,
            lambda_max=30.0,
            cost_limit=20.0,
        ),
    ),
]
# exp_Marvel.py: rollout_num episodes, then rollout_num train() calls of batch_size / 64 minibatches,
# each calling pid_update(mean cost of those episodes)
MARVEL_ROLLOUT, MARVEL_UPDATES_PER_ROLLOUT = 5, 5 * (256 // 64)


def cost_sequence(seed: int = 0) -> list[float]:
    """Episode costs that cross the limits: high, zeros and low, around the limit, a spike."""
    rng = random.Random(seed)
    phases = [(10, 40.0, 10.0), (12, 2.0, 2.0), (8, 22.0, 4.0), (10, 60.0, 15.0)]
    return [round(max(0.0, rng.gauss(mu, sd)), 3) for n, mu, sd in phases for _ in range(n)]


def _kwargs(cfg: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """Our field names → the references' (shared by OmniSafe and Marvel)."""
    c = {**defaults, **cfg}
    return dict(
        pid_kp=c["kp"],
        pid_ki=c["ki"],
        pid_kd=c["kd"],
        pid_d_delay=c["d_delay"],
        pid_delta_p_ema_alpha=c["p_ema_alpha"],
        pid_delta_d_ema_alpha=c["d_ema_alpha"],
        sum_norm=c["sum_norm"],
        diff_norm=c["diff_norm"],
        penalty_max=c["lambda_max"],
        lagrangian_multiplier_init=c["lambda_init"],
        cost_limit=c["cost_limit"],
    )


def load_omnisafe(path: Path) -> type:
    """OmniSafe's PIDLagrangian, from a wheel (.whl) or the module file itself."""
    source = zipfile.ZipFile(path).read(OMNISAFE_MODULE) if path.suffix == ".whl" else path.read_bytes()
    namespace: dict[str, Any] = {"__name__": "omnisafe_pid_lagrange"}
    exec(compile(source, OMNISAFE_MODULE, "exec"), namespace)
    return namespace["PIDLagrangian"]


def load_marvel(path: Path) -> type:
    """Marvel's PIDLagrangian class alone, from its utils.py (whose other imports are not needed)."""
    tree = ast.parse(path.read_text())
    (cls,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "PIDLagrangian"]
    namespace: dict[str, Any] = {"np": np, "deque": deque}
    exec(compile(ast.Module(body=[cls], type_ignores=[]), str(path), "exec"), namespace)
    return namespace["PIDLagrangian"]


def run_case(cls: type, cfg: dict[str, Any], inputs: list[float], defaults: dict[str, Any]) -> dict:
    """The reference's λ, integral and gains after each ``pid_update(x)`` of ``inputs``."""
    ref = cls(**_kwargs(cfg, defaults))
    out: dict[str, list[float]] = {k: [] for k in ("lambda", "integral", "kp", "ki", "kd")}
    for x in inputs:
        ref.pid_update(x)
        for key, attr in zip(out, ("_cost_penalty", "_pid_i", "_pid_kp", "_pid_ki", "_pid_kd"), strict=True):
            out[key].append(float(getattr(ref, attr)))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--omnisafe", type=Path, required=True, help="omnisafe-0.5.0 wheel or pid_lagrange.py")
    ap.add_argument("--marvel", type=Path, required=True, help="Marvel-O2O_Safe_RL's utils.py")
    ap.add_argument("--out", type=Path, default=Path("tests/fixtures/lagrangian_references.json"))
    args = ap.parse_args()
    defaults = LagrangeConfig().to_dict()
    costs = cost_sequence()
    omnisafe, marvel = load_omnisafe(args.omnisafe), load_marvel(args.marvel)
    cases = [
        {"label": label, "config": {"mode": "pid", **cfg}, "steps": run_case(omnisafe, cfg, costs, defaults)}
        for label, cfg in OMNISAFE_CASES
    ] + [
        {"label": label, "config": {"mode": "marvel", **cfg}, "steps": run_case(marvel, cfg, costs, defaults)}
        for label, cfg in MARVEL_CASES
    ]
    label, cfg = MARVEL_CASES[0]
    blocks = [costs[i : i + MARVEL_ROLLOUT] for i in range(0, len(costs), MARVEL_ROLLOUT)]
    rollout_means = [sum(b) / MARVEL_ROLLOUT for b in blocks for _ in range(MARVEL_UPDATES_PER_ROLLOUT)]
    schedule = {
        "label": f"{label}, exp_Marvel.py's schedule",
        "config": {"mode": "marvel", **cfg, "window": MARVEL_ROLLOUT},
        "rollout": MARVEL_ROLLOUT,
        "updates_per_rollout": MARVEL_UPDATES_PER_ROLLOUT,
        "steps": run_case(marvel, cfg, rollout_means, defaults),
    }
    sources = {
        "omnisafe": f"omnisafe==0.5.0 {OMNISAFE_MODULE} (PIDLagrangian.pid_update)",
        "marvel": "CLIVERCHEN/Marvel-O2O_Safe_RL@6f5453e utils.py (PIDLagrangian.pid_update, "
        "adapt_pid_parameters); schedule: exp_Marvel.py, online/sac_lag.py",
        "command": "python scripts/lagrangian_references.py --omnisafe OMNISAFE_WHEEL --marvel MARVEL_UTILS",
    }
    data = {"sources": sources, "costs": costs, "cases": cases, "schedule": schedule}
    args.out.write_text(json.dumps(data) + "\n")
    print(f"wrote {args.out}: {len(cases)} cases × {len(costs)} steps, schedule {len(rollout_means)} steps")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
