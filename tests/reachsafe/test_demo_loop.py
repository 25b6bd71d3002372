"""The walking skeleton end to end: sim robot, trainer daemon and edge runtime as three real
processes on free loopback ports; steps flow, ACKs come back, a bundle fine-tuned online goes live
on the robot, and everything exits cleanly."""

from __future__ import annotations

from pathlib import Path

from reachsafe.demo import DemoSettings, print_summary, run_demo


def test_whole_loop_closes_on_localhost(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    settings = DemoSettings(
        dataset_episodes=6,
        offline_steps=60,
        episodes=2,
        vpa_steps=10,
        warmup_steps=64,
        ship_every_updates=5,
        timeout_s=240.0,
    )
    result = run_demo(tmp_path, settings)

    assert result.exit_codes == {"edge": 0, "trainer": 0, "sim": 0}, result.exit_codes
    edge = result.edge
    assert edge["episodes"] >= 2 and edge["shutdown_warnings"] == []
    assert edge["steps_sent"] > 0
    # every step the robot recorded was acknowledged, i.e. durably stored by the trainer
    assert edge["steps_acked"] == edge["steps_sent"]
    assert result.trainer["steps_stored"] == edge["steps_acked"]
    # the robot started on the offline bundle and a bundle fine-tuned online went live on it (the runtime may
    # also roll back to an earlier one when its cost monitor fires, so the list need not be sorted)
    first, *later = result.bundles
    assert (first.version, first.parent, first.online_updates) == (1, None, 0)
    assert later and all(b.parent is not None and b.online_updates > 0 for b in later), result.bundles
    assert print_summary(result)
    assert "fine-tuned by" in capsys.readouterr().out
