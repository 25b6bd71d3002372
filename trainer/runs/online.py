"""`reachsafe train online`: the daemon's learner against a gymnasium env (in-process, or a robot server).

For fast experiments and ablations: the same :class:`OnlineLearner` (VPA, SAC-Lag, λ controller),
and the robot's own selection and shield code on the torch graph outputs
(:class:`~reachsafe.trainer.runs.rollout.ActingPolicy`), so what is trained here behaves like what
a robot runs. Any env that reports its cost in ``info[cost_key]`` or as the safety API's 6-tuple
works (:mod:`~reachsafe.trainer.runs.envs`), and so does a robot server (``remote:tcp://…``,
:mod:`~reachsafe.trainer.runs.remote_env`); dict observations pick their image with ``obs_key``.
:class:`OnlineRun` is the loop, one named method per stage of a step.

Outputs in OUT: episodes.jsonl (one line per training episode), evals.jsonl (one line per greedy
evaluation: every ``eval_every`` steps from step 0, and at the end), summary.json, checkpoint.pt,
tb/ (TensorBoard), vpa_check.json (``vpa.check_episodes`` > 0: the critics against π_off's
Monte-Carlo values before and after VPA, :mod:`~reachsafe.trainer.runs.value_check`). SIGTERM / SIGINT
stop after the current step with a checkpoint.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from reachsafe.edge_runtime.inference import AgentOutput
from reachsafe.protocol.files import write_json_atomically
from reachsafe.signals import stop_on_signals
from reachsafe.trainer.algos.online.config import OnlineConfig
from reachsafe.trainer.algos.online.vpa import ValuePreAligner
from reachsafe.trainer.data.mixing import MixedSampler
from reachsafe.trainer.data.replay import StepReplay
from reachsafe.trainer.models.device import device_record, module_device
from reachsafe.trainer.models.networks import Agent, save_checkpoint
from reachsafe.trainer.runs.envs import COST_KEY, REMOTE_PREFIX, EnvSpecError, frame_of, make_env
from reachsafe.trainer.runs.metrics import MetricsWriter
from reachsafe.trainer.runs.rollout import ActingPolicy, EpisodeStats, OutputsFn, run_episode
from reachsafe.trainer.runs.run_dir import RunDir
from reachsafe.trainer.runs.selection_probe import SelectionProbe, can_branch
from reachsafe.trainer.runs.start import shield_for_ship, start_online
from reachsafe.trainer.runs.value_check import critic_fit, horizon_steps, lengthened_env, roll_out_pi_off

logger = logging.getLogger(__name__)


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


def graph_outputs_fn(agent: Agent) -> OutputsFn:
    """The agent graph's outputs for one frame, computed by torch (what the ONNX export computes) on
    the agent's device."""
    device = module_device(agent)

    def outputs(frame: np.ndarray, noise: np.ndarray) -> AgentOutput:
        with torch.no_grad():
            outs = agent.graph_outputs(
                torch.as_tensor(frame[None]).to(device), torch.as_tensor(noise).to(device)
            )
        return AgentOutput(*(o[0].cpu().numpy() for o in outs))

    return outputs


def acting_policy(agent: Agent, cfg: OnlineConfig, shield_threshold: float | None) -> ActingPolicy:
    """How a run's agent acts: its expansion setting, κ_T, and the shield at ``shield_threshold``."""
    return ActingPolicy(
        graph_outputs_fn(agent),
        agent.spec.action_dim,
        cfg.expansion.kappa_t,
        shield_threshold,
        expansion=cfg.expansion.enabled,
    )


def evaluate(
    policy: ActingPolicy,
    env: Any,
    obs_key: str | None,
    episodes: int,
    kappa_c: float,
    seed: int,
    probe: SelectionProbe | None = None,
) -> dict[str, float]:
    """Greedy episodes (selection in eval mode, zero noise, shield on as configured) from episode seeds
    ``seed``, ``seed + 1``, …; with ``probe``, its ``selection/…`` statistics of these episodes too."""
    rng = np.random.default_rng(seed)
    hook = None
    if probe is not None:
        probe.reset()
        hook = lambda env, frame, t: probe(env, frame, t, kappa_c)  # noqa: E731
    stats = [
        run_episode(policy, env, seed + i, kappa_c, rng, lambda obs: frame_of(obs, obs_key), before_step=hook)
        for i in range(episodes)
    ]
    rets, costs = [s.ret for s in stats], [s.cost for s in stats]
    return {"return_mean": float(np.mean(rets)), "return_std": float(np.std(rets)),
            "cost_mean": float(np.mean(costs)), "cost_std": float(np.std(costs)), "episodes": episodes,
            "offline_share": float(np.mean([s.rate(s.offline) for s in stats])),
            **(probe.summary() if probe is not None else {})}  # fmt: skip


class OnlineRun:
    """One ``train online`` run. Each environment step is :meth:`act` (policy → shield → env, into the
    replay), then :meth:`learn` (``utd_ratio`` updates once past warm-up, shield recalibration);
    :meth:`end_episode` (λ, logs), :meth:`evaluate` and :meth:`checkpoint` run when their time comes."""

    def __init__(
        self,
        run: Path,
        env_id: str,
        steps: int,
        cfg: OnlineConfig,
        out: Path,
        *,
        split: str | None,
        obs_key: str | None,
        cost_key: str = COST_KEY,
        use_shield: bool,
        resume: bool,
        dataset_paths: Sequence[Path] | None,
        eval_episodes: int,
        device: str = "cpu",
    ) -> None:
        self.cfg, self.out, self.env_id, self.split, self.obs_key = cfg, out, env_id, split, obs_key
        self.cost_key = cost_key
        self.eval_episodes = eval_episodes
        self.rng = np.random.default_rng(cfg.seed)
        out.mkdir(parents=True, exist_ok=True)
        self.ckpt_path = out / "checkpoint.pt"
        start = start_online(RunDir(run), self.ckpt_path, cfg, resume, dataset_paths, device)
        self.learner, dataset, self.resumed = start.learner, start.dataset, start.resumed
        self.agent = self.learner.agent
        state = start.checkpoint.get("online_run", {}) if self.resumed else {}
        if self.resumed:
            self.rng.bit_generator.state = state["numpy_rng"]
        spec = self.agent.spec
        self.replay = StepReplay(min(cfg.replay.capacity, max(steps, 2)), spec.obs_shape, spec.action_dim)
        self.sampler = MixedSampler(dataset, self.replay, cfg.replay.offline_ratio)
        self.metrics = MetricsWriter(out / "tb")
        check_path = out / "vpa_check.json"
        self.vpa_check = json.loads(check_path.read_text()) if self.resumed and check_path.is_file() else None
        if cfg.vpa.enabled and dataset is not None and not self.resumed:
            rollouts, checks = None, {}
            if cfg.vpa.check_episodes > 0:  # π_off's values, on episode seeds no other rollout uses
                check_env = lengthened_env(env_id, split, 0, cost_key, horizon_steps(cfg.gamma))
                rollouts = roll_out_pi_off(self.agent, check_env, cfg.vpa.check_episodes, cfg.gamma,
                                           20_000 + cfg.seed * 1_000, obs_key)  # fmt: skip
                check_env.close()
                checks["before"] = critic_fit(self.agent, rollouts)
            t0 = time.monotonic()
            self.metrics.scalars(ValuePreAligner(self.learner, dataset, cfg.vpa).run(self.rng), 0)
            logger.info("VPA took %.1f s", time.monotonic() - t0)
            if rollouts is not None:
                checks["after"] = critic_fit(self.agent, rollouts)
                for phase, check in checks.items():
                    logger.info("value check %s VPA: %s", phase, check.describe())
                    self.metrics.scalars({f"vpa_check/{k}_{phase}": v for k, v in check.scalars().items()}, 0)
                self.vpa_check = {"vpa_steps": cfg.vpa.steps, **{p: c.to_dict() for p, c in checks.items()}}
                write_json_atomically(check_path, self.vpa_check, indent=1)
        self.env = make_env(env_id, split, cfg.seed + int(state.get("episodes", 0)), cost_key)
        self.policy = acting_policy(self.agent, cfg, None)
        self.shield_now = (
            shield_for_ship(cfg, start.offline_checkpoint, dataset, self.replay, self.learner.shield_budget)
            if use_shield
            else None
        )
        self.eval_env = make_env(env_id, split, cfg.seed, cost_key) if eval_episodes > 0 else None
        self.probe = self._selection_probe(env_id, split, cost_key, use_shield)
        self.evals_log = (out / "evals.jsonl").open("a")
        self.result = OnlineRunResult(
            out, 0, int(state.get("episodes", 0)), cumulative_cost=float(state.get("cumulative_cost", 0.0))
        )
        self.episodes_log = (out / "episodes.jsonl").open("a")
        self.start_step, self.started = int(state.get("steps", 0)), time.monotonic()
        self.last_checkpoint, self.update_budget = self.started, 0.0
        reset_obs = self.env.reset(seed=cfg.seed + self.result.episodes)[0]
        self.frame = _check_frame(frame_of(reset_obs, obs_key), self.agent)
        self.recalibrate_shield(self.start_step)
        self.episode = EpisodeStats()
        self.last_cost = 0.0

    def _selection_probe(
        self, env_id: str, split: str | None, cost_key: str, use_shield: bool
    ) -> SelectionProbe | None:
        """The probe of every evaluation's selection (with expansion, ``expansion.probe_every`` > 0 and
        an env that can branch)."""
        cfg = self.cfg
        if self.eval_env is None or not cfg.expansion.enabled or cfg.expansion.probe_every == 0:
            return None
        if not can_branch(self.eval_env):
            logger.info("%s cannot copy its state: evaluations do not probe the policy selection", env_id)
            return None
        return SelectionProbe(
            self.policy, make_env(env_id, split, cfg.seed, cost_key), self.obs_key, cfg.gamma,
            cfg.expansion.probe_horizon, cfg.expansion.probe_every,
        )  # fmt: skip

    # ----- the stages of a step -----------------------------------------------------------------
    def act(self, t: int) -> None:
        """One environment step as the robot takes it, stored in the replay."""
        step = self.policy.act(self.frame, self.rng, self.learner.kappa_c(), False, self.last_cost > 0)
        obs2, reward, terminated, truncated, info = self.env.step(step.action)
        self.last_cost = cost = self.episode.add(step, reward, info)
        self.replay.add_batch("env", t, {
            "obs": self.frame[None], "action": step.action[None], "proposed": step.proposed[None],
            "shielded": np.array([step.shielded]), "reward": np.array([reward], np.float32),
            "cost": np.array([cost], np.float32), "terminated": np.array([terminated]),
            "truncated": np.array([truncated])})  # fmt: skip
        self.result.cumulative_cost += cost
        if terminated or truncated:
            self.end_episode(t + 1)
            obs2, self.last_cost = self.env.reset()[0], 0.0
        self.frame = frame_of(obs2, self.obs_key)

    def learn(self, t: int) -> None:
        """``utd_ratio`` gradient updates per step from step ``warmup_steps`` on; the shield's threshold
        follows Q_h every ``shield_recalibrate_every`` updates."""
        cfg = self.cfg
        if t + 1 < cfg.replay.warmup_steps:
            return
        self.update_budget += cfg.replay.utd_ratio
        while self.update_budget >= 1.0:
            self.update_budget -= 1.0
            m = self.learner.update(self.sampler.sample(cfg.batch_size, self.rng))
            if self.learner.updates % 100 == 0:
                self.metrics.scalars({**m, **self.learner.metrics()}, t + 1)
            every = cfg.shield.recalibrate_every
            if every > 0 and self.learner.updates % every == 0:
                self.recalibrate_shield(t + 1)

    def end_episode(self, step: int) -> None:
        """An episode ended at ``step``: λ and the shield budget see its cost; one log line."""
        ep, result = self.episode, self.result
        result.episodes += 1
        result.returns.append(ep.ret)
        result.costs.append(ep.cost)
        lam = self.learner.observe_episode(ep.cost)
        row = {
            "step": step, "episode": result.episodes, "return": ep.ret, "cost": ep.cost, "length": ep.length,
            "cumulative_cost": result.cumulative_cost, "lambda": lam, "offline_rate": ep.rate(ep.offline),
            "shield_rate": ep.rate(ep.shielded), "updates": self.learner.updates,
        }  # fmt: skip
        self.episodes_log.write(json.dumps(row) + "\n")
        self.episodes_log.flush()
        self.metrics.scalars({"online/episode_return": ep.ret, "online/episode_cost": ep.cost,
                              "online/cumulative_cost": result.cumulative_cost, "lagrange/lambda": lam,
                              "online/offline_rate": row["offline_rate"], "online/shield_rate": row["shield_rate"]},
                             step)  # fmt: skip
        logger.info("episode %d (step %d): return %.2f cost %.1f λ %.3f offline %.2f shield %.2f",
                    result.episodes, step, ep.ret, ep.cost, lam, row["offline_rate"], row["shield_rate"])  # fmt: skip
        self.episode = EpisodeStats()

    def recalibrate_shield(self, t: int) -> None:
        """Act with the threshold a bundle shipped now would carry (Q_h keeps learning: its scale moves)."""
        if self.shield_now is not None:
            self.policy.threshold = float(self.shield_now(self.agent)["threshold"])
            self.metrics.scalars({"online/shield_threshold": self.policy.threshold}, t)
            logger.info("shield threshold %.4g at update %d", self.policy.threshold, self.learner.updates)

    def evaluate(self, t: int) -> dict[str, float]:
        """Greedy episodes on the same episode seeds every time; one line in OUT/evals.jsonl."""
        assert self.eval_env is not None
        learner = self.learner
        row = evaluate(self.policy, self.eval_env, self.obs_key, self.eval_episodes, learner.kappa_c(),
                       10_000 + self.cfg.seed * 1_000, self.probe)  # fmt: skip
        self.evals_log.write(
            json.dumps({"step": t, "updates": learner.updates, "lambda": learner.lam, **row}) + "\n"
        )
        self.evals_log.flush()
        self.metrics.scalars({
            "online/eval_return": row["return_mean"], "online/eval_cost": row["cost_mean"],
            **{k: v for k, v in row.items() if k.startswith("selection/")},
        }, t)  # fmt: skip
        logger.info("eval at step %d: return %.2f cost %.1f", t, row["return_mean"], row["cost_mean"])
        if "selection/points" in row:
            logger.info(
                "selection at step %d: π_on on %.0f%% of %d probed steps, right by outcome %.2f (return %.2f, "
                "cost %.2f), mean score gap %.3g", t, 100 * row["selection/online_share"],
                row["selection/points"], row["selection/right_by_outcome"], row["selection/right_by_return"],
                row["selection/right_by_cost"], row["selection/score_gap"],
            )  # fmt: skip
        return row

    def checkpoint(self, t: int) -> None:
        """OUT/checkpoint.pt: the agent, the learner and where the run stands (steps, episodes, RNG)."""
        result = self.result
        save_checkpoint(self.ckpt_path, self.agent, self.learner.updates, extra={
            "online": self.learner.state_dict(), "compute": device_record(self.learner.device), "online_run": {
                "steps": t, "episodes": result.episodes, "cumulative_cost": result.cumulative_cost,
                "numpy_rng": self.rng.bit_generator.state}})  # fmt: skip
        self.last_checkpoint = time.monotonic()

    def checkpoint_due(self) -> bool:
        return time.monotonic() - self.last_checkpoint >= self.cfg.checkpoint_every_s

    def finish(self, t: int, stopped: bool) -> OnlineRunResult:
        """Final checkpoint, the final evaluation (unless stopped by a signal), OUT/summary.json."""
        result = self.result
        result.steps = t
        self.checkpoint(t)
        self.episodes_log.close()
        if self.eval_env is not None and not stopped:
            self.recalibrate_shield(t)  # evaluate what would ship now
            result.final_eval = self.evaluate(t)
        result.shield_threshold = self.policy.threshold
        self.evals_log.close()
        result.seconds = time.monotonic() - self.started
        self.env.close()
        if self.eval_env is not None:
            self.eval_env.close()
        if self.probe is not None:
            self.probe.branch_env.close()
        self.metrics.close()
        write_json_atomically(self.out / "summary.json", self.summary(), indent=1)
        return result

    def summary(self) -> dict[str, Any]:
        r = self.result
        return {
            "env": self.env_id, "split": self.split, "obs_key": self.obs_key, "cost_key": self.cost_key,
            "steps": r.steps, "episodes": r.episodes,
            "seconds": r.seconds, "cumulative_cost": r.cumulative_cost, "shield_threshold": r.shield_threshold,
            "return_last10": float(np.mean(r.returns[-10:])) if r.returns else None,
            "cost_last10": float(np.mean(r.costs[-10:])) if r.costs else None,
            "final_eval": r.final_eval, "vpa_check": self.vpa_check,
            "config": self.cfg.to_dict(), "compute": device_record(self.learner.device),
        }  # fmt: skip


def train_online(
    run: Path,
    env_id: str,
    steps: int,
    cfg: OnlineConfig,
    out: Path,
    *,
    split: str | None = None,
    obs_key: str | None = None,
    cost_key: str = COST_KEY,
    use_shield: bool = True,
    resume: bool = False,
    dataset_paths: Sequence[Path] | None = None,
    eval_episodes: int = 5,
    eval_every: int = 0,
    device: str = "cpu",
) -> OnlineRunResult:
    """Fine-tune ``run``'s agent for ``steps`` environment steps (in all, counting resumed ones) on
    ``device`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``).

    ``eval_every`` > 0: also evaluate ``eval_episodes`` greedy episodes every this many steps (from
    step 0, before any update), on the same episode seeds each time. SIGTERM / SIGINT stop after the
    current step with a checkpoint.
    """
    if eval_every > 0 and env_id.startswith(REMOTE_PREFIX):
        raise EnvSpecError(
            "--eval-every would interleave evaluation episodes with training ones on the one robot of "
            f"{env_id}; evaluate at the end (--eval-episodes) or afterwards with `reachsafe eval`"
        )
    loop = OnlineRun(
        run, env_id, steps, cfg, out, split=split, obs_key=obs_key, cost_key=cost_key, use_shield=use_shield, resume=resume,
        dataset_paths=dataset_paths, eval_episodes=eval_episodes, device=device,
    )  # fmt: skip
    stop = []
    t = loop.start_step
    with stop_on_signals(lambda: stop.append(True), "stopping after this step (checkpoint first)"):
        for t in range(loop.start_step, steps):
            if stop:
                break
            if eval_every > 0 and loop.eval_env is not None and t % eval_every == 0:
                loop.evaluate(t)
            loop.act(t)
            loop.learn(t)
            if loop.checkpoint_due():
                loop.checkpoint(t + 1)
        else:
            t = steps
    return loop.finish(t, stopped=bool(stop))


def _check_frame(frame: np.ndarray, agent: Agent) -> np.ndarray:
    if tuple(frame.shape) != tuple(agent.spec.obs_shape):
        raise EnvSpecError(
            f"env observation shape {frame.shape} differs from the run's {agent.spec.obs_shape}; "
            "use the env the offline data came from, or pick the right --obs-key"
        )
    return frame
