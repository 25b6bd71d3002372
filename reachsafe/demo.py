"""``reachsafe demo``: the whole loop on localhost, every part a separate real process.

keys → dataset (scripted behaviour policies in PyBullet) → offline training + signed bundle →
sim robot server, trainer daemon and edge runtime on free loopback ports → a few episodes while
the daemon fine-tunes and ships new bundles → summary → everything shut down.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from reachsafe.protocol.sockets import free_tcp_port

log = logging.getLogger(__name__)


@dataclass
class DemoSettings:
    """Sizes chosen so the demo finishes in a few minutes on a 2-core machine."""

    task: str = "reachsafe/SafeGoal1-v0"
    dataset_episodes: int = 24
    offline_steps: int = 600
    episodes: int = 4
    rate_hz: float = 20.0
    ship_every_s: float = 15.0
    timeout_s: float = 420.0
    seed: int = 0


@dataclass
class DemoResult:
    edge: dict = field(default_factory=dict)
    trainer: dict = field(default_factory=dict)
    exit_codes: dict = field(default_factory=dict)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "reachsafe.cli", *args]


def _run_step(title: str, cmd: list[str]) -> None:
    print(f"\n==> {title}\n    $ reachsafe {' '.join(cmd[3:])}", flush=True)
    subprocess.run(cmd, check=True)


class _Service:
    """A long-running child process with its output in a log file; always ended."""

    def __init__(self, name: str, cmd: list[str], logdir: Path) -> None:
        self.name = name
        self.log_path = logdir / f"{name}.log"
        print(f"==> start {name}: reachsafe {' '.join(cmd[3:])}  (log: {self.log_path})", flush=True)
        self.proc = subprocess.Popen(
            cmd,
            stdout=self.log_path.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 30.0) -> int:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop on SIGTERM within %.0fs; killing it", self.name, timeout)
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        return self.proc.returncode

    def tail(self, n: int = 30) -> str:
        lines = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(lines[-n:])


def run_demo(out: Path, s: DemoSettings) -> DemoResult:
    out.mkdir(parents=True, exist_ok=True)
    keys, data, run = out / "keys", out / "dataset.h5", out / "run"
    if not (keys / "signing.key").exists():
        _run_step("generate signing and CurveZMQ keys", _cli("keys", "generate", "--out", str(keys)))
    _run_step(
        "collect an offline dataset with scripted behaviour policies",
        _cli(
            "sim",
            "collect",
            "--task",
            s.task,
            "--policy",
            "mixed",
            "--episodes",
            str(s.dataset_episodes),
            "--out",
            str(data),
            "--workers",
            "2",
            "--seed",
            str(s.seed),
        ),
    )
    _run_step(
        "train offline and export a signed bundle",
        _cli(
            "train",
            "offline",
            "--dataset",
            str(data),
            "--out",
            str(run),
            "--steps",
            str(s.offline_steps),
            "--keys",
            str(keys),
            "--seed",
            str(s.seed),
        ),
    )
    sim_ep, trainer_ep = f"tcp://127.0.0.1:{free_tcp_port()}", f"tcp://127.0.0.1:{free_tcp_port()}"
    summary_path = out / "edge_summary.json"
    services: list[_Service] = []
    result = DemoResult()
    try:
        services.append(
            _Service(
                "sim", _cli("sim", "serve", "--task", s.task, "--bind", sim_ep, "--seed", str(s.seed)), out
            )
        )
        services.append(
            _Service(
                "trainer",
                _cli(
                    "trainer",
                    "serve",
                    "--run",
                    str(run),
                    "--bind",
                    trainer_ep,
                    "--keys",
                    str(keys),
                    "--daemon.ship-every-s",
                    str(s.ship_every_s),
                ),
                out,
            )
        )
        edge = _Service(
            "edge",
            _cli(
                "edge",
                "run",
                "--bundle",
                str(run / "bundle"),
                "--trainer",
                trainer_ep,
                "--hardware",
                f"{sim_ep.replace('tcp://', 'sim:tcp://')}",
                "--rate",
                str(s.rate_hz),
                "--keys",
                str(keys),
                "--max-episodes",
                str(s.episodes),
                "--summary",
                str(summary_path),
                "--spool",
                str(out / "spool"),
                "--state-dir",
                str(out / "edge_state"),
            ),
            out,
        )
        services.append(edge)
        deadline = time.monotonic() + s.timeout_s
        while edge.alive() and time.monotonic() < deadline:
            for svc in services[:2]:
                if not svc.alive():
                    raise RuntimeError(f"{svc.name} exited early:\n{svc.tail()}")
            time.sleep(0.5)
        if edge.alive():
            raise RuntimeError(
                f"the runtime did not finish {s.episodes} episodes in {s.timeout_s:.0f}s:\n{edge.tail()}"
            )
    finally:
        for svc in reversed(services):
            result.exit_codes[svc.name] = svc.stop()
    if summary_path.exists():
        result.edge = json.loads(summary_path.read_text())
    status = run / "status.json"
    if status.exists():
        result.trainer = json.loads(status.read_text())
    return result


def print_summary(result: DemoResult) -> bool:
    """Print the demo's summary; True when the loop closed (a new bundle went live on the robot)."""
    e = result.edge
    versions = e.get("bundle_versions_seen", [])
    print("\n================ reachsafe demo summary ================")
    print(f"episodes            : {e.get('episodes')}")
    print(f"return (mean)       : {e.get('return_mean')}")
    print(f"cost (mean)         : {e.get('cost_mean')}")
    print(f"steps sent / acked  : {e.get('steps_sent')} / {e.get('steps_acked')}")
    print(f"bundle versions seen: {versions}")
    print(f"trainer stored steps: {result.trainer.get('steps_stored')}")
    print(f"exit codes          : {result.exit_codes}")
    closed = len(versions) >= 2 and all(code == 0 for code in result.exit_codes.values())
    print("loop closed: a new bundle went live on the robot" if closed else "loop NOT closed")
    return closed


def _main(args: argparse.Namespace) -> int:
    settings = DemoSettings(episodes=args.episodes, timeout_s=args.timeout)
    result = run_demo(Path(args.out), settings)
    return 0 if print_summary(result) else 1


def add_commands(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="demo_out", help="folder for keys, dataset, run and logs")
    parser.add_argument("--episodes", type=int, default=DemoSettings.episodes, help="episodes the robot runs")
    parser.add_argument(
        "--timeout", type=float, default=DemoSettings.timeout_s, help="give up after this many s"
    )
    parser.set_defaults(func=_main)
