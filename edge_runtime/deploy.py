"""`reachsafe flash`: package the robot runtime into a folder, or push it to a robot over ssh.

The folder holds everything a bare Pi / Jetson needs (docs/deploy.md):

    wheels/      the reachsafe wheel (installed with the `robot` extra: no torch), plus any
                 wheels from --wheelhouse (for robots without a package index)
    payload/     robot.yaml, edge.yaml (the runtime settings from robot.yaml's `edge:`),
                 keys/ (only signing.pub, robot.key_secret, robot.key, trainer.key), bundle/,
                 run.sh (the one command that starts the runtime)
    reachsafe.service   systemd unit: restart on failure; stop = SIGTERM, which the runtime
                 handles by braking the drive and draining the spool
    install.sh / uninstall.sh

`install.sh` (as root on the robot) makes a venv under PREFIX (default /opt/reachsafe), installs
the wheel with the robot extra, copies the payload, verifies and installs the bundle, and
enables the service. `--host user@robot` builds the folder, rsyncs it and runs install.sh there.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from reachsafe.edge_runtime.config import EdgeConfig
from reachsafe.edge_runtime.robot_config import ROBOT_KEY_FILES, RobotConfig, load_robot_config, verify_bundle
from reachsafe.protocol.config import ConfigError

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PREFIX = "/opt/reachsafe"
SERVICE_NAME = "reachsafe"


class FlashError(Exception):
    """Packaging failed; the message says what to fix."""


def add_commands(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--dir", type=Path, help="write a deployable folder here (USB stick, image build)")
    where.add_argument("--host", help="user@robot: build, rsync and run install.sh over ssh")
    parser.add_argument(
        "--robot-config", type=Path, help="the robot's YAML (default: a sim robot on localhost)"
    )
    parser.add_argument("--bundle", type=Path, help="bundle to start with (default: the config's bundle_dir)")
    parser.add_argument(
        "--keys", type=Path, help="key directory from `reachsafe keys generate` (default: the config's)"
    )
    parser.add_argument("--prefix", default=DEFAULT_PREFIX, help="install location on the robot")
    parser.add_argument(
        "--wheelhouse", type=Path, help="extra wheels to ship (e.g. onnxruntime for the robot's CPU)"
    )
    parser.add_argument(
        "--remote-dir", default="reachsafe-deploy", help="--host: folder on the robot (from ~)"
    )
    parser.add_argument("--no-install", action="store_true", help="--host: copy only, do not run install.sh")
    parser.set_defaults(func=flash_main)


def flash_main(args: argparse.Namespace) -> int:
    try:
        if args.dir is not None:
            build_deploy_dir(
                args.dir, args.robot_config, args.bundle, args.keys, args.prefix, args.wheelhouse
            )
            print(f"deploy folder ready: {args.dir}\n  on the robot: sudo {args.dir.name}/install.sh")
            return 0
        with tempfile.TemporaryDirectory(prefix="reachsafe-flash-") as tmp:
            out = Path(tmp) / "deploy"
            build_deploy_dir(out, args.robot_config, args.bundle, args.keys, args.prefix, args.wheelhouse)
            push_to_host(out, args.host, args.remote_dir, install=not args.no_install)
        return 0
    except (FlashError, ConfigError) as e:
        print(f"reachsafe flash: {e}", file=sys.stderr)
        return 2


def build_deploy_dir(
    out: Path,
    robot_config: Path | None,
    bundle: Path | None = None,
    keys: Path | None = None,
    prefix: str = DEFAULT_PREFIX,
    wheelhouse: Path | None = None,
) -> Path:
    """Write the deployable folder `out` (must not exist or be empty)."""
    # paths of local files (keys, bundle) resolve against the YAML's folder; the robot's own
    # paths (state_dir, ...) are kept as written: relative ones are relative to PREFIX there
    cfg = RobotConfig.from_yaml(robot_config) if robot_config is not None else RobotConfig()
    local = load_robot_config(robot_config) if robot_config is not None else cfg
    keys = keys if keys is not None else local.keys_dir
    bundle = bundle if bundle is not None else local.bundle_dir
    if out.exists() and any(out.iterdir()):
        raise FlashError(f"{out} exists and is not empty; choose a new folder")
    payload = out / "payload"
    payload.mkdir(parents=True)
    _copy_keys(keys, payload / "keys")
    if bundle is not None:
        _check_bundle(bundle, payload / "keys", cfg)
        shutil.copytree(bundle, payload / "bundle")
    # the state directory is always pinned: a default computed here (this user's home) means
    # nothing on the robot, so an unset one becomes PREFIX/state
    state_dir = cfg.edge.state_dir if cfg.edge.state_dir != EdgeConfig().state_dir else Path("state")
    robot = cfg.replace(
        keys_dir=Path("keys"),
        bundle_dir=Path("bundle") if bundle is not None else None,
        edge=cfg.edge.replace(state_dir=state_dir),
    )
    robot_dict = robot.to_dict() | {"edge": _non_default(robot.edge) | {"state_dir": str(state_dir)}}
    _write_yaml(payload / "robot.yaml", "robot", robot_dict)
    _write_yaml(payload / "edge.yaml", "edge", robot_dict["edge"])
    state = (
        shlex.quote(str(state_dir)) if state_dir.is_absolute() else f'"$PREFIX"/{shlex.quote(str(state_dir))}'
    )
    _write_exec(payload / "run.sh", RUN_SH.format(trainer=shlex.quote(cfg.trainer.address)))
    (out / "reachsafe.service").write_text(SERVICE.format(robot_id=cfg.robot_id))
    _write_exec(out / "install.sh", INSTALL_SH.format(prefix=prefix, state=state, service=SERVICE_NAME))
    _write_exec(out / "uninstall.sh", UNINSTALL_SH.format(prefix=prefix, state=state, service=SERVICE_NAME))
    _build_wheel(out / "wheels")
    if wheelhouse is not None:
        for whl in sorted(wheelhouse.glob("*.whl")):
            shutil.copy2(whl, out / "wheels" / whl.name)
    log.info("deploy folder for robot %s written to %s", cfg.robot_id, out)
    return out


def _copy_keys(keys: Path, dest: Path) -> None:
    if not (keys / "signing.pub").is_file():
        raise FlashError(
            f"{keys}/signing.pub is missing: the robot verifies bundles with it. Run `reachsafe keys generate "
            f"--out {keys}` on the trainer machine, or pass --keys"
        )
    dest.mkdir(mode=0o700)
    for name in ROBOT_KEY_FILES:
        if (keys / name).is_file():
            shutil.copy2(keys / name, dest / name)
    if (dest / "robot.key_secret").exists():
        os.chmod(dest / "robot.key_secret", 0o600)
    else:
        log.warning(
            "no robot.key_secret / trainer.key in %s: the trainer link will be PLAIN (loopback only)", keys
        )


def _check_bundle(bundle: Path, keys: Path, cfg: RobotConfig) -> None:
    from reachsafe.protocol.errors import BundleError

    try:
        loaded = verify_bundle(bundle, keys, cfg)
    except BundleError as e:
        raise FlashError(f"bundle {bundle} would be rejected by the robot: {e}") from e
    log.info("bundle v%d verified for robot %s", loaded.version, cfg.robot_id)


def _non_default(edge: EdgeConfig) -> dict:
    """The fields that differ from the defaults, so that defaults computed on this machine
    (e.g. a cache path under this user's home) are computed on the robot instead."""
    ours, defaults = edge.to_dict(), EdgeConfig().to_dict()
    return {k: v for k, v in ours.items() if v != defaults[k] or k == "robot_id"}


def _write_yaml(path: Path, kind: str, data: dict) -> None:
    import yaml

    path.write_text(yaml.safe_dump({"kind": kind, **data}, sort_keys=False))


def _write_exec(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o755)


def _build_wheel(dest: Path) -> None:
    if not (REPO_ROOT / "pyproject.toml").is_file():
        raise FlashError(f"flash builds the wheel from a source checkout; {REPO_ROOT} has no pyproject.toml")
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(dest), str(REPO_ROOT)]
    try:
        import setuptools  # noqa: F401  (present: build offline, without an isolated build env)

        cmd.insert(4, "--no-build-isolation")
    except ImportError:
        pass
    result = subprocess.run(cmd, capture_output=True, text=True)
    wheels = list(dest.glob("reachsafe-*.whl"))
    if result.returncode != 0 or len(wheels) != 1:
        raise FlashError(f"building the reachsafe wheel failed:\n{result.stdout}{result.stderr}")


def push_to_host(folder: Path, host: str, remote_dir: str, install: bool = True) -> None:
    """rsync `folder` to host:~/remote_dir and run its install.sh with sudo."""
    ssh = os.environ.get("REACHSAFE_SSH", "ssh")
    rsync = os.environ.get("REACHSAFE_RSYNC", "rsync")
    for tool in (ssh, rsync):
        if shutil.which(tool) is None:
            raise FlashError(f"{tool} is not installed here; install openssh-client and rsync, or use --dir")
    steps = [[rsync, "-az", "--delete", "-e", ssh, f"{folder}/", f"{host}:{remote_dir}/"]]
    if install:
        steps.append([ssh, "-t", host, f"sudo ./{shlex.quote(remote_dir)}/install.sh"])
    for cmd in steps:
        log.info("running: %s", shlex.join(cmd))
        if subprocess.run(cmd).returncode != 0:
            raise FlashError(f"`{shlex.join(cmd)}` failed; check that `ssh {host}` works without a password")
    print(
        f"flashed {host}: reachsafe runtime installed; check it with `ssh {host} sudo systemctl status {SERVICE_NAME}`"
    )


RUN_SH = """#!/bin/sh
# Starts the reachsafe runtime with this robot's files (what the systemd unit runs).
# Extra arguments are passed to `reachsafe edge run`, e.g. ./run.sh --duration 10
cd "$(dirname "$0")"
exec ./venv/bin/reachsafe edge run --hardware robot.yaml --config edge.yaml --keys keys --trainer {trainer} "$@"
"""

SERVICE = """[Unit]
Description=reachsafe robot runtime ({robot_id})
After=network-online.target
Wants=network-online.target
StartLimitIntervalSec=120
StartLimitBurst=5

[Service]
Type=simple
User=reachsafe
Group=reachsafe
SupplementaryGroups=dialout video
WorkingDirectory=@PREFIX@
ExecStart=@PREFIX@/run.sh
# Stopping sends SIGTERM: the runtime brakes the drive, drains the spool and exits 0. The motor
# controller's own command timeout stops the wheels even if the process is killed.
KillSignal=SIGTERM
TimeoutStopSec=20
Restart=on-failure
RestartSec=2
Environment=PYTHONUNBUFFERED=1

[Install]
WantedBy=multi-user.target
"""

INSTALL_SH = """#!/bin/sh
# Install the reachsafe robot runtime from this folder: sudo ./install.sh
# Environment: REACHSAFE_PREFIX (default {prefix}), PYTHON (default python3),
# REACHSAFE_SYSTEMD=0 (no service, no user; for containers and tests),
# REACHSAFE_SYSTEM_SITE=0 (venv without system site-packages; picamera2 comes from apt, so keep 1 on a Pi).
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
PREFIX=${{REACHSAFE_PREFIX:-{prefix}}}
PYTHON=${{PYTHON:-python3}}
STATE={state}
SITE=""
[ "${{REACHSAFE_SYSTEM_SITE:-1}}" = 1 ] && SITE="--system-site-packages"

echo "reachsafe: installing into $PREFIX"
mkdir -p "$PREFIX"
"$PYTHON" -m venv $SITE "$PREFIX/venv"
WHEEL=$(ls "$HERE"/wheels/reachsafe-*.whl)
"$PREFIX/venv/bin/python" -m pip install --quiet --upgrade --find-links "$HERE/wheels" "$WHEEL[robot]"
cp -R "$HERE/payload/." "$PREFIX/"
chmod 700 "$PREFIX/keys"
[ -f "$PREFIX/keys/robot.key_secret" ] && chmod 600 "$PREFIX/keys/robot.key_secret"
mkdir -p "$STATE"
if [ -d "$PREFIX/bundle" ] && [ ! -d "$STATE/bundles" ]; then
    # first install: verify the shipped bundle and make it current (later bundles come from the trainer)
    "$PREFIX/venv/bin/reachsafe" edge install "$PREFIX/bundle" --keys "$PREFIX/keys" --state-dir "$STATE"
fi
if [ "${{REACHSAFE_SYSTEMD:-1}}" = 1 ]; then
    # the service user's home is the state directory: caches (e.g. TensorRT engines) land there
    id -u reachsafe >/dev/null 2>&1 || useradd --system --home-dir "$STATE" --shell /usr/sbin/nologin reachsafe
    usermod -a -G dialout,video reachsafe
    chown -R reachsafe:reachsafe "$STATE" "$PREFIX/keys"
    sed "s#@PREFIX@#$PREFIX#g" "$HERE/reachsafe.service" > /etc/systemd/system/{service}.service
    systemctl daemon-reload
    systemctl enable {service}.service
    systemctl restart {service}.service
    echo "reachsafe: service started; logs: journalctl -u {service} -f"
fi
echo "reachsafe: installed. Check the robot with: $PREFIX/venv/bin/reachsafe edge doctor --robot-config $PREFIX/robot.yaml"
"""

UNINSTALL_SH = """#!/bin/sh
# Remove the reachsafe runtime: sudo ./uninstall.sh [--purge]   (--purge also deletes state: bundles, spool)
set -eu
PREFIX=${{REACHSAFE_PREFIX:-{prefix}}}
STATE={state}
if [ "${{REACHSAFE_SYSTEMD:-1}}" = 1 ] && [ -f /etc/systemd/system/{service}.service ]; then
    systemctl disable --now {service}.service   # SIGTERM: the runtime brakes before exiting
    rm -f /etc/systemd/system/{service}.service
    systemctl daemon-reload
fi
rm -rf "$PREFIX/venv" "$PREFIX/keys" "$PREFIX/bundle" "$PREFIX/robot.yaml" "$PREFIX/edge.yaml" "$PREFIX/run.sh"
if [ "${{1:-}}" = "--purge" ]; then
    rm -rf "$STATE"
    echo "reachsafe: removed, state purged"
else
    echo "reachsafe: removed; state kept in $STATE (uninstall.sh --purge deletes it)"
fi
"""
