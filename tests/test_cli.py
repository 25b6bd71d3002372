"""The ``reachsafe`` dispatcher: every part loads, every verb has help, and the README lists them."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from conftest import REPO
from edge_runtime.cli import PARTS, build_parser


def _verbs(part: str) -> list[str]:
    parser = build_parser([part])
    sub = parser._subparsers._group_actions[0].choices[part]
    actions = [a for a in sub._actions if isinstance(a, argparse._SubParsersAction)]
    return sorted(actions[0].choices) if actions else []


@pytest.mark.parametrize("part", sorted(PARTS))
def test_every_part_and_verb_is_in_the_readme(part: str) -> None:
    readme = (REPO / "README.md").read_text()
    verbs = _verbs(part)
    commands = [f"reachsafe {part} {verb}" for verb in verbs] or [f"reachsafe {part}"]
    missing = [c for c in commands if c not in readme]
    assert not missing, f"README.md's CLI reference lacks {missing}"


def test_help_is_instant_and_loads_no_part() -> None:
    code = "import sys; from edge_runtime.cli import build_parser; build_parser([]); print(sorted(m for m in sys.modules if m.split('.')[0] in {'torch','trainer','sim_bridge','pybullet'}))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_unknown_part_is_a_usage_error() -> None:
    out = subprocess.run([sys.executable, "-m", "edge_runtime.cli", "warp"], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 2 and "invalid choice" in out.stderr
