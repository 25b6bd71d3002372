"""HIL: two runtimes drive two simulated robots of one sim server against one trainer daemon."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, free_tcp_port, poll_until


def _run(*args: str, timeout: float) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "reachsafe.cli", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert res.returncode == 0, f"reachsafe {' '.join(args)} failed:\n{res.stderr[-3000:]}"


@pytest.mark.slow
def test_two_runtimes_drive_a_two_robot_fleet_against_one_trainer(tmp_path: Path, processes) -> None:  # noqa: ANN001
    keys, data, run = tmp_path / "keys", tmp_path / "d.h5", tmp_path / "run"
    _run("keys", "generate", "--out", str(keys), timeout=60)
    _run(
        *("sim", "collect", "--episodes", "2", "--episode-steps", "40", "--seed", "0", "--out", str(data)),
        timeout=120,
    )
    _run(
        *("train", "offline", "--dataset", str(data), "--out", str(run), "--steps", "4", "--keys", str(keys)),
        timeout=600,
    )
    # the viewer runs the signed bundle through the runtime's inference wrapper
    gif = tmp_path / "bundle.gif"
    _run(
        *(
            "sim",
            "view",
            "--bundle",
            str(run / "bundle"),
            "--keys",
            str(keys),
            "--steps",
            "20",
            "--out",
            str(gif),
        ),
        timeout=120,
    )
    assert gif.stat().st_size > 10_000

    sim_ep, trainer_ep = f"tcp://127.0.0.1:{free_tcp_port()}", f"tcp://127.0.0.1:{free_tcp_port()}"
    sim = processes.reachsafe(
        *("sim", "serve", "--bind", sim_ep, "--robots", "2", "--episode-steps", "60", "--seed", "0"),
        name="sim",
    )
    trainer = processes.reachsafe(
        *(
            "daemon",
            "serve",
            "--run",
            str(run),
            "--bind",
            trainer_ep,
            "--keys",
            str(keys),
            "--daemon.ship-every-s",
            "5",
        ),
        name="trainer",
    )
    edges = []
    for rid in ("robot0", "robot1"):
        edges.append(
            processes.reachsafe(
                *("edge", "run", "--bundle", str(run / "bundle"), "--trainer", trainer_ep),
                *("--hardware", f"{sim_ep}/{rid}".replace("tcp://", "sim:tcp://"), "--rate", "20"),
                *("--keys", str(keys), "--max-episodes", "1", "--summary", str(tmp_path / f"{rid}.json")),
                *("--spool", str(tmp_path / f"spool_{rid}"), "--state-dir", str(tmp_path / f"state_{rid}")),
                *("--robot-id", rid),
                name=rid,
            )
        )
    for edge in edges:
        poll_until(lambda e=edge: e.poll() is not None, timeout=180, interval=0.5, what="runtime to finish")
        assert edge.returncode == 0, processes.log(edge)[-3000:]
    summaries = {rid: json.loads((tmp_path / f"{rid}.json").read_text()) for rid in ("robot0", "robot1")}
    for rid, s in summaries.items():
        assert s["episodes"] >= 1, (rid, s)
        # the server runs its episodes on its own clock: a runtime joins one already under way
        assert s["steps_sent"] > 0 and s["steps_acked"] == s["steps_sent"], (rid, s)
    assert processes.stop(trainer, signal.SIGTERM) == 0, processes.log(trainer)[-3000:]
    assert processes.stop(sim, signal.SIGTERM) == 0, processes.log(sim)[-3000:]
    status = json.loads((run / "status.json").read_text())
    assert status["steps_stored"] == sum(s["steps_acked"] for s in summaries.values())
    assert len(status["robots"]) == 2
