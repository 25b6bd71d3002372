"""The robot side never loads torch, the trainer or the simulator (docs/architecture.md, "Boundaries")."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import REPO

ROBOT_PACKAGES = ["reachsafe", "reachsafe.protocol", "reachsafe.hardware", "reachsafe.edge_runtime"]
FORBIDDEN = ["torch", "reachsafe.trainer", "reachsafe.sim_bridge", "pybullet", "gymnasium", "h5py", "onnx"]

PROBE = """
import importlib, json, pkgutil, sys
pkg = importlib.import_module(sys.argv[1])
names = [pkg.__name__] + [m.name for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + ".")
         if not m.name.endswith("__main__")]
for name in names:
    importlib.import_module(name)
print(json.dumps({"modules": names, "loaded": sorted(sys.modules)}))
"""


@pytest.mark.parametrize("package", ROBOT_PACKAGES)
def test_robot_package_never_imports_heavy_or_workstation_code(package: str) -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, package], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    leaked = sorted({f for f in FORBIDDEN for m in report["loaded"] if m == f or m.startswith(f + ".")})
    assert not leaked, f"importing {package} (modules {report['modules']}) loaded {leaked}"


def test_protocol_knows_nothing_of_the_other_parts() -> None:
    for path in (REPO / "protocol").rglob("*.py"):
        text = path.read_text()
        for other in ("edge_runtime", "hardware", "sim_bridge", "trainer"):
            imports = [line for line in text.splitlines() if line.lstrip().startswith(("import ", "from "))]
            assert not any(other in line.split()[1] for line in imports), f"{path} imports {other}"
