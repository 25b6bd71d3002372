"""`reachsafe edge run | status | rollback | install | doctor`."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path

from reachsafe.edge_runtime.bundles import BundleRejected, BundleStore
from reachsafe.edge_runtime.config import EdgeConfig
from reachsafe.edge_runtime.doctor import CHECKS, DEFAULT_ROBOT_CONFIG, format_table, run_doctor
from reachsafe.edge_runtime.robot_config import RobotConfig, load_robot_config, one_robot_id
from reachsafe.edge_runtime.runtime import STATUS_FILE, EdgeRuntime
from reachsafe.edge_runtime.spool import SpoolError
from reachsafe.hardware.errors import HardwareError
from reachsafe.hardware.factory import SIM_URI_FORM, hardware_config, make_robot
from reachsafe.protocol.bundle import load_bundle
from reachsafe.protocol.config import ConfigError, add_config_arguments, load_config
from reachsafe.protocol.errors import BundleError, KeyFileError
from reachsafe.protocol.files import write_json_atomically
from reachsafe.protocol.keys import load_trusted_keys
from reachsafe.signals import stop_on_signals

log = logging.getLogger(__name__)

#: A status file older than this (seconds) means the runtime is not running any more.
STATUS_STALE_S = 5.0


def add_commands(parser: argparse.ArgumentParser) -> None:
    verbs = parser.add_subparsers(dest="verb", metavar="<verb>")

    run = verbs.add_parser(
        "run", help="run the control loop (until SIGINT/SIGTERM, --max-episodes or --duration)"
    )
    run.add_argument(
        "--bundle", type=Path, help="bundle directory to start with (default: the installed current one)"
    )
    run.add_argument("--trainer", required=True, help="trainer endpoint, e.g. tcp://127.0.0.1:5555")
    run.add_argument(
        "--hardware",
        required=True,
        help=f"{SIM_URI_FORM} or a robot config YAML; its robot id is the one the trainer sees",
    )
    run.add_argument("--rate", type=float, help="control rate in Hz (same as --rate-hz)")
    run.add_argument(
        "--keys",
        type=Path,
        help="key directory: signing.pub (bundles), robot.key_secret + trainer.key (CURVE)",
    )
    run.add_argument("--spool", type=Path, help="spool directory (same as --spool-dir)")
    run.add_argument(
        "--config", type=Path, help="EdgeConfig YAML (kind: edge); options given here override it"
    )
    limits = run.add_mutually_exclusive_group()
    limits.add_argument("--max-episodes", type=int, help="stop after this many episodes")
    limits.add_argument("--duration", type=float, help="stop after this many seconds")
    run.add_argument("--summary", type=Path, help="also write the run summary as JSON to this file")
    add_config_arguments(run, EdgeConfig)
    run.set_defaults(func=cmd_run)

    for name, func, helptext in (
        ("status", cmd_status, "show the running (or last) runtime's status and metrics"),
        (
            "rollback",
            cmd_rollback,
            "make the previous bundle current (a running runtime follows within ~1 s)",
        ),
        ("install", cmd_install, "verify a bundle directory (e.g. from a USB stick) and make it current"),
    ):
        p = verbs.add_parser(name, help=helptext)
        p.add_argument(
            "--state-dir",
            type=Path,
            help=f"runtime state directory [default: --config's, else {EdgeConfig().state_dir}]",
        )
        p.add_argument("--config", type=Path, help="the runtime's EdgeConfig YAML (for its state_dir)")
        p.set_defaults(func=func)
        if name == "status":
            p.add_argument("--json", action="store_true", help="print the raw status JSON")
        if name == "install":
            p.add_argument("source", type=Path, help="bundle directory to install")
            p.add_argument(
                "--keys", type=Path, required=True, help="directory (or file) with the trusted signing.pub"
            )

    _add_doctor(verbs)


def _add_doctor(verbs: argparse._SubParsersAction) -> None:
    """`doctor`: the checks live in edge_runtime/doctor.py (`run_doctor(config, only)`)."""
    doctor = verbs.add_parser("doctor", help="check this robot: hardware, providers, keys, trainer link")
    add_doctor_arguments(doctor)
    doctor.set_defaults(func=doctor_main)


def add_doctor_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--robot-config", type=Path, help=f"the robot's YAML (default: {DEFAULT_ROBOT_CONFIG} if it exists)"
    )
    parser.add_argument(
        "--hardware", help=f"override the devices (and the robot id): {SIM_URI_FORM} or a robot YAML"
    )
    parser.add_argument("--trainer", help="override trainer.address")
    parser.add_argument("--keys", type=Path, help="override keys_dir")
    parser.add_argument("--bundle", type=Path, help="override bundle_dir")
    parser.add_argument("--state-dir", type=Path, help="override edge.state_dir (installed bundles, spool)")
    parser.add_argument("--only", help=f"comma-separated checks to run, from {','.join(CHECKS)}")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")


def _config_from_args(args: argparse.Namespace) -> RobotConfig:
    path = args.robot_config
    if path is None and DEFAULT_ROBOT_CONFIG.is_file():
        path = DEFAULT_ROBOT_CONFIG
    cfg = load_robot_config(path) if path is not None else RobotConfig()
    if args.hardware:  # the devices, and with them the robot's name
        hardware = hardware_config(args.hardware)
        cfg = cfg.replace(hardware=hardware, edge=cfg.edge.replace(robot_id=hardware.robot_id))
    if args.trainer:
        cfg = cfg.replace(trainer=cfg.trainer.replace(address=args.trainer))
    if args.keys:
        cfg = cfg.replace(keys_dir=args.keys)
    if args.bundle:
        cfg = cfg.replace(bundle_dir=args.bundle)
    if args.state_dir:
        cfg = cfg.replace(edge=cfg.edge.replace(state_dir=args.state_dir))
    return cfg


def doctor_main(args: argparse.Namespace) -> int:
    try:
        cfg = _config_from_args(args)
    except (ConfigError, ValueError) as e:
        print(f"reachsafe edge doctor: {e}")
        return 2
    only = [c.strip() for c in args.only.split(",")] if args.only else None
    unknown = sorted(set(only or ()) - set(CHECKS))
    if unknown:
        print(f"reachsafe edge doctor: unknown check(s) {unknown}; choose from {list(CHECKS)}")
        return 2
    results = run_doctor(cfg, only)
    if args.json:
        print(json.dumps([asdict(r) for r in results], indent=2))
    else:
        print(f"reachsafe doctor: robot {cfg.robot_id}, trainer {cfg.trainer.address}")
        print(format_table(results))
    return 1 if any(r.status == "fail" for r in results) else 0


def _load_edge_config(args: argparse.Namespace) -> EdgeConfig:
    cfg = load_config(EdgeConfig, args.config, args)
    if args.rate is not None:
        cfg = cfg.replace(rate_hz=args.rate)
    if args.spool is not None:
        cfg = cfg.replace(spool_dir=args.spool)
    return cfg


def cmd_run(args: argparse.Namespace) -> int:
    try:
        hardware = hardware_config(args.hardware)
        cfg = one_robot_id(_load_edge_config(args), hardware, given=args.cfg__robot_id)
    except (ConfigError, ValueError) as exc:
        print(f"reachsafe edge run: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    # a second signal stops waiting for the trainer's ACKs
    signals = stop_on_signals(stop.set, "stopping (brake, flush the spool, close)", second_interrupts=True)
    try:
        with signals:
            runtime = EdgeRuntime(cfg, make_robot(hardware), args.trainer, args.keys, args.bundle)
            summary = runtime.run(stop, max_episodes=args.max_episodes, duration=args.duration)
    except (BundleError, BundleRejected, HardwareError, SpoolError, KeyFileError, ValueError) as exc:
        print(f"reachsafe edge run: cannot start: {exc}", file=sys.stderr)
        return 2
    clean = {k: (None if isinstance(v, float) and v != v else v) for k, v in summary.items()}
    if args.summary is not None:
        args.summary.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomically(args.summary, clean)
    print("edge summary: " + json.dumps(clean, sort_keys=True), flush=True)
    return 0


def _state_dir(args: argparse.Namespace) -> Path:
    if args.state_dir is not None:
        return args.state_dir
    try:
        return load_config(EdgeConfig, args.config).state_dir
    except ConfigError as exc:
        raise SystemExit(f"reachsafe edge {args.verb}: {exc}") from None


def cmd_status(args: argparse.Namespace) -> int:
    path = _state_dir(args) / STATUS_FILE
    try:
        status = json.loads(path.read_text())
    except (OSError, ValueError):
        print(f"no runtime status at {path}; is `reachsafe edge run --state-dir {path.parent}` running?")
        return 1
    age = time.time() - status.get("time_unix", 0)
    status["stale"] = bool(status.get("running")) and age > STATUS_STALE_S
    if args.json:
        print(json.dumps(status, indent=2, sort_keys=True))
        return 0
    state = "running" if status.get("running") and not status["stale"] else "not running"
    print(f"robot {status['robot_id']} ({state}; status {age:.1f} s old, pid {status['pid']})")
    print(
        f"  bundle v{status['bundle_version']} on {', '.join(status['providers'])}; seen {status['bundle_versions_seen']}"
    )
    print(
        f"  mode {status['mode']} at {status['rate_hz']} Hz; {status['episodes']} episodes, {status['steps']} steps"
    )
    for key, value in sorted(status["metrics"].items()):
        print(f"  {key:40s} {value:.4g}")
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    store = BundleStore(_state_dir(args) / "bundles", trusted_keys=[])
    try:
        bad, good = store.rollback()
    except BundleRejected as exc:
        print(f"reachsafe edge rollback: {exc}", file=sys.stderr)
        return 1
    print(f"rolled back v{bad} -> v{good}; a running runtime switches within ~1 s, v{bad} is marked bad")
    return 0


def cmd_install(args: argparse.Namespace) -> int:
    trusted = load_trusted_keys(args.keys)
    store = BundleStore(_state_dir(args) / "bundles", trusted)
    current = store.pointer()["current"]
    spec: tuple[tuple[int, ...] | None, int | None] = (None, None)
    if current is not None:
        running = load_bundle(store.path(current), trusted)
        spec = (running.obs_shape, running.action_dim)
    try:
        bundle = load_bundle(args.source, trusted, *spec)
    except BundleError as exc:
        print(f"reachsafe edge install: rejected {args.source}: {exc}", file=sys.stderr)
        return 1
    store.store(bundle)
    store.set_current(bundle.version)
    print(f"installed bundle v{bundle.version} from {args.source}; a running runtime loads it within ~1 s")
    return 0
