"""Evaluate a bundle on a simulated task *through the edge runtime's inference path*.

Every step does what the robot does: ``AgentSession.act`` on the raw frame (greedy noise), policy
selection in eval mode, then the reachability shield with the manifest's threshold.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from reachsafe.trainer.runs.envs import COST_KEY, EnvSpecError, frame_of, make_env
from reachsafe.trainer.runs.rollout import ActingPolicy, run_episode

logger = logging.getLogger(__name__)


class EvalError(Exception):
    """The bundle or the task cannot be evaluated."""


@dataclass(frozen=True)
class EpisodeResult:
    seed: int
    ret: float
    cost: float
    length: int
    goals: int
    shielded: int
    collision_cost: float = 0.0  # steps of the episode that touched a solid object (pillar, wrong button)
    # steps pressed against the arena's edge: free of cost, but a policy stuck there scores nothing
    wall_steps: int = 0


@dataclass
class EvalSummary:
    task: str
    split: str
    cost_limit: float
    episodes: list[EpisodeResult] = field(default_factory=list)
    reward_ref: tuple[float, float] | None = None

    def _stat(self, values: list[float]) -> tuple[float, float]:
        arr = np.asarray(values, dtype=np.float64)
        return float(arr.mean()), float(arr.std())

    def _step_share(self, counts: list[int]) -> float:
        """Counted steps over all steps of all episodes."""
        return float(sum(counts) / max(1, sum(e.length for e in self.episodes)))

    @property
    def success(self) -> list[bool]:
        """An episode succeeds if it reached at least one goal within the cost limit."""
        return [e.goals > 0 and e.cost <= self.cost_limit for e in self.episodes]

    def to_dict(self) -> dict[str, float]:
        ret, cost = [e.ret for e in self.episodes], [e.cost for e in self.episodes]
        d = {
            "episodes": float(len(self.episodes)),
            "return_mean": self._stat(ret)[0],
            "return_std": self._stat(ret)[1],
            "cost_mean": self._stat(cost)[0],
            "cost_std": self._stat(cost)[1],
            "success_rate": float(np.mean(self.success)),
            "shield_rate": self._step_share([e.shielded for e in self.episodes]),
            "normalized_cost_mean": self._stat([c / self.cost_limit for c in cost])[0],
            "collision_cost_mean": self._stat([e.collision_cost for e in self.episodes])[0],
            "wall_share": self._step_share([e.wall_steps for e in self.episodes]),
        }
        if self.reward_ref is not None:
            lo, hi = self.reward_ref
            d["normalized_return_mean"] = self._stat([(r - lo) / max(hi - lo, 1e-8) for r in ret])[0]
        return d

    def format(self) -> str:
        d = self.to_dict()
        lines = [
            f"{self.task} [{self.split}] over {len(self.episodes)} episodes (cost limit {self.cost_limit:g}):",
            f"  return        {d['return_mean']:.3f} ± {d['return_std']:.3f}",
            f"  cost          {d['cost_mean']:.3f} ± {d['cost_std']:.3f}"
            f"  (steps touching a solid object: {d['collision_cost_mean']:.3f})",
            f"  success rate  {d['success_rate']:.2%}  (≥ 1 goal and cost ≤ limit)",
            f"  shielded      {d['shield_rate']:.2%} of steps",
            f"  at the wall   {d['wall_share']:.2%} of steps  (pressed against the arena's edge: no cost, no progress)",
            f"  normalised cost    {d['normalized_cost_mean']:.3f}  (cost / limit; ≤ 1 is safe)",
        ]
        if "normalized_return_mean" in d:
            lo, hi = self.reward_ref  # type: ignore[misc]
            lines.append(
                f"  normalised return  {d['normalized_return_mean']:.3f}  (DSRL form, refs {lo:.3g} … {hi:.3g})"
            )
        else:
            lines.append(
                "  normalised return  n/a (pass --dataset or --reward-ref LOW HIGH for the reference returns)"
            )
        return "\n".join(lines)


def load_verified_bundle(bundle_dir: str | Path, keys: str | Path | None):
    """Verify a bundle under the given trusted keys (default: RUN/keys next to a RUN/bundle)."""
    from reachsafe.protocol.bundle import load_bundle
    from reachsafe.protocol.keys import load_trusted_keys

    bundle_dir = Path(bundle_dir)
    if keys is None:
        keys = bundle_dir.parent / "keys" / "signing.pub"
        if not keys.is_file():
            raise EvalError(
                f"no --keys given and no {keys}; pass --keys DIR holding the trainer's signing.pub"
            )
    return load_bundle(bundle_dir, load_trusted_keys(keys))


class BundleAgent:
    """A verified bundle run as the robot runs it: inference on one CPU thread, the manifest's
    policy-selection parameters."""

    def __init__(self, bundle) -> None:
        from reachsafe.edge_runtime.inference import AgentSession, SessionOptions
        from reachsafe.edge_runtime.select import SelectionParams

        self.session = AgentSession.from_bundle(
            bundle, SessionOptions(intra_op_threads=1, providers=("cpu",))
        )
        self.params = SelectionParams.from_manifest(bundle.manifest)

    def policy(self, threshold: float | None) -> ActingPolicy:
        """Acting with the shield at ``threshold`` (None: the selected policy's action unshielded)."""
        return ActingPolicy(self.session.act, self.session.action_dim, self.params.kappa_t, threshold)


def evaluate_bundle(
    bundle,
    task: str,
    split: str = "train",
    episodes: int = 10,
    seeds: list[int] | None = None,
    cost_limit: float = 10.0,
    reward_ref: tuple[float, float] | None = None,
    episode_steps: int | None = None,
    use_shield: bool = True,
    shield_threshold: float | None = None,
    palette: str | None = None,
    obs_key: str | None = None,
    cost_key: str = COST_KEY,
) -> EvalSummary:
    """Run ``episodes`` greedy episodes (seeds ``seeds`` or 0 … episodes−1) of a verified bundle.

    ``use_shield=False`` executes the selected policy's action as is (to measure the policy alone);
    ``shield_threshold`` replaces the manifest's threshold (to trace the shield's cost–return trade-off);
    ``palette`` paints the split's layouts with another split's colours (appearance vs layout shift).
    Any other gymnasium task works too (:func:`~reachsafe.trainer.runs.envs.make_env`: ``obs_key``
    picks the image of dict observations, ``cost_key`` names the info key of the cost).
    """
    agent = BundleAgent(bundle)
    threshold = float(
        bundle.manifest["shield"]["threshold"] if shield_threshold is None else shield_threshold
    )
    if use_shield:
        logger.info("shield threshold %g (manifest: %g)", threshold, bundle.manifest["shield"]["threshold"])
    policy = agent.policy(threshold if use_shield else None)
    seeds = list(seeds) if seeds else list(range(episodes))
    env = _make_task(task, split, palette, episode_steps, cost_key)
    label = split if palette is None else f"{split}, {palette} palette"
    summary = EvalSummary(task=task, split=label, cost_limit=cost_limit, reward_ref=reward_ref)
    rng = np.random.default_rng(0)  # greedy selection draws nothing; kept for the signature
    try:
        for seed in seeds:
            s = run_episode(
                policy, env, int(seed), agent.params.kappa_c, rng, lambda obs: frame_of(obs, obs_key)
            )
            summary.episodes.append(
                EpisodeResult(
                    int(seed), s.ret, s.cost, s.length, s.goals, s.shielded, s.collision_cost, s.wall_steps
                )
            )
            logger.info(
                "episode seed %d: return %.3f cost %.1f goals %d shielded %d",
                seed,
                s.ret,
                s.cost,
                s.goals,
                s.shielded,
            )
    finally:
        env.close()
    return summary


def _make_task(task: str, split: str, palette: str | None, episode_steps: int | None, cost_key: str) -> Any:
    """``task``'s env: reachsafe's tasks take a split, a palette and an episode length; any other
    gymnasium task only an episode length (its TimeLimit)."""
    if task.startswith("reachsafe/"):
        kwargs: dict[str, Any] = {"obs_mode": "image", "palette": palette}
        if episode_steps is not None:
            kwargs["episode_steps"] = episode_steps
    elif palette is not None:
        raise EvalError(f"--palette is for reachsafe's tasks only; {task!r} has none")
    else:
        split, kwargs = None, {} if episode_steps is None else {"max_episode_steps": episode_steps}
    try:
        return make_env(task, split, 0, cost_key, **kwargs)
    except EnvSpecError as exc:
        raise EvalError(str(exc)) from exc
