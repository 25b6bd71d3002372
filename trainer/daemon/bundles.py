"""RUN/bundles/: the daemon's signed bundles, monotonic versions with their parents, last K kept.

The offline run's RUN/bundle/ is the root of the chain; every shipped bundle gets version
``latest + 1`` and ``parent = latest``, where latest is the highest version on disk (so versions
stay monotonic across daemon restarts with or without ``--resume``).
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from reachsafe.protocol.bundle import MANIFEST_FILE, load_bundle
from reachsafe.protocol.messages import BundleMessage
from reachsafe.trainer.export.onnx import build_bundle
from reachsafe.trainer.models.networks import Agent

logger = logging.getLogger(__name__)


def _version_of(bundle_dir: Path) -> int | None:
    try:
        return int(json.loads((bundle_dir / MANIFEST_FILE).read_text())["version"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


class BundleShelf:
    """Builds, signs, stores and prunes bundles; thread-compatible (used by the learner thread)."""

    def __init__(
        self,
        run_root: Path,
        signing_key: Ed25519PrivateKey,
        shield: Callable[[Agent], dict[str, Any]],
        keep: int,
        selection: Callable[[], dict[str, float]] | None = None,
    ) -> None:
        """``shield``: called at each ship with the agent for the bundle's shield section (recalibrated on
        its current Q_h, see :func:`reachsafe.trainer.runs.start.shield_for_ship`); ``selection``: called at each
        ship for the bundle's ``{kappa_t, kappa_c}``."""
        self.root = run_root / "bundles"
        self.root.mkdir(parents=True, exist_ok=True)
        self.offline_bundle = run_root / "bundle"
        self.key = signing_key
        self.trusted = [signing_key.public_key()]
        self.shield = shield
        self.selection = selection
        self.keep = keep

    def _versions(self) -> dict[int, Path]:
        found: dict[int, Path] = {}
        for d in [self.offline_bundle, *sorted(self.root.glob("v*"))]:
            v = _version_of(d)
            if v is not None:
                found[v] = d
        return found

    @property
    def latest_version(self) -> int | None:
        versions = self._versions()
        return max(versions) if versions else None

    def latest_message(self) -> BundleMessage | None:
        """The newest bundle on disk as a message (for robots that connect with an older one)."""
        versions = self._versions()
        if not versions:
            return None
        return load_bundle(versions[max(versions)], self.trusted).to_message()

    def ship(self, agent: Agent, step: int, metrics: dict[str, float]) -> BundleMessage:
        """Export ``agent`` as the next version, sign it, keep the last K, return its message."""
        parent = self.latest_version
        version = (parent or 0) + 1
        out = self.root / f"v{version:06d}"
        agent.eval()
        try:
            build_bundle(
                agent,
                out,
                version=version,
                parent=parent,
                signing_key=self.key,
                shield=self.shield(agent),
                selection=None if self.selection is None else self.selection(),
                training_step=step,
                metrics=metrics,
            )
        finally:
            agent.train()
        self._prune()
        logger.info("bundle v%d (parent %s) at update %d in %s", version, parent, step, out)
        return load_bundle(out, self.trusted).to_message()

    def _prune(self) -> None:
        dirs = sorted(self.root.glob("v*"))
        for old in dirs[: max(0, len(dirs) - self.keep)]:
            shutil.rmtree(old, ignore_errors=True)
