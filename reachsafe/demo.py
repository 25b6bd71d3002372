"""``reachsafe demo``: the whole loop on localhost, every part a separate real process.

keys → dataset (scripted behaviour policies in PyBullet) → offline training + signed bundle →
sim robot server, trainer daemon and edge runtime on free loopback ports → the robot drives while
the daemon pre-aligns its critics (VPA), fine-tunes online and ships bundles, until a bundle with
online updates is live on the robot → summary → everything shut down.
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
    """Sizes chosen so the demo finishes within ten minutes on a 2-core machine: a short Value
    Pre-Alignment lets the learner reach online updates while the robot drives, and a bundle is
    shipped every few of them."""

    task: str = "reachsafe/SafeGoal1-v0"
    dataset_episodes: int = 24
    offline_steps: int = 600
    episodes: int = 4  # at least this many, and on until a fine-tuned bundle is live on the robot
    rate_hz: float = 20.0
    vpa_steps: int = 500  # of the default 2000, so that online updates start while the robot drives
    warmup_steps: int = 256
    ship_every_updates: int = 20
    ship_every_s: float = 15.0
    timeout_s: float = 420.0  # for the robot's part, from the start of the services
    seed: int = 0


@dataclass(frozen=True)
class LiveBundle:
    """A bundle that went live on the robot, and the online updates its weights carry."""

    version: int
    parent: int | None
    online_updates: int


@dataclass
class DemoResult:
    edge: dict = field(default_factory=dict)
    trainer: dict = field(default_factory=dict)
    exit_codes: dict = field(default_factory=dict)
    bundles: list[LiveBundle] = field(default_factory=list)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "reachsafe", *args]


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
    from reachsafe.edge_runtime.runtime import STATUS_FILE

    sim_ep, trainer_ep = f"tcp://127.0.0.1:{free_tcp_port()}", f"tcp://127.0.0.1:{free_tcp_port()}"
    state = out / "edge_state"
    (state / STATUS_FILE).unlink(missing_ok=True)  # a status left by an earlier demo must not end this one
    summary_path = out / "edge_summary.json"
    summary_path.unlink(missing_ok=True)
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
                    "daemon",
                    "serve",
                    "--run",
                    str(run),
                    "--bind",
                    trainer_ep,
                    "--keys",
                    str(keys),
                    "--vpa.steps",
                    str(s.vpa_steps),
                    "--replay.warmup-steps",
                    str(s.warmup_steps),
                    "--daemon.ship-every-updates",
                    str(s.ship_every_updates),
                    "--daemon.ship-every-s",
                    str(s.ship_every_s),
                ),  # fmt: skip
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
                f"sim:{sim_ep}/robot0",  # robot0: its name on the sim server and at the trainer
                "--rate",
                str(s.rate_hz),
                "--keys",
                str(keys),
                "--summary",
                str(summary_path),
                "--spool",
                str(out / "spool"),
                "--state-dir",
                str(state),
            ),  # fmt: skip
            out,
        )
        services.append(edge)
        _drive_until_fine_tuned_bundle_is_live(services, state, s)
    finally:
        for svc in reversed(services):
            result.exit_codes[svc.name] = svc.stop()
    if summary_path.exists():
        result.edge = json.loads(summary_path.read_text())
        result.bundles = live_bundles(state, result.edge.get("bundle_versions_seen", []))
    status = run / "status.json"
    if status.exists():
        result.trainer = json.loads(status.read_text())
    return result


def _drive_until_fine_tuned_bundle_is_live(services: list[_Service], state: Path, s: DemoSettings) -> None:
    """Return once the robot has run `s.episodes` episodes and a bundle with online updates went live
    on it (read from the runtime's status file and its bundle store); RuntimeError if a service dies
    or `s.timeout_s` passes first."""
    from reachsafe.edge_runtime.runtime import STATUS_FILE

    deadline = time.monotonic() + s.timeout_s
    while True:
        for svc in services:
            if not svc.alive():
                raise RuntimeError(f"{svc.name} exited early:\n{svc.tail()}")
        try:
            status = json.loads((state / STATUS_FILE).read_text())
        except (OSError, ValueError):  # not written yet
            status = {}
        live = live_bundles(state, status.get("bundle_versions_seen", []))
        if status.get("episodes", 0) >= s.episodes and any(b.online_updates > 0 for b in live):
            return
        if time.monotonic() > deadline:
            trainer = next(svc for svc in services if svc.name == "trainer")
            raise RuntimeError(
                f"no bundle with online updates went live on the robot within {s.timeout_s:.0f}s "
                f"(live: {live}, episodes: {status.get('episodes')}); the trainer's log:\n{trainer.tail()}"
            )
        time.sleep(0.5)


def live_bundles(state_dir: Path, versions_seen: list[int]) -> list[LiveBundle]:
    """Each bundle the robot ran, in the order it first went live, with its online updates, read from
    the manifests the robot stored. A daemon bundle's `training_step` counts the learner's online
    (SAC-Lag) updates since the offline run; the offline bundle, the root of the chain (no parent),
    carries none."""
    from reachsafe.edge_runtime.bundles import BundleStore

    store = BundleStore(state_dir / "bundles", trusted_keys=[])
    out = []
    for version in dict.fromkeys(versions_seen):
        manifest = json.loads((store.path(version) / "manifest.json").read_text())
        parent = manifest["parent"]
        out.append(LiveBundle(version, parent, 0 if parent is None else int(manifest["training_step"])))
    return out


def print_summary(result: DemoResult) -> bool:
    """Print the demo's summary; True when the loop closed: a bundle fine-tuned online (with online
    updates, not only the offline weights re-exported) went live on the robot, and all exited 0."""
    e = result.edge
    print("\n================ reachsafe demo summary ================")
    print(f"episodes            : {e.get('episodes')}")
    print(f"return (mean)       : {e.get('return_mean')}")
    print(f"cost (mean)         : {e.get('cost_mean')}")
    print(f"steps sent / acked  : {e.get('steps_sent')} / {e.get('steps_acked')}")
    print(f"trainer stored steps: {result.trainer.get('steps_stored')}")
    print(f"trainer updates     : {result.trainer.get('updates')} ({result.trainer.get('phase')})")
    print("bundles live on the robot (online updates since the offline run):")
    for b in result.bundles:
        origin = "offline bundle" if b.parent is None else f"parent v{b.parent}"
        print(f"  v{b.version:<4} {origin:<15} {b.online_updates} online updates")
    print(f"exit codes          : {result.exit_codes}")
    tuned = [b for b in result.bundles if b.online_updates > 0]
    closed = bool(tuned) and all(code == 0 for code in result.exit_codes.values())
    if closed:
        print(
            f"loop closed: bundle v{tuned[-1].version}, fine-tuned by {tuned[-1].online_updates} online "
            "updates, went live on the robot"
        )
    else:
        print("loop NOT closed: no bundle with online updates went live on the robot")
    return closed


def _main(args: argparse.Namespace) -> int:
    settings = DemoSettings(episodes=args.episodes, timeout_s=args.timeout)
    result = run_demo(Path(args.out), settings)
    return 0 if print_summary(result) else 1


def add_commands(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="demo_out", help="folder for keys, dataset, run and logs")
    parser.add_argument(
        "--episodes",
        type=int,
        default=DemoSettings.episodes,
        help="episodes the robot runs at least (it runs on until a fine-tuned bundle is live)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DemoSettings.timeout_s,
        help="give up if no fine-tuned bundle is live on the robot this many s after the services start",
    )
    parser.set_defaults(func=_main)
