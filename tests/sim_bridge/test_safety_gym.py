"""scripts/safety_gym_server.py in its own environment (`make safety-gym`) serves a Safety-Gymnasium
vision task to the runtime's hardware client: 64×64 camera frames, every step's reward and cost, and
an episode reset (seconds of MuJoCo) answered throughout as ``resetting``, never with a timeout."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, Processes, free_tcp_port, poll_until

from reachsafe.hardware.factory import make_robot

SG_PYTHON = REPO / ".venv-safety-gym" / "bin" / "python"

pytestmark = [
    pytest.mark.safety_gym,
    pytest.mark.skipif(not SG_PYTHON.is_file(), reason="no .venv-safety-gym: run `make safety-gym` first"),
]


def test_the_bridge_serves_a_vision_task_through_its_resets(tmp_path: Path, processes: Processes) -> None:
    port = free_tcp_port()
    proc = processes.start(
        str(SG_PYTHON), "scripts/safety_gym_server.py", "--port", str(port), "--task", "SafetyPointGoal1-v0",
        "--size", "64", "--episode-steps", "20", name="safety_gym",
        env={"MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")},
    )  # fmt: skip
    robot = make_robot(f"sim:tcp://127.0.0.1:{port}")

    def connected() -> bool:
        assert proc.poll() is None, processes.log(proc)
        try:
            robot.connect()
        except Exception:  # still importing MuJoCo
            return False
        return True

    poll_until(connected, 120.0, 0.2, "the Safety-Gymnasium server")
    seen = {"reward": 0.0, "resetting": 0, "truncated": 0, "live_after_reset": 0}
    try:
        assert robot.features["image_shape"] == (64, 64, 3) and robot.features["action_dim"] == 2

        def one_tick() -> bool:
            """A robot's tick: every request is answered within the client's timeout (else it raises)."""
            frame = robot.camera.read_latest()
            robot.drive.apply(np.array([1.0, 0.5], np.float32))
            signals = robot.signals.read()
            seen["reward"] += abs(signals.reward)
            seen["resetting"] += frame.resetting
            seen["truncated"] += signals.truncated
            seen["live_after_reset"] += bool(
                seen["truncated"] and not frame.resetting and signals.episode >= 1
            )
            assert frame.image.shape == (64, 64, 3) and np.isfinite(signals.cost) and signals.cost >= 0
            return seen["live_after_reset"] > 0

        poll_until(one_tick, 180.0, 0.05, "an episode's end, its reset and the next episode's frames")
    finally:
        robot.disconnect()
    assert seen["reward"] > 0 and seen["resetting"] > 0 and seen["truncated"] == 1, seen
