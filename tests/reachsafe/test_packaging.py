"""One import namespace: every part installs as reachsafe.<part>, and no code imports the bare names."""

from __future__ import annotations

import re

import pytest
from conftest import REPO

tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")

PARTS = ("protocol", "hardware", "edge_runtime", "sim_bridge", "trainer")
BARE = re.compile(r"^\s*(?:from|import)\s+(?:" + "|".join(PARTS) + r")\b", re.M)


def test_every_package_folder_is_installed_under_reachsafe() -> None:
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(setuptools["packages"])
    folders = {"reachsafe"} | {
        "reachsafe." + ".".join(d.relative_to(REPO).parts)
        for part in PARTS
        for d in [REPO / part, *(REPO / part).rglob("*")]
        if d.is_dir() and d.name != "__pycache__" and any(d.glob("*.py")) or d.name == "examples"
    }
    assert folders == listed, (
        f"pyproject.toml lists {sorted(listed - folders)} but not {sorted(folders - listed)}"
    )
    assert all(setuptools["package-dir"][f"reachsafe.{p}"] == p for p in PARTS)


def test_no_code_imports_a_part_by_its_bare_name() -> None:
    offenders = [
        str(path.relative_to(REPO))
        for folder in (*PARTS, "reachsafe", "tests", "bench", "scripts")
        for path in (REPO / folder).rglob("*.py")
        if BARE.search(path.read_text())
    ]
    assert not offenders, f"import reachsafe.<part>, not the bare folder name: {offenders}"
