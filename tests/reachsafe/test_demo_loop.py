"""The walking skeleton end to end: sim robot, trainer daemon and edge runtime as three real
processes on free loopback ports; steps flow, ACKs come back, a new bundle goes live on the robot,
and everything exits cleanly."""

from __future__ import annotations

from pathlib import Path

from reachsafe.demo import DemoSettings, run_demo


def test_whole_loop_closes_on_localhost(tmp_path: Path) -> None:
    settings = DemoSettings(
        dataset_episodes=6, offline_steps=60, episodes=2, ship_every_s=4.0, timeout_s=240.0
    )
    result = run_demo(tmp_path, settings)

    assert result.exit_codes == {"edge": 0, "trainer": 0, "sim": 0}, result.exit_codes
    edge = result.edge
    assert edge["episodes"] >= 2
    assert edge["steps_sent"] > 0
    # every step the robot recorded was acknowledged, i.e. durably stored by the trainer
    assert edge["steps_acked"] == edge["steps_sent"]
    assert result.trainer["steps_stored"] == edge["steps_acked"]
    # the robot started on the offline bundle and swapped in at least one newer version (the runtime may
    # also roll back to an earlier one when its cost monitor fires, so the list need not be sorted)
    versions = edge["bundle_versions_seen"]
    assert versions[0] == 1 and max(versions) > 1, versions
    assert (tmp_path / "run" / "bundles").is_dir()
