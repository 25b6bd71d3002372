"""`reachsafe train online`: the daemon's learner against an in-process gymnasium env (no robot).

For fast experiments and ablations: the same :class:`OnlineLearner` (VPA, SAC-Lag, λ controller),
and the robot's own selection and shield code (`edge_runtime.select`, `edge_runtime.shield`) on
the torch graph outputs, so what is trained here behaves like what a robot runs. Any env that
returns ``info["cost"]`` works; dict observations pick their image with ``obs_key``.

Outputs in OUT: episodes.jsonl (one line per training episode), evals.jsonl (one line per greedy
evaluation: every ``eval_every`` steps from step 0, and at the end), summary.json, checkpoint.pt,
tb/ (TensorBoard). SIGTERM / SIGINT stop after the current step with a checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from edge_runtime.inference import AgentOutput
from edge_runtime.select import select
from edge_runtime.shield import shield as apply_shield
from protocol.constants import POLICY_ONLINE
from protocol.files import write_json_atomically
from trainer.networks import Agent, save_checkpoint
from trainer.online import MixedSampler, OnlineLearner, shield_for_ship, start_online
from trainer.online_config import OnlineConfig
from trainer.online_metrics import MetricsWriter
from trainer.replay import StepReplay
from trainer.run_dir import RunDir
from trainer.vpa import ValuePreAligner

logger = logging.getLogger(__name__)


class EnvSpecError(ValueError):
    """The env's observations or actions do not match the run's agent."""


@dataclass
class OnlineRunResult:
    out: Path
    steps: int
    episodes: int
    returns: list[float] = field(default_factory=list)
    costs: list[float] = field(default_factory=list)
    cumulative_cost: float = 0.0
    shield_threshold: float | None = None  # the last one acted with (None: no shield)
    final_eval: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


def make_env(env_id: str, split: str | None, seed: int) -> Any:
    import gymnasium as gym

    if env_id.startswith("reachsafe/"):
        import sim_bridge  # noqa: F401  (registers the reachsafe envs)
    kwargs = {"split": split} if split is not None else {}
    env = gym.make(env_id, **kwargs)
    env.reset(seed=seed)
    return env


def frame_of(obs: Any, obs_key: str | None) -> np.ndarray:
    """The image observation (dict observations: ``obs[obs_key]``)."""
    if isinstance(obs, dict):
        if obs_key is None or obs_key not in obs:
            raise EnvSpecError(
                f"the env returns a dict observation {sorted(obs)}; pick the image with --obs-key"
            )
        obs = obs[obs_key]
    return np.asarray(obs)


class ActedStep(NamedTuple):
    """What :class:`PolicyRunner` did in one step (the step record's action, proposed, policy, shielded)."""

    action: np.ndarray
    proposed: np.ndarray
    policy: int
    shielded: bool


class PolicyRunner:
    """Acts like the robot: graph outputs → policy expansion (or π_on only) → shield."""

    def __init__(self, agent: Agent, cfg: OnlineConfig, shield_threshold: float | None) -> None:
        """``shield_threshold`` None: no shield."""
        self.agent, self.cfg, self.threshold = agent, cfg, shield_threshold

    def act(
        self, frame: np.ndarray, rng: np.random.Generator, kappa_c: float, greedy: bool, in_violation: bool
    ) -> ActedStep:
        """``in_violation``: the last step cost something (the shield then defers to the policy)."""
        a_dim = self.agent.spec.action_dim
        noise = (
            np.zeros((1, a_dim), np.float32) if greedy else rng.standard_normal((1, a_dim)).astype(np.float32)
        )
        with torch.no_grad():
            outs = self.agent.graph_outputs(torch.as_tensor(frame[None]), torch.as_tensor(noise))
        out = AgentOutput(*(o[0].numpy() for o in outs))
        if self.cfg.expansion.enabled:
            sel = select(out, "eval" if greedy else "explore", self.cfg.expansion.kappa_t, kappa_c, rng)
            policy, action = sel.policy, sel.action
        else:
            policy, action = POLICY_ONLINE, np.asarray(out.a_on, np.float32)
        if self.threshold is None:
            return ActedStep(action, action, policy, False)
        decision = apply_shield(out, policy, self.threshold, in_violation)
        return ActedStep(np.asarray(decision.action, np.float32), action, policy, decision.shielded)


def train_online(
    run: Path,
    env_id: str,
    steps: int,
    cfg: OnlineConfig,
    out: Path,
    *,
    split: str | None = None,
    obs_key: str | None = None,
    use_shield: bool = True,
    resume: bool = False,
    dataset_paths: Sequence[Path] | None = None,
    eval_episodes: int = 5,
    eval_every: int = 0,
) -> OnlineRunResult:
    """``eval_every`` > 0: also evaluate ``eval_episodes`` greedy episodes every this many steps
    (from step 0, before any update), on the same episode seeds each time."""
    rng = np.random.default_rng(cfg.seed)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / "checkpoint.pt"
    start = start_online(RunDir(run), ckpt_path, cfg, resume, dataset_paths)
    learner, offline_ckpt, dataset, resumed = (
        start.learner,
        start.offline_checkpoint,
        start.dataset,
        start.resumed,
    )
    agent = learner.agent
    state = start.checkpoint.get("online_run", {}) if resumed else {}
    if resumed:
        rng.bit_generator.state = state["numpy_rng"]
    replay = StepReplay(min(cfg.replay_capacity, max(steps, 2)), agent.spec.obs_shape, agent.spec.action_dim)
    sampler = MixedSampler(dataset, replay, cfg.offline_ratio)
    metrics = MetricsWriter(out / "tb")
    if cfg.vpa.enabled and dataset is not None and not resumed:
        t0 = time.monotonic()
        metrics.scalars(ValuePreAligner(learner, dataset, cfg.vpa).run(rng), 0)
        logger.info("VPA took %.1f s", time.monotonic() - t0)
    env = make_env(env_id, split, cfg.seed + int(state.get("episodes", 0)))
    runner = PolicyRunner(agent, cfg, None)
    shield_now = (
        shield_for_ship(cfg, offline_ckpt, dataset, replay, learner.shield_budget) if use_shield else None
    )

    def recalibrate_shield(t: int) -> None:
        """The threshold a bundle shipped now would carry (Q_h keeps learning: its scale moves)."""
        if shield_now is not None:
            runner.threshold = float(shield_now(agent)["threshold"])
            metrics.scalars({"online/shield_threshold": runner.threshold}, t)
            logger.info("shield threshold %.4g at update %d", runner.threshold, learner.updates)

    eval_env = make_env(env_id, split, cfg.seed) if eval_episodes > 0 else None
    evals_log = (out / "evals.jsonl").open("a")

    def evaluate_now(t: int) -> dict[str, float]:
        assert eval_env is not None
        row = evaluate(runner, eval_env, obs_key, eval_episodes, learner.kappa_c(), 10_000 + cfg.seed * 1_000)
        evals_log.write(
            json.dumps({"step": t, "updates": learner.updates, "lambda": learner.lam, **row}) + "\n"
        )
        evals_log.flush()
        metrics.scalars({"online/eval_return": row["return_mean"], "online/eval_cost": row["cost_mean"]}, t)
        logger.info("eval at step %d: return %.2f cost %.1f", t, row["return_mean"], row["cost_mean"])
        return row

    result = OnlineRunResult(
        out, 0, int(state.get("episodes", 0)), cumulative_cost=float(state.get("cumulative_cost", 0.0))
    )
    episodes_log = (out / "episodes.jsonl").open("a")
    start_t, t0 = int(state.get("steps", 0)), time.monotonic()
    last_ckpt, budget = t0, 0.0
    frame = _check_frame(frame_of(env.reset(seed=cfg.seed + result.episodes)[0], obs_key), agent)
    recalibrate_shield(start_t)
    ep = {"ret": 0.0, "cost": 0.0, "len": 0, "offline": 0, "shielded": 0}
    cost = 0.0  # of the last step

    def checkpoint(t: int) -> None:
        save_checkpoint(ckpt_path, agent, learner.updates, extra={"online": learner.state_dict(), "online_run": {
            "steps": t, "episodes": result.episodes, "cumulative_cost": result.cumulative_cost,
            "numpy_rng": rng.bit_generator.state}})  # fmt: skip

    with _stop_on_signals() as stop:
        t = start_t
        for t in range(start_t, steps):
            if stop["set"]:
                break
            if eval_every > 0 and eval_env is not None and t % eval_every == 0:
                evaluate_now(t)
            step = runner.act(frame, rng, learner.kappa_c(), False, cost > 0)
            obs2, reward, terminated, truncated, info = env.step(step.action)
            cost = float(info.get("cost", 0.0))
            replay.add_batch("env", t, {
                "obs": frame[None], "action": step.action[None], "proposed": step.proposed[None],
                "shielded": np.array([step.shielded]), "reward": np.array([reward], np.float32),
                "cost": np.array([cost], np.float32), "terminated": np.array([terminated]),
                "truncated": np.array([truncated])})  # fmt: skip
            ep["ret"] += float(reward)
            ep["cost"] += cost
            ep["len"] += 1
            ep["offline"] += int(step.policy != POLICY_ONLINE)
            ep["shielded"] += int(step.shielded)
            result.cumulative_cost += cost
            if terminated or truncated:
                _end_episode(result, learner, ep, t + 1, episodes_log, metrics)
                ep = {k: 0 if isinstance(v, int) else 0.0 for k, v in ep.items()}
                obs2, cost = env.reset()[0], 0.0
            frame = frame_of(obs2, obs_key)
            if t + 1 >= cfg.warmup_steps:
                budget += cfg.utd_ratio
                while budget >= 1.0:
                    budget -= 1.0
                    m = learner.update(sampler.sample(cfg.batch_size, rng))
                    if learner.updates % 100 == 0:
                        metrics.scalars({**m, **learner.metrics()}, t + 1)
                    every = cfg.shield_recalibrate_every
                    if every > 0 and learner.updates % every == 0:
                        recalibrate_shield(t + 1)
            if time.monotonic() - last_ckpt >= cfg.checkpoint_every_s:
                checkpoint(t + 1)
                last_ckpt = time.monotonic()
        else:
            t = steps
    result.steps = t
    checkpoint(t)
    episodes_log.close()
    if eval_env is not None and not stop["set"]:
        recalibrate_shield(t)  # evaluate what would ship now
        result.final_eval = evaluate_now(t)
    result.shield_threshold = runner.threshold
    evals_log.close()
    result.seconds = time.monotonic() - t0
    env.close()
    if eval_env is not None:
        eval_env.close()
    metrics.close()
    write_json_atomically(out / "summary.json", _summary(result, cfg, env_id, split), indent=1)
    return result


def evaluate(
    runner: PolicyRunner, env: Any, obs_key: str | None, episodes: int, kappa_c: float, seed: int
) -> dict[str, float]:
    """Greedy episodes (selection in eval mode, zero noise, shield on as configured)."""
    rng = np.random.default_rng(seed)
    rets, costs = [], []
    for i in range(episodes):
        frame, done, ret, cost = frame_of(env.reset(seed=seed + i)[0], obs_key), False, 0.0, 0.0
        step_cost = 0.0
        while not done:
            obs, r, term, trunc, info = env.step(runner.act(frame, rng, kappa_c, True, step_cost > 0).action)
            step_cost = float(info.get("cost", 0.0))
            ret, cost, done = ret + float(r), cost + step_cost, term or trunc
            frame = frame_of(obs, obs_key)
        rets.append(ret)
        costs.append(cost)
    return {"return_mean": float(np.mean(rets)), "return_std": float(np.std(rets)),
            "cost_mean": float(np.mean(costs)), "cost_std": float(np.std(costs)), "episodes": episodes}  # fmt: skip


def _end_episode(
    result: OnlineRunResult, learner: OnlineLearner, ep: dict, step: int, log: Any, metrics: MetricsWriter
) -> None:
    result.episodes += 1
    result.returns.append(ep["ret"])
    result.costs.append(ep["cost"])
    lam = learner.observe_episode(ep["cost"])
    row = {
        "step": step, "episode": result.episodes, "return": ep["ret"], "cost": ep["cost"], "length": ep["len"],
        "cumulative_cost": result.cumulative_cost, "lambda": lam, "offline_rate": ep["offline"] / max(ep["len"], 1),
        "shield_rate": ep["shielded"] / max(ep["len"], 1), "updates": learner.updates,
    }  # fmt: skip
    log.write(json.dumps(row) + "\n")
    log.flush()
    metrics.scalars({"online/episode_return": ep["ret"], "online/episode_cost": ep["cost"],
                     "online/cumulative_cost": result.cumulative_cost, "lagrange/lambda": lam,
                     "online/offline_rate": row["offline_rate"], "online/shield_rate": row["shield_rate"]}, step)  # fmt: skip
    logger.info("episode %d (step %d): return %.2f cost %.1f λ %.3f offline %.2f shield %.2f",
                result.episodes, step, ep["ret"], ep["cost"], lam, row["offline_rate"], row["shield_rate"])  # fmt: skip


def _summary(result: OnlineRunResult, cfg: OnlineConfig, env_id: str, split: str | None) -> dict[str, Any]:
    return {
        "env": env_id, "split": split, "steps": result.steps, "episodes": result.episodes,
        "seconds": result.seconds, "cumulative_cost": result.cumulative_cost, "shield_threshold": result.shield_threshold,
        "return_last10": float(np.mean(result.returns[-10:])) if result.returns else None,
        "cost_last10": float(np.mean(result.costs[-10:])) if result.costs else None,
        "final_eval": result.final_eval, "config": cfg.to_dict(),
    }  # fmt: skip


def _check_frame(frame: np.ndarray, agent: Agent) -> np.ndarray:
    if tuple(frame.shape) != tuple(agent.spec.obs_shape):
        raise EnvSpecError(
            f"env observation shape {frame.shape} differs from the run's {agent.spec.obs_shape}; "
            "use the env the offline data came from, or pick the right --obs-key"
        )
    return frame


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[dict[str, bool]]:
    """SIGTERM / SIGINT set a flag the loop checks; the previous handlers come back afterwards."""
    flag = {"set": False}

    def handler(signum: int, _frame: Any) -> None:
        logger.info("%s: stopping after this step (checkpoint first)", signal.Signals(signum).name)
        flag["set"] = True

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield flag
    finally:
        for sig, h in previous.items():
            signal.signal(sig, h)
