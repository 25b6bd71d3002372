"""`reachsafe flash`: the deploy folder, pushing it over ssh, and (slow) installing it in a fresh venv."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml
from conftest import free_tcp_port, poll_until

from reachsafe.cli import main
from reachsafe.edge_runtime.robot_config import RobotConfig, load_robot_config
from reachsafe.protocol.keys import generate_keys, load_signing_key
from tests.fixtures.edge_support import make_test_bundle
from tests.fixtures.flashed import install_flashed, robot_env


def robot_yaml(tmp_path, **sections) -> Path:
    data = {
        "kind": "robot",
        "hardware": {"robot_id": "robot0"},
        "trainer": {"address": "tcp://127.0.0.1:5555"},
    }
    data.update(sections)
    path = tmp_path / "robot.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def flash_dir(out: Path, cfg: Path, bundle: Path, keys: Path) -> int:
    """`reachsafe flash --dir OUT` with a robot config, a bundle and a key directory."""
    return main(
        ["flash", "--dir", str(out), "--robot-config", str(cfg), "--bundle", str(bundle), "--keys", str(keys)]
    )


def test_flash_dir_writes_a_complete_folder(tmp_path, keys) -> None:
    bundle = make_test_bundle(tmp_path / "bundle", load_signing_key(keys / "signing.key"), 3)
    out = tmp_path / "deploy"
    rc = flash_dir(out, robot_yaml(tmp_path), bundle, keys)
    assert rc == 0
    shipped = sorted(p.name for p in (out / "payload" / "keys").iterdir())
    assert shipped == ["robot.key", "robot.key_secret", "signing.pub", "trainer.key"]  # no trainer secrets
    assert stat.S_IMODE((out / "payload" / "keys" / "robot.key_secret").stat().st_mode) == 0o600
    assert (out / "payload" / "bundle" / "manifest.json").is_file()
    robot = load_robot_config(out / "payload" / "robot.yaml")
    assert robot.keys_dir == out / "payload" / "keys" and robot.bundle_dir == out / "payload" / "bundle"
    edge = yaml.safe_load((out / "payload" / "edge.yaml").read_text())
    assert edge == {"kind": "edge", "robot_id": "robot0", "state_dir": "state"}  # pinned under PREFIX
    run_sh = (out / "payload" / "run.sh").read_text()
    assert (
        "edge run --hardware robot.yaml --config edge.yaml --keys keys --trainer tcp://127.0.0.1:5555"
        in run_sh
    )
    unit = (out / "reachsafe.service").read_text()
    for line in (
        "Restart=on-failure",
        "KillSignal=SIGTERM",
        "ExecStart=@PREFIX@/run.sh",
        "WantedBy=multi-user.target",
    ):
        assert line in unit
    for script in ("install.sh", "uninstall.sh", "payload/run.sh"):
        assert os.access(out / script, os.X_OK)
        assert subprocess.run(["sh", "-n", str(out / script)]).returncode == 0
    (wheel,) = (out / "wheels").glob("reachsafe-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        metadata = zf.read(next(n for n in names if n.endswith("METADATA"))).decode()
    assert "reachsafe/hardware/serial_drive.py" in names and "reachsafe/edge_runtime/deploy.py" in names
    top_level = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top_level == {"reachsafe"}, f"the wheel puts {top_level} at the top of site-packages"
    robot_deps = [
        line for line in metadata.splitlines() if line.startswith("Requires-Dist") and "robot" in line
    ]
    assert robot_deps and not any("torch" in line for line in robot_deps)


def test_flash_refuses_a_bundle_the_robot_would_reject(tmp_path, keys) -> None:
    other = tmp_path / "other"
    generate_keys(other)
    bundle = make_test_bundle(tmp_path / "bundle", load_signing_key(other / "signing.key"), 1)
    cfg = robot_yaml(tmp_path)
    rc = flash_dir(tmp_path / "d1", cfg, bundle, keys)
    assert rc == 2
    ours = make_test_bundle(tmp_path / "ours", load_signing_key(keys / "signing.key"), 1)  # 16x16 frames
    cfg = robot_yaml(tmp_path, hardware={"camera": {"backend": "opencv", "source": "/dev/video0"}})
    rc = flash_dir(tmp_path / "d2", cfg, ours, keys)
    assert rc == 2
    assert not (tmp_path / "d2" / "wheels").exists()


def test_flash_without_signing_pub_says_what_to_do(tmp_path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    assert main(["flash", "--dir", str(tmp_path / "d"), "--keys", str(tmp_path / "empty")]) == 2
    assert "reachsafe keys generate" in capsys.readouterr().err


def test_flash_host_rsyncs_and_installs_over_ssh(tmp_path, keys, monkeypatch) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls.jsonl"
    for tool in ("ssh", "rsync"):
        script = bin_dir / tool
        script.write_text(
            f"#!{sys.executable}\nimport json, sys\n"
            f"open({str(calls)!r}, 'a').write(json.dumps([{tool!r}, *sys.argv[1:]]) + '\\n')\n"
        )
        script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    assert main(["flash", "--host", "pi@robot.local", "--keys", str(keys)]) == 0
    rsync, ssh = (json.loads(line) for line in calls.read_text().splitlines())
    assert (
        rsync[:5] == ["rsync", "-az", "--delete", "-e", "ssh"]
        and rsync[-1] == "pi@robot.local:reachsafe-deploy/"
    )
    assert ssh == ["ssh", "-t", "pi@robot.local", "sudo ./reachsafe-deploy/install.sh"]


@pytest.mark.slow
def test_install_in_a_fresh_venv_runs_the_runtime_against_the_sim_server(tmp_path, keys, processes) -> None:
    """The whole path: flash --dir, install.sh into a fresh venv (robot extra only: no torch), then the
    installed runtime (run.sh, what systemd starts) drives the PyBullet robot served by `reachsafe sim serve`."""
    sim_port = free_tcp_port()
    bundle = make_test_bundle(
        tmp_path / "bundle", load_signing_key(keys / "signing.key"), 1, obs_shape=(64, 64, 3)
    )
    cfg = robot_yaml(
        tmp_path,
        hardware={"robot_id": "robot0", "sim": {"endpoint": f"tcp://127.0.0.1:{sim_port}"}},
        trainer={"address": f"tcp://127.0.0.1:{free_tcp_port()}"},  # no trainer: the runtime spools
        edge={"drain_timeout": 1.0},
    )
    out = tmp_path / "deploy"
    assert flash_dir(out, cfg, bundle, keys) == 0
    prefix = tmp_path / "opt"
    py = install_flashed(out, prefix) / "python"
    env = robot_env(prefix)
    installed = {
        p["name"].lower()
        for p in json.loads(subprocess.check_output([py, "-m", "pip", "list", "--format=json"]))
    }
    assert {"reachsafe", "onnxruntime", "pyzmq", "msgpack"} <= installed
    assert not {"torch", "pybullet", "gymnasium"} & installed
    # install.sh verified the shipped bundle and made it current
    assert (prefix / "state" / "bundles").is_dir()

    processes.reachsafe("sim", "serve", "--bind", f"tcp://127.0.0.1:{sim_port}", name="sim")

    def sim_up() -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", sim_port)) == 0

    poll_until(sim_up, 60.0, 0.1, "the sim server")
    summary = tmp_path / "summary.json"
    run = subprocess.run(
        [str(prefix / "run.sh"), "--duration", "4", "--summary", str(summary)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    steps = json.loads(summary.read_text())["steps"]
    assert steps >= 20, steps  # 4 s at 20 Hz, allowing for start-up
    assert json.loads((prefix / "state" / "status.json").read_text())["robot_id"] == "robot0"
    assert isinstance(load_robot_config(prefix / "robot.yaml"), RobotConfig)
