"""docs/robots.md's minimal server is a working robot: the block in the docs, run as a program, serves
the runtime's own hardware client (``sim:tcp://…``) frames, drive commands and every step's reward,
cost and episode end."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
from conftest import REPO, Processes, free_tcp_port, poll_until

from reachsafe.hardware.factory import make_robot


def minimal_server_source() -> str:
    """The python block of docs/robots.md that starts with ``# minimal_server.py``."""
    text = (REPO / "docs" / "robots.md").read_text()
    blocks = [
        b for b in re.findall(r"```python\n(.*?)```", text, re.S) if b.startswith("# minimal_server.py")
    ]
    assert len(blocks) == 1, "docs/robots.md must hold exactly one minimal_server.py block"
    return blocks[0]


def test_the_minimal_server_in_the_docs_serves_the_runtime_client(
    tmp_path: Path, processes: Processes
) -> None:
    script = tmp_path / "minimal_server.py"
    script.write_text(minimal_server_source())
    port = free_tcp_port()
    proc = processes.start(sys.executable, str(script), str(port), name="minimal_server")
    robot = make_robot(f"sim:tcp://127.0.0.1:{port}")

    def connected() -> bool:
        assert proc.poll() is None, processes.log(proc)
        try:
            robot.connect()
        except Exception:  # not listening yet
            return False
        return True

    poll_until(connected, 30.0, 0.1, "the minimal server")
    try:
        assert robot.features["image_shape"] == (32, 32, 3) and robot.features["action_dim"] == 2
        first = robot.camera.read_latest(max_age=1.0)
        assert first.image.shape == (32, 32, 3) and first.image.dtype == np.uint8
        robot.drive.apply(np.array([1.0, 0.0], np.float32))  # into the hazard band on the right
        totals = {"reward": 0.0, "cost": 0.0}

        def costs_and_new_frames() -> bool:
            s = robot.signals.read()
            totals["reward"] += s.reward
            totals["cost"] += s.cost
            return totals["cost"] >= 3 and robot.camera.read_latest(max_age=1.0).frame_id > first.frame_id

        poll_until(costs_and_new_frames, 30.0, 0.05, "steps in the hazard band")
        robot.drive.stop()
    finally:
        robot.disconnect()
    assert proc.poll() is None, processes.log(proc)


def test_missing_optional_metadata_is_a_warning_that_names_the_keys(tmp_path: Path, caplog) -> None:
    """docs/robots.md's table of metadata keys: data without them trains, with a warning per file."""
    import dataclasses
    import logging

    from reachsafe.trainer.data.dataset import OPTIONAL_METADATA_KEYS, load_dataset
    from tests.fixtures.point_dataset import make_point_dataset, write_hdf5

    assert all(f"| `{k}` |" in (REPO / "docs" / "robots.md").read_text() for k in OPTIONAL_METADATA_KEYS)
    ds = make_point_dataset(episodes=2, length=5)
    write_hdf5(dataclasses.replace(ds, metadata={"task": "mine"}), tmp_path / "bare.h5")
    write_hdf5(dataclasses.replace(ds, metadata={k: 1 for k in OPTIONAL_METADATA_KEYS}), tmp_path / "full.h5")
    with caplog.at_level(logging.WARNING, logger="reachsafe.trainer.data.dataset"):
        assert len(load_dataset(tmp_path / "bare.h5")) == 10
        load_dataset(tmp_path / "full.h5")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "bare.h5" in warnings[0]
    assert all(repr(k) in warnings[0] for k in OPTIONAL_METADATA_KEYS if k != "task")
