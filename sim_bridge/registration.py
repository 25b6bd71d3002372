"""Gymnasium registration: one explicit table of task ids, called by ``sim_bridge.register_envs``."""

from __future__ import annotations

import gymnasium as gym

from reachsafe.sim_bridge.tasks import TASKS

ENTRY_POINT = "reachsafe.sim_bridge.env:SafeNavEnv"

# task id -> entry point; every task is the same env class parameterised by its TaskSpec.
TASK_ENTRY_POINTS: dict[str, str] = {task_id: ENTRY_POINT for task_id in TASKS}


def register_envs() -> None:
    """Register every reachsafe task with gymnasium (idempotent)."""
    for task_id, entry in TASK_ENTRY_POINTS.items():
        if task_id not in gym.registry:
            gym.register(
                id=task_id, entry_point=entry, kwargs={"task_id": task_id}, disable_env_checker=False
            )
