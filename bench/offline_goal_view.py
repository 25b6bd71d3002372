"""What offline policies do when the goal is out of the camera's view (a diagnostic of the offline bench's runs).

Rolls out the careful scripted expert on SafeGoal1's train split, labels each frame by whether the goal is in
the camera's field of view (``reachsafe.sim_bridge.env.goal_in_view``), and feeds the frames to each run's bundle through
the edge runtime's inference path. Prints, per run, the mean greedy forward action and turn magnitude with the
goal in view and out of view, next to the expert's own.

    python -m bench.offline_goal_view --workdir W [--seeds 0 1 2] [--variants bc fosp] [--episodes 12]

W is a workdir of ``bench.offline_results`` (its runs ``VARIANT_seedN/bundle`` and ``keys/``).
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.offline_results import TASK

#: episode seeds of the expert rollouts: apart from the datasets' (1000+) and the evaluations' (10 000+)
ROLLOUT_SEED = 20_000


@dataclass(frozen=True)
class ViewFrames:
    frames: list[np.ndarray]
    in_view: np.ndarray  # bool per frame
    expert: np.ndarray  # the expert's action per frame, [N, 2]


def action_by_view(actions: np.ndarray, in_view: np.ndarray) -> dict[str, float]:
    """Mean forward action and turn magnitude over the frames with the goal in view and out of view."""
    actions, in_view = np.asarray(actions, dtype=np.float64), np.asarray(in_view, dtype=bool)
    if in_view.all() or not in_view.any():
        raise ValueError("need frames both with the goal in view and out of view")
    return {
        "forward, in view": float(actions[in_view, 0].mean()),
        "forward, out of view": float(actions[~in_view, 0].mean()),
        "turn magnitude, in view": float(np.abs(actions[in_view, 1]).mean()),
        "turn magnitude, out of view": float(np.abs(actions[~in_view, 1]).mean()),
    }


def expert_frames(episodes: int) -> ViewFrames:
    import gymnasium as gym

    import reachsafe.sim_bridge  # noqa: F401  (registers the tasks)
    from reachsafe.sim_bridge.env import goal_in_view
    from reachsafe.sim_bridge.policies import make_policy

    env = gym.make(TASK, split="train", obs_mode="image")
    nav = env.unwrapped
    policy = make_policy("careful")
    frames, in_view, expert = [], [], []
    try:
        for seed in range(ROLLOUT_SEED, ROLLOUT_SEED + episodes):
            obs, _ = env.reset(seed=seed)
            policy.reset(np.random.default_rng(seed))
            done = False
            while not done:
                state = nav.nav_state()
                frames.append(obs)
                in_view.append(goal_in_view(state.xy, state.yaw, state.goal_xy))
                action = policy.act(state)
                expert.append(action)
                obs, _, terminated, truncated, _ = env.step(action)
                done = terminated or truncated
    finally:
        env.close()
    return ViewFrames(frames, np.array(in_view), np.array(expert))


def bundle_actions(bundle_dir: Path, keys_dir: Path, frames: list[np.ndarray]) -> np.ndarray:
    """The bundle's greedy eval-mode action on each frame, as ``reachsafe eval`` picks it (policy alone)."""
    from reachsafe.trainer.runs.evaluate import BundleAgent, load_verified_bundle

    agent = BundleAgent(load_verified_bundle(bundle_dir, keys_dir))
    policy, rng = agent.policy(threshold=None), np.random.default_rng(0)
    return np.array(
        [policy.act(f, rng, agent.params.kappa_c, greedy=True, in_violation=False).action for f in frames]
    )


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", type=Path, required=True, help="a bench.offline_results workdir")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--variants", nargs="+", default=["bc", "fosp"])
    p.add_argument("--episodes", type=int, default=12, help="expert rollouts of 300 steps")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict[str, object]]:
    args = _args(argv)
    missing = [
        f"{v}_seed{s}"
        for v in args.variants
        for s in args.seeds
        if not (args.workdir / f"{v}_seed{s}" / "bundle").is_dir()
    ]
    if missing:
        raise SystemExit(
            f"no bundle for {', '.join(missing)} under {args.workdir}; run bench.offline_results first"
        )
    data = expert_frames(args.episodes)
    rows: list[dict[str, object]] = [{"run": "expert", **action_by_view(data.expert, data.in_view)}]
    for variant in args.variants:
        for seed in args.seeds:
            actions = bundle_actions(
                args.workdir / f"{variant}_seed{seed}" / "bundle", args.workdir / "keys", data.frames
            )
            rows.append({"run": f"{variant} seed {seed}", **action_by_view(actions, data.in_view)})
    cols = list(rows[0])
    print(f"{len(data.frames)} frames, goal in view on {data.in_view.mean():.0%}")
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(f"{v:.2f}" if isinstance(v, float) else str(v) for v in r.values()) + " |")
    return rows


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    main()
