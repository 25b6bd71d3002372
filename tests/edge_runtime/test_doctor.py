"""`reachsafe edge doctor` against a real sim server, and what it says when things are missing."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest
from conftest import REPO, free_tcp_port, poll_until

from reachsafe.edge_runtime.doctor import CHECKS, format_table, run_doctor
from reachsafe.edge_runtime.robot_config import RobotConfig
from reachsafe.protocol.keys import generate_keys, load_signing_key
from tests.fixtures.edge_support import make_test_bundle


@pytest.fixture
def trainer_port():
    """Something accepting TCP where the trainer would be."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def config(tmp_path, keys, sim_port: int, trainer_port: int, bundle=None) -> RobotConfig:
    cfg = RobotConfig.from_dict(
        {
            "hardware": {"sim": {"endpoint": f"tcp://127.0.0.1:{sim_port}"}},
            "edge": {
                "state_dir": str(tmp_path / "state"),
                "spool_max_bytes": 16 * 2**20,
                "spool_segment_bytes": 2**20,
            },
            "trainer": {"address": f"tcp://127.0.0.1:{trainer_port}"},
        }
    )
    return cfg.replace(keys_dir=keys, bundle_dir=bundle)


def test_all_checks_pass_against_the_sim_server(tmp_path, keys, trainer_port, processes) -> None:
    sim_port = free_tcp_port()
    proc = processes.reachsafe("sim", "serve", "--bind", f"tcp://127.0.0.1:{sim_port}", name="sim")
    bundle = make_test_bundle(
        tmp_path / "bundle", load_signing_key(keys / "signing.key"), 2, obs_shape=(64, 64, 3)
    )
    cfg = config(tmp_path, keys, sim_port, trainer_port, bundle)

    def sim_up() -> bool:
        assert proc.poll() is None, processes.log(proc)
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", sim_port)) == 0

    poll_until(sim_up, 60.0, 0.1, "the sim server")
    results = run_doctor(cfg)
    assert [r.name for r in results] == list(CHECKS)
    # the camera check measures the frame rate, which a loaded CI machine can push just below the
    # control rate: that is a warning, never a failure; every other check must pass outright
    assert all(r.status == "pass" or (r.name == "camera" and r.status == "warn") for r in results), (
        format_table(results)
    )
    by_name = {r.name: r.detail for r in results}
    assert by_name["bundle"].startswith("v2 (fp32)") and "64x64 RGB" in by_name["camera"]


def test_failures_say_what_to_do(tmp_path, keys) -> None:
    other = tmp_path / "other"
    generate_keys(other)
    foreign = make_test_bundle(tmp_path / "bundle", load_signing_key(other / "signing.key"), 1)
    cfg = config(tmp_path, keys, free_tcp_port(), free_tcp_port(), foreign)
    (keys / "robot.key_secret").chmod(0o644)
    results = {r.name: r for r in run_doctor(cfg, ["keys", "bundle", "camera", "trainer"])}
    assert {r.status for r in results.values()} == {"fail"}
    assert "chmod 600" in results["keys"].fix
    assert "signed by this robot's trusted signing key" in results["bundle"].fix
    assert "reachsafe sim serve" in results["camera"].detail + results["camera"].fix
    assert "reachsafe daemon serve" in results["trainer"].fix


def test_plain_link_to_a_remote_trainer_is_a_failure(tmp_path) -> None:
    (tmp_path / "keys").mkdir()
    generate_keys(tmp_path / "all")
    (tmp_path / "keys" / "signing.pub").write_bytes((tmp_path / "all" / "signing.pub").read_bytes())
    cfg = RobotConfig.from_dict({"trainer": {"address": "tcp://192.168.1.10:5555"}}).replace(
        keys_dir=tmp_path / "keys"
    )
    (result,) = run_doctor(cfg, ["keys"])
    assert result.status == "fail" and "robot.key_secret" in result.fix
    (result,) = run_doctor(cfg.replace(trainer=cfg.trainer.replace(address="tcp://127.0.0.1:5555")), ["keys"])
    assert result.status == "warn"


def test_doctor_command_prints_a_table_and_exit_code(tmp_path, keys) -> None:
    cmd = [
        sys.executable,
        "-m",
        "reachsafe.cli",
        "edge",
        "doctor",
        "--keys",
        str(keys),
        "--state-dir",
        str(tmp_path),
    ]
    ok = subprocess.run(
        [*cmd, "--only", "clock,keys", "--json"], capture_output=True, text=True, cwd=REPO, timeout=60
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert [r["status"] for r in json.loads(ok.stdout)] == ["pass", "pass"]
    bad = subprocess.run(
        [*cmd, "--only", "trainer", "--trainer", f"tcp://127.0.0.1:{free_tcp_port()}"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert bad.returncode == 1 and "FAIL" in bad.stdout and "->" in bad.stdout
