"""The offline CLI end to end: train → export (int8 gate) → eval through the edge runtime on SafeGoal1."""

import json
import subprocess
import sys

import h5py
from conftest import REPO

from reachsafe.protocol.bundle import load_bundle
from reachsafe.protocol.keys import load_trusted_keys
from reachsafe.trainer.runs.evaluate import EpisodeResult, EvalSummary
from tests.fixtures.point_dataset import make_point_dataset, write_hdf5


def reachsafe(*args, timeout=240):
    proc = subprocess.run(
        [sys.executable, "-m", "reachsafe.cli", *map(str, args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_train_export_eval_cli(tmp_path):
    data = tmp_path / "img.h5"
    write_hdf5(make_point_dataset(episodes=6, length=12, image_size=64), data)
    run = tmp_path / "run"
    out = reachsafe(
        "train", "offline", "--dataset", data, "--out", run, "--steps", 3, "--batch-size", 4, "--world-model.horizon", 2,
        "--seed", 1, "--no-progress", "--torch-threads", 1,
    )  # fmt: skip
    assert "bundle:" in out and (run / "keys" / "signing.pub").is_file()
    keys = load_trusted_keys(run / "keys")
    assert load_bundle(run / "bundle", keys).manifest["training_step"] == 3
    assert "kind: offline" in (run / "config.yaml").read_text()

    out = reachsafe("export", "--run", run, "--out", tmp_path / "b2", "--int8", "--version", 2, "--parent", 1)
    manifest = load_bundle(tmp_path / "b2", keys).manifest
    assert manifest["quantization"]["shipped"] in out and "shield_agreement" in out
    assert manifest["parent"] == 1 and "int8_p50_ms" in manifest["quantization"]["report"]

    summary = tmp_path / "eval.json"
    out = reachsafe(
        "eval", "--bundle", run / "bundle", "--task", "reachsafe/SafeGoal1-v0", "--split", "unseen",
        "--seeds", 3, 4, "--episode-steps", 15, "--dataset", data, "--json", summary,
    )  # fmt: skip
    assert "return" in out and "normalised return" in out and "touching a solid object" in out
    result = json.loads(summary.read_text())
    assert result["episodes"] == 2 and 0.0 <= result["success_rate"] <= 1.0 and result["cost_mean"] >= 0
    assert 0 <= result["collision_cost_mean"] <= result["cost_mean"]
    assert 0.0 <= result["wall_share"] <= 1.0 and "at the wall" in out

    # the threshold override: above every Q_h the shield never acts, below every Q_h it acts wherever
    # the policy's candidate is not already the safest one
    rates = {}
    for threshold in (1e9, -1e9):
        reachsafe(
            "eval", "--bundle", run / "bundle", "--task", "reachsafe/SafeGoal1-v0", "--seeds", 3,
            "--episode-steps", 15, "--shield-threshold", threshold, "--json", summary,
        )  # fmt: skip
        rates[threshold] = json.loads(summary.read_text())["shield_rate"]
    assert rates[1e9] == 0.0 and rates[-1e9] > 0.0


def test_summary_reports_the_collision_part_of_the_cost():
    summary = EvalSummary("reachsafe/SafeGoal1-v0", "unseen", cost_limit=10.0)
    summary.episodes += [
        EpisodeResult(0, ret=3.0, cost=12.0, length=300, goals=1, shielded=0, collision_cost=5.0),
        EpisodeResult(1, ret=1.0, cost=2.0, length=300, goals=0, shielded=4, wall_steps=150),
    ]
    d = summary.to_dict()
    assert d["cost_mean"] == 7.0 and d["collision_cost_mean"] == 2.5 and d["success_rate"] == 0.0
    assert "touching a solid object: 2.500" in summary.format()
    assert d["wall_share"] == 0.25 and "at the wall   25.00% of steps" in summary.format()


def test_bad_dataset_is_a_one_line_error(tmp_path):
    data = tmp_path / "bad.h5"
    write_hdf5(make_point_dataset(episodes=2, length=5), data)
    with h5py.File(data, "a") as f:
        del f["costs"]
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "reachsafe.cli",
            "train",
            "offline",
            "--dataset",
            str(data),
            "--out",
            str(tmp_path / "r"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "missing required key(s) ['costs']" in proc.stderr and "Traceback" not in proc.stderr
