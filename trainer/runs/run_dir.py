"""Layout of a training run directory and its signing keys.

RUN/config.yaml        the resolved config (kind: offline)
RUN/checkpoints/       step_XXXXXXXX.pt and latest.pt (agent + learner + optimiser state)
RUN/bundle/            the signed bundle of the latest export
RUN/keys/              a locally generated key pair when no --keys directory was given
RUN/tb/                TensorBoard event files
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

SIGNING_KEY_FILE = "signing.key"


class RunDirError(Exception):
    """The run directory is missing something or would be overwritten."""


@dataclass(frozen=True)
class RunDir:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def latest(self) -> Path:
        return self.checkpoints / "latest.pt"

    @property
    def bundle(self) -> Path:
        return self.root / "bundle"

    @property
    def keys(self) -> Path:
        return self.root / "keys"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tb"

    def checkpoint_for(self, step: int) -> Path:
        return self.checkpoints / f"step_{step:08d}.pt"

    def require_checkpoint(self) -> Path:
        if not self.latest.is_file():
            raise RunDirError(
                f"{self.root} has no checkpoint ({self.latest}); train first with `reachsafe train offline --out {self.root}`"
            )
        return self.latest


def resolve_signing_key(keys_dir: Path | None, run: RunDir) -> Path:
    """Path of the Ed25519 signing key: from ``keys_dir``, else RUN/keys (generated there if absent)."""
    if keys_dir is not None:
        path = Path(keys_dir) / SIGNING_KEY_FILE
        if not path.is_file():
            raise RunDirError(
                f"no signing key at {path}; create one with `reachsafe keys generate --out {keys_dir}`"
            )
        return path
    path = run.keys / SIGNING_KEY_FILE
    if not path.is_file():
        from reachsafe.protocol.keys import generate_keys

        generate_keys(run.keys)
        logger.warning(
            "no --keys given: generated a local key pair in %s for this run; robots must trust %s",
            run.keys,
            run.keys / "signing.pub",
        )
    return path
