"""In-process gymnasium envs for the trainer's rollouts (`train online`, its evaluations, `train reeval`,
`eval`): made once by :func:`make_env`, so that every rollout sees the same step API.

Envs report their step's cost in different places: reachsafe's and most safe-RL envs put it in
``info["cost"]``, others under another info key, and Safety-Gymnasium's native API returns it as a
sixth value of ``step()``. :class:`CostInfo` normalises all of them to gymnasium's 5-tuple with the
cost in ``info["cost"]`` (what :class:`~reachsafe.trainer.runs.rollout.EpisodeStats` reads), and it
refuses an env whose info lacks the cost: silently counting cost 0 would train an unsafe policy
that looks safe.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
from collections.abc import Callable, Mapping
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.envs.registration import load_env_creator

#: the info key the trainer reads a step's cost from
COST_KEY = "cost"
#: ``remote:tcp://HOST:PORT[/ROBOT][?keys=DIR]``: a robot server as the env
REMOTE_PREFIX = "remote:"


class EnvSpecError(ValueError):
    """The env's observations, actions or step results do not match what the run needs."""


class MissingCostError(EnvSpecError):
    """The env's step info does not carry the step's cost under the key the run was told."""


def frame_of(obs: Any, obs_key: str | None) -> np.ndarray:
    """The image observation (dict observations: ``obs[obs_key]``)."""
    if isinstance(obs, Mapping):
        if obs_key is None or obs_key not in obs:
            raise EnvSpecError(
                f"the env returns a dict observation with keys {sorted(obs)}; pick the image with --obs-key"
                + ("" if obs_key is None else f" (it has no {obs_key!r})")
            )
        obs = obs[obs_key]
    return np.asarray(obs)


def _normalised_creator(creator: Callable[..., Any], cost_key: str, **kwargs: Any) -> Any:
    """The registered env wrapped in :class:`CostInfo` *inside* gymnasium's own wrappers (the env
    checker and TimeLimit unpack 5-tuples, so a 6-tuple env must be normalised beneath them)."""
    return CostInfo(creator(**kwargs), cost_key)


class CostInfo(gym.Wrapper):
    """``step()`` as gymnasium's 5-tuple with the step's cost in ``info["cost"]``: from the 6-tuple
    safety API's cost, else from ``info[cost_key]``; a missing cost is a :class:`MissingCostError`."""

    def __init__(self, env: gym.Env, cost_key: str = COST_KEY) -> None:
        super().__init__(env)
        self.cost_key = cost_key

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        result = self.env.step(action)
        if len(result) == 6:  # Safety-Gymnasium: (obs, reward, cost, terminated, truncated, info)
            obs, reward, cost, terminated, truncated, info = result
        elif len(result) == 5:
            obs, reward, terminated, truncated, info = result
            if self.cost_key not in info:
                raise MissingCostError(
                    f"the env's step info has no {self.cost_key!r} (its keys: {sorted(info)}); name the key "
                    "that holds the step's cost with --cost-key, or return it as the 6-tuple "
                    "(obs, reward, cost, terminated, truncated, info)"
                )
            cost = info[self.cost_key]
        else:
            raise EnvSpecError(
                f"the env's step() returned {len(result)} values; expected gymnasium's 5 "
                "(obs, reward, terminated, truncated, info) or the safety API's 6 (… reward, cost, …)"
            )
        return obs, reward, terminated, truncated, {**info, COST_KEY: float(cost)}


def make_env(env_id: str, split: str | None, seed: int, cost_key: str = COST_KEY, **kwargs: Any) -> Any:
    """``gym.make(env_id)`` (or ``"module:EnvId"``, or ``"remote:tcp://…"``) with the cost normalised
    (:class:`CostInfo`), reset once with ``seed``.

    ``split`` (reachsafe's envs; None: the env's default) and ``kwargs`` go to the env's constructor."""
    if env_id.startswith(REMOTE_PREFIX):  # a robot server (remote_env.py): the server makes the episodes
        from reachsafe.trainer.runs.remote_env import RemoteEnv

        if split is not None or kwargs:
            raise EnvSpecError(
                f"{env_id} is a robot server: it decides its task, split and episode length, so "
                f"{sorted([*kwargs, *(['split'] if split else [])])} cannot be set here; set them on the server"
            )
        env = CostInfo(
            RemoteEnv.shared(env_id[len(REMOTE_PREFIX) :]), COST_KEY
        )  # the server's cost, named by us
        env.reset(seed=seed)
        return env
    if env_id.startswith("reachsafe/"):
        import reachsafe.sim_bridge  # noqa: F401  (registers the reachsafe envs)
    module, sep, name = env_id.rpartition(":")
    if sep:  # "package.module:EnvName-v0", as gym.make takes it: the module registers the env
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise EnvSpecError(f"cannot import {module!r} to register {name!r}: {exc}") from exc
        env_id = name
    if split is not None:
        kwargs["split"] = split
    try:
        spec = gym.spec(env_id)
        creator = spec.entry_point if callable(spec.entry_point) else load_env_creator(spec.entry_point)
        wrapped = functools.partial(_normalised_creator, creator, cost_key)
        env = gym.make(dataclasses.replace(spec, entry_point=wrapped), **kwargs)
    except gym.error.Error as exc:
        raise EnvSpecError(f"cannot make env {env_id!r}: {exc}") from exc
    env.reset(seed=seed)
    return env
