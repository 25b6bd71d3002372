"""The two extra bundles `reachsafe hil run` pushes (docs/hil.md), made on the workstation from a run's bundle.

    python -m scripts.hil_bundles --bundle runs/goal1/bundle --keys keys --out hil_bundles   # in the checkout

writes OUT/swap (the bundle's files signed again as version N+1, parent N: the bundle swap and the
tampered-bundle scenarios) and OUT/nonfinite (version N+2: a graph of the bundle's spec, built with
`tests/fixtures/edge_support.make_agent_onnx`, whose online action is NaN on any frame that is not
black, so its warm-up passes and it fails on the robot: the rollback scenario). Needs `onnx` (the
workstation's extra) and keys/signing.key.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from reachsafe.protocol.bundle import load_bundle, write_bundle
from reachsafe.protocol.keys import load_signing_key, load_trusted_keys
from tests.fixtures.edge_support import make_agent_onnx

#: The manifest keys write_bundle fills in itself.
_FILLED = ("format", "protocol_version", "created", "files", "signer")


def make_hil_bundles(bundle_dir: Path, keys: Path, out: Path) -> tuple[Path, Path]:
    signing = load_signing_key(keys / "signing.key")
    bundle = load_bundle(bundle_dir, load_trusted_keys(keys / "signing.pub"))
    base = {k: v for k, v in bundle.manifest.items() if k not in _FILLED}
    v = bundle.version
    swap = write_bundle(out / "swap", base | {"version": v + 1, "parent": v}, bundle.files, signing)
    graph = base["graph"]
    n_primitives = len(graph["candidates"]) - 3  # [a_on, a_off, brake, primitives...]
    onnx = make_agent_onnx(
        bundle.obs_shape,
        bundle.action_dim,
        primitives=[[0.0] * bundle.action_dim] * n_primitives,
        nan_above=0.0,
    )
    nonfinite = write_bundle(
        out / "nonfinite",
        base | {"version": v + 2, "parent": v, "graph": graph | {"file": "agent.onnx"}},
        {"agent.onnx": onnx},
        signing,
    )
    return swap, nonfinite


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, required=True, help="the run's bundle (the robot runs it)")
    parser.add_argument(
        "--keys", type=Path, required=True, help="key folder with signing.key and signing.pub"
    )
    parser.add_argument(
        "--out", type=Path, required=True, help="folder for swap/ and nonfinite/ (must not exist)"
    )
    args = parser.parse_args()
    for path in make_hil_bundles(args.bundle, args.keys, args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
