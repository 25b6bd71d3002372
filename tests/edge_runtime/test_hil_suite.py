"""`reachsafe hil run`: the HIL scenarios against a real bridge (`sim serve --faults`, PyBullet) and a
trainer on real sockets; a fast subset on loopback, the whole suite (slow) on loopback, over CURVE
across a network namespace, and from a flashed package without torch."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import REPO, Processes, free_tcp_port, poll_until

from reachsafe.edge_runtime.config import EdgeConfig, RollbackConfig
from reachsafe.edge_runtime.hil.config import HilConfig
from reachsafe.edge_runtime.hil.report import format_table
from reachsafe.edge_runtime.hil.scenarios import SCENARIOS
from reachsafe.edge_runtime.hil.suite import run_suite
from reachsafe.protocol.config import ConfigError
from reachsafe.protocol.keys import generate_keys, load_signing_key
from reachsafe.sim_bridge.server import ServerConfig, running
from scripts.hil_bundles import make_hil_bundles
from tests.edge_runtime.test_flash import flash_dir, robot_yaml
from tests.fixtures.edge_support import StubTrainer, make_test_bundle
from tests.fixtures.flashed import install_flashed

#: The scenarios `make test` runs (about 25 s); the rest need longer phases or a relay.
FAST = ["nominal", "camera_stall", "estop", "tampered_bundle", "nonfinite_rollback", "sim_partition"]
#: Q_h high at the policies' actions and low at the brake: the shield replaces every proposal.
GRAPH = {"obs_shape": (64, 64, 3), "q_h_bias": (5.0, 5.0, -5.0, 5.0, 5.0)}


@dataclass
class Bundles:
    workstation: Path  # every key: signing.key, trainer.key_secret, robot.key (the servers admit it)
    keys: (
        Path  # what a robot holds: signing.pub (and its CURVE pair and trainer.key where the test uses CURVE)
    )
    start: Path  # v1
    swap: Path  # v2
    nonfinite: Path  # v3: NaN on every frame brighter than black


def make_bundles(root: Path, curve: bool = False) -> Bundles:
    every = root / "allkeys"
    generate_keys(every)
    keys = root / "keys"
    keys.mkdir()
    for name in ("signing.pub", *(("robot.key_secret", "robot.key", "trainer.key") if curve else ())):
        shutil.copy(every / name, keys / name)
    sk = load_signing_key(every / "signing.key")
    return Bundles(
        every,
        keys,
        make_test_bundle(root / "v1", sk, 1, **GRAPH),
        make_test_bundle(root / "v2", sk, 2, parent=1, seed=3, **GRAPH),
        make_test_bundle(root / "v3", sk, 3, parent=1, nan_above=0.0, **GRAPH),
    )


@dataclass
class Bench:
    bridge: str  # sim URI
    trainer: StubTrainer
    bundles: Bundles


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bench]:
    """A bridge with faults allowed and a trainer on loopback, shared by the module's tests."""
    bundles = make_bundles(tmp_path_factory.mktemp("hil"))
    trainer = StubTrainer(free_tcp_port()).start()
    try:
        with running(ServerConfig(bind=f"tcp://127.0.0.1:{free_tcp_port()}", faults=True)) as srv:
            yield Bench(f"sim:{srv.endpoint}/robot0?timeout_s=0.1", trainer, bundles)
    finally:
        trainer.stop()


def short_phases(**kw: object) -> dict:
    """Phases short enough for the test suite, a rollback after 20 steps, no fsync per batch."""
    edge = EdgeConfig(rollback=RollbackConfig(min_steps=20), spool_fsync=False, drain_timeout=5.0)
    return {"settle_s": 1.0, "fault_s": 1.5, "recover_s": 1.5, "wait_s": 10.0, "edge": edge} | kw


def config(bench: Bench, out: Path, scenarios: list[str], **kw: object) -> HilConfig:
    b = bench.bundles
    return HilConfig(
        bridge=bench.bridge, trainer=bench.trainer.endpoint, keys=b.keys, bundle=b.start,
        swap_bundle=b.swap, nonfinite_bundle=b.nonfinite, scenarios=scenarios, out=out, **short_phases(**kw),
    )  # fmt: skip


def test_the_fast_scenarios_pass_and_write_their_report(bench: Bench, tmp_path: Path) -> None:
    stored_before = len(bench.trainer.steps_of())
    lines: list[str] = []
    report = run_suite(config(bench, tmp_path / "out", FAST), progress=lines.append)
    table = format_table(report)
    assert report.passed, table
    assert [s.name for s in report.scenarios] == FAST
    assert len(lines) == 2 * len(FAST) and lines[-1].startswith(
        f"[{len(FAST)}/{len(FAST)}] sim_partition: passed"
    )
    for s in report.scenarios:
        n = s.numbers
        assert (
            n["steps"] > 0 and n["steps_lost"] == 0 and n["steps_acked"] == n["steps_sent"] == n["steps"]
        ), s
        assert n["tick_ms_p50"] > 0 and n["tick_ms_p99"] >= n["tick_ms_p50"]
        assert {c.name for c in s.checks} >= {"nothing lost"}
    by_name = {s.name: s for s in report.scenarios}
    assert by_name["camera_stall"].numbers["fault_brakes"]["stale_frame"] > 0
    assert by_name["sim_partition"].numbers["fault_brakes"]
    assert by_name["nonfinite_rollback"].numbers["bundle_versions_seen"] == [1, 3, 1]
    assert by_name["tampered_bundle"].numbers["bundle_versions_seen"] == [1]
    assert by_name["nominal"].numbers["interventions"] == by_name["nominal"].numbers["steps"]  # GRAPH's Q_h
    # the trainer has every step the robot recorded (each scenario is a stream of its own)
    assert len(bench.trainer.steps_of()) - stored_before == sum(s.numbers["steps"] for s in report.scenarios)

    json_path, xml_path = report.write(tmp_path / "out")
    data = json.loads(json_path.read_text())
    assert data["passed"] and [s["status"] for s in data["scenarios"]] == ["passed"] * len(FAST)
    suite = ET.parse(xml_path).getroot()
    assert (
        suite.get("tests") == str(len(FAST)) and suite.get("failures") == "0" and suite.get("errors") == "0"
    )
    assert [c.get("name") for c in suite.iter("testcase")] == FAST
    for name in FAST:
        assert name in table


def test_broken_parts_fail_the_run_and_the_report_names_them(bench: Bench, tmp_path: Path) -> None:
    """Two deliberately broken parts: a "non-finite" bundle that is fine (nothing to brake on or roll
    back) and the shield turned off under a policy that drives straight ahead (nothing stops it before the
    hazard); exit status 1."""
    b, out = bench.bundles, tmp_path / "out"
    sk = load_signing_key(b.workstation / "signing.key")
    ahead = make_test_bundle(tmp_path / "ahead", sk, 1, a_on_bias=(3.0, 0.0), a_off_bias=(3.0, 0.0), **GRAPH)
    args = [
        *("--bridge", bench.bridge, "--trainer", bench.trainer.endpoint, "--keys", str(b.keys)),
        *("--bundle", str(ahead), "--nonfinite-bundle", str(b.swap), "--out", str(out)),
        *("--scenarios", "[nonfinite_rollback, hazard, nominal]", "--settle-s", "0.5", "--fault-s", "1"),
        *("--recover-s", "1", "--wait-s", "2", "--edge.rollback.min-steps", "20", "--edge.spool-fsync", "false"),
        *("--edge.shield-enabled", "false"),
    ]  # fmt: skip
    # a bridge of its own: on the module's, an episode may end (and the robot be reset) inside the window
    with running(ServerConfig(bind=f"tcp://127.0.0.1:{free_tcp_port()}", faults=True)) as srv:
        args[1] = f"sim:{srv.endpoint}/robot0?timeout_s=0.1"
        res = subprocess.run(
            [sys.executable, "-m", "reachsafe", "hil", "run", *args],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert res.returncode == 1, res.stdout + res.stderr[-3000:]
    assert "[1/3] nonfinite_rollback: failed" in res.stdout and "[2/3] hazard: failed" in res.stdout
    assert "FAILED nonfinite_rollback: brakes on non-finite outputs: brakes none" in res.stdout
    assert "FAILED hazard: shield intervenes or the policy keeps clear: 0 interventions" in res.stdout
    assert "FAILED: 1 passed, 2 failed" in res.stdout
    data = json.loads((out / "report.json").read_text())
    assert not data["passed"]
    assert [(s["name"], s["status"]) for s in data["scenarios"]] == [
        ("nonfinite_rollback", "failed"), ("hazard", "failed"), ("nominal", "passed"),
    ]  # fmt: skip
    failed = {c["name"] for c in data["scenarios"][0]["checks"] if not c["passed"]}
    assert "brakes on non-finite outputs" in failed
    failures = {
        c.get("name"): f.get("message")
        for c in ET.parse(out / "junit.xml").getroot()
        for f in c.iter("failure")
    }
    assert "brakes on non-finite outputs" in failures["nonfinite_rollback"]
    assert "shield intervenes" in failures["hazard"]


def test_missing_parts_skip_and_a_bridge_without_faults_is_an_error_that_says_why(
    bench: Bench, tmp_path: Path
) -> None:
    cfg = config(bench, tmp_path / "a", ["bundle_swap", "tampered_bundle"], settle_s=0.5).replace(
        swap_bundle=None
    )
    report = run_suite(cfg, progress=lambda _: None)
    assert [s.status for s in report.scenarios] == ["skipped", "skipped"] and report.passed
    assert report.scenarios[0].message == "needs --swap-bundle"
    with pytest.raises(ConfigError, match="unknown scenario"):
        run_suite(cfg.replace(scenarios=["nominal", "meteor"]))
    with running(ServerConfig(bind=f"tcp://127.0.0.1:{free_tcp_port()}")) as plain:
        cfg = config(bench, tmp_path / "b", ["drive_timeout"], settle_s=0.2)
        report = run_suite(cfg.replace(bridge=f"sim:{plain.endpoint}/robot0"), progress=lambda _: None)
    (s,) = report.scenarios
    assert s.status == "error" and "faults_disabled" in s.message and "--faults" in s.message
    assert not report.passed and "ERROR drive_timeout" in format_table(report)


@pytest.mark.slow
def test_the_whole_suite_passes_on_loopback(bench: Bench, tmp_path: Path) -> None:
    stored_before = len(bench.trainer.steps_of())
    report = run_suite(config(bench, tmp_path / "out", []), progress=lambda _: None)
    assert report.passed, format_table(report)
    assert [s.name for s in report.scenarios] == list(SCENARIOS)
    assert all(s.status == "passed" for s in report.scenarios)
    # the outage and the partitions included: the trainer holds every step the robot recorded
    assert len(bench.trainer.steps_of()) - stored_before == sum(s.numbers["steps"] for s in report.scenarios)


def _ip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)


@contextmanager
def network_namespace() -> Iterator[tuple[str, str]]:
    """A network namespace joined to this one by a veth pair: (its name, its address). Skips the test,
    with the reason, where namespaces cannot be made (no root, no `ip`, a sandbox)."""
    if shutil.which("ip") is None:
        pytest.skip("no `ip` command (iproute2) to make a network namespace")
    if os.geteuid() != 0:
        pytest.skip("making a network namespace (ip netns add) needs root")
    tag = os.getpid() % 100_000
    ns, host_if, ns_if = f"rshil{tag}", f"rsh{tag}", f"rsn{tag}"
    host_ip, ns_ip = f"10.213.{tag % 250}.1", f"10.213.{tag % 250}.2"
    steps = [
        ("netns", "add", ns),
        ("link", "add", host_if, "type", "veth", "peer", "name", ns_if, "netns", ns),
        ("addr", "add", f"{host_ip}/24", "dev", host_if),
        ("link", "set", host_if, "up"),
        ("-n", ns, "addr", "add", f"{ns_ip}/24", "dev", ns_if),
        ("-n", ns, "link", "set", ns_if, "up"),
        ("-n", ns, "link", "set", "lo", "up"),
    ]
    try:
        for step in steps:
            res = _ip(*step)
            if res.returncode != 0:
                pytest.skip(
                    f"cannot make a network namespace here (ip {' '.join(step)}: {res.stderr.strip()})"
                )
        yield ns, ns_ip
    finally:
        _ip("link", "del", host_if)  # and its peer
        _ip("netns", "del", ns)


@contextmanager
def workstation(processes: Processes, b: Bundles, ns: str | None, host: str) -> Iterator[tuple[str, str]]:
    """`sim serve --faults --keys` and a CURVE trainer as processes (inside ``ns`` when given) on
    ``host``: (the robot's bridge URI, the trainer address)."""
    prefix = ("ip", "netns", "exec", ns) if ns else ()
    sim_port, trainer_port = free_tcp_port(), free_tcp_port()
    keys = str(b.workstation)
    processes.start(*prefix, sys.executable, "-m", "reachsafe", "sim", "serve", "--faults",
                    "--bind", f"tcp://{host}:{sim_port}", "--keys", keys, name="bridge")  # fmt: skip
    processes.start(*prefix, sys.executable, "-m", "tests.fixtures.edge_support",
                    "--bind", f"tcp://{host}:{trainer_port}", "--keys", keys, name="trainer")  # fmt: skip
    for port in (sim_port, trainer_port):

        def up(port: int = port) -> bool:
            with socket.socket() as s:
                s.settimeout(0.5)
                return s.connect_ex((host, port)) == 0

        poll_until(up, 60.0, 0.1, f"a server on {host}:{port}")
    yield f"sim:tcp://{host}:{sim_port}/robot0?keys={b.keys}&timeout_s=0.1", f"tcp://{host}:{trainer_port}"


def run_hil(reachsafe: list[str], bridge: str, trainer: str, b: Bundles, out: Path, *extra: str) -> dict:
    """`reachsafe hil run` of the whole suite with short phases; the report (asserted written)."""
    args = [
        *("hil", "run", "--bridge", bridge, "--trainer", trainer, "--keys", str(b.keys), "--out", str(out)),
        *("--swap-bundle", str(b.swap), "--nonfinite-bundle", str(b.nonfinite)),
        *("--settle-s", "1", "--fault-s", "1.5", "--recover-s", "1.5", "--wait-s", "10"),
        *("--edge.rollback.min-steps", "20", "--edge.spool-fsync", "false", "--edge.drain-timeout", "5"),
        *extra,
    ]  # fmt: skip
    res = subprocess.run([*reachsafe, *args], cwd=out.parent, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr[-4000:]
    assert "PASSED: 10 passed" in res.stdout
    report = json.loads((out / "report.json").read_text())
    assert report["passed"] and [s["name"] for s in report["scenarios"]] == list(SCENARIOS)
    return report


@pytest.mark.slow
def test_the_whole_suite_passes_over_curve_across_a_network_namespace(
    tmp_path: Path, processes: Processes
) -> None:
    """The bridge and the trainer on another address (a namespace behind a veth pair): both links on
    CURVE with the robot's keys."""
    b = make_bundles(tmp_path, curve=True)
    with network_namespace() as (ns, address), workstation(processes, b, ns, address) as (bridge, trainer):
        run_hil(
            [sys.executable, "-m", "reachsafe"],
            bridge,
            trainer,
            b,
            tmp_path / "out",
            "--bundle",
            str(b.start),
        )
        bridge_log = processes.log(processes.procs[0][0])
    assert "CURVE" in bridge_log and "PLAIN" not in bridge_log


@pytest.mark.slow
def test_the_whole_suite_passes_from_a_flashed_package_without_torch(
    tmp_path: Path, processes: Processes
) -> None:
    """flash --dir, install.sh into a fresh venv (the robot extra only), then that venv's `reachsafe
    hil run` with the bundle it installed, against a bridge and a trainer on another address where a
    namespace can be made (else on loopback); the swap and non-finite bundles from scripts/hil_bundles.py."""
    b = make_bundles(tmp_path / "b", curve=True)
    shutil.rmtree(b.swap.parent / "v2")
    shutil.rmtree(b.nonfinite.parent / "v3")
    b.swap, b.nonfinite = make_hil_bundles(b.start, b.workstation, tmp_path / "b" / "hil")
    deploy, prefix = tmp_path / "deploy", tmp_path / "opt"
    assert flash_dir(deploy, robot_yaml(tmp_path), b.start, b.workstation) == 0
    venv = install_flashed(deploy, prefix)
    installed = {
        p["name"].lower()
        for p in json.loads(subprocess.check_output([venv / "python", "-m", "pip", "list", "--format=json"]))
    }
    assert "reachsafe" in installed and not {"torch", "pybullet", "gymnasium", "onnx"} & installed
    b.keys = prefix / "keys"  # what was flashed: signing.pub, the robot's pair, trainer.key
    state = ("--edge.state-dir", str(prefix / "state"))  # the installed bundle: no --bundle
    try:
        namespace = network_namespace()
        ns, address = namespace.__enter__()
    except pytest.skip.Exception:
        namespace, ns, address = None, None, "127.0.0.1"
    try:
        with workstation(processes, b, ns, address) as (bridge, trainer):
            report = run_hil([str(venv / "reachsafe")], bridge, trainer, b, tmp_path / "out", *state)
    finally:
        if namespace is not None:
            namespace.__exit__(None, None, None)
    assert report["scenarios"][0]["numbers"]["bundle_versions_seen"] == [1]
