"""``sim view``: an animation with the camera beside a top-down view, path and cost marks drawn."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from reachsafe.sim_bridge.view import PANEL, ViewConfig, view


def test_view_writes_a_gif_with_camera_topdown_and_cost_marks(tmp_path: Path) -> None:
    out = tmp_path / "ep.gif"
    cfg = ViewConfig(
        task="reachsafe/SafeGoal2-v0", out=out, split="unseen", seed=0, steps=60, policy="reckless", every=3
    )
    summary = view(cfg)
    assert summary["steps"] == 60
    im = Image.open(out)
    assert im.n_frames == 21  # every 3rd step, plus the last
    im.seek(im.n_frames - 1)
    frame = np.asarray(im.convert("RGB"))
    assert frame.shape == (PANEL + 22, 2 * PANEL, 3)
    top = frame[:PANEL, PANEL:]
    path_px = ((top[..., 0] > 200) & (np.abs(top[..., 1].astype(int) - 120) < 30) & (top[..., 2] < 60)).sum()
    assert path_px > 20  # the orange path is drawn
    assert summary["cost"] > 0  # this seed's reckless run crosses hazards: red rings mark it
    assert ((top[..., 0] > 190) & (top[..., 1] < 40) & (top[..., 2] < 40)).sum() > 10


def test_view_refuses_an_unverified_bundle(tmp_path: Path) -> None:
    cfg = ViewConfig(task="reachsafe/SafeGoal1-v0", out=tmp_path / "x.gif", bundle=tmp_path)
    with pytest.raises(ValueError, match="--keys"):
        view(cfg)
