"""Signed policy bundles (format "reachsafe-bundle/1"; docs/protocol.md, "Bundles").

A bundle is a directory holding `manifest.json`, `manifest.sig` (raw 64-byte Ed25519 signature
over the exact bytes of manifest.json) and the files the manifest lists with their sha256.

- `write_bundle(dir, manifest, files, signing_key) -> Path` (trainer): fills `format`,
  `protocol_version`, `created`, `files` and `signer`, signs, writes atomically.
- `load_bundle(dir, trusted_keys, expected_obs_shape=None, expected_action_dim=None) -> Bundle`
  and `Bundle.from_message(msg, trusted_keys, ...)` (robot) verify, in this order: the manifest
  parses and is well formed (`ManifestError`) -> the signature is valid under a trusted key
  (`SignatureError`) -> every listed file is present with its sha256 (`HashMismatchError`;
  unlisted files are never read or used) -> the obs/action spec matches (`SpecMismatchError`).
- `Bundle.files` holds the verified bytes: build inference sessions from them, never by
  re-reading the directory (which could have changed since verification).
- `Bundle.to_message()` / `Bundle.write_to(dir)` ship / store a verified bundle unchanged.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from reachsafe.protocol.constants import PROTOCOL_VERSION
from reachsafe.protocol.errors import (
    BundleError,
    HashMismatchError,
    ManifestError,
    SignatureError,
    SpecMismatchError,
)
from reachsafe.protocol.files import fsync_dir
from reachsafe.protocol.keys import fingerprint
from reachsafe.protocol.messages import BundleMessage

__all__ = [
    "BUNDLE_FORMAT",
    "Bundle",
    "BundleError",
    "HashMismatchError",
    "ManifestError",
    "SignatureError",
    "SpecMismatchError",
    "load_bundle",
    "validate_manifest",
    "write_bundle",
]

log = logging.getLogger(__name__)

BUNDLE_FORMAT = "reachsafe-bundle/1"
MANIFEST_FILE = "manifest.json"
SIGNATURE_FILE = "manifest.sig"
#: κ_T and κ_c of the policy-expansion score for a manifest without `selection` (older trainers);
#: also the trainer's defaults for the values it writes there.
DEFAULT_KAPPA_T = 5.0
DEFAULT_KAPPA_C = 0.1
#: Fixed candidate actions (forward, turn) the shield may fall back to, after a_on, a_off and brake.
DEFAULT_PRIMITIVES = ((0.5, 0.0), (-0.5, 0.0), (0.0, 1.0), (0.0, -1.0))
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Bundle:
    """A verified bundle: the parsed manifest, its exact bytes, the signature and the file bytes."""

    manifest: dict[str, Any]
    manifest_bytes: bytes
    signature: bytes
    files: dict[str, bytes]
    path: Path | None = None

    @property
    def version(self) -> int:
        return self.manifest["version"]

    @property
    def parent(self) -> int | None:
        return self.manifest["parent"]

    @property
    def obs_shape(self) -> tuple[int, ...]:
        return tuple(self.manifest["obs"]["shape"])

    @property
    def action_dim(self) -> int:
        return self.manifest["action"]["dim"]

    def to_message(self) -> BundleMessage:
        return BundleMessage(
            version=self.version,
            parent=self.parent,
            manifest=self.manifest_bytes,
            signature=self.signature,
            files=dict(self.files),
        )

    @classmethod
    def from_message(
        cls,
        msg: BundleMessage,
        trusted_keys: Iterable[Ed25519PublicKey],
        expected_obs_shape: Sequence[int] | None = None,
        expected_action_dim: int | None = None,
    ) -> Bundle:
        """Verify a received bundle message (same checks and order as load_bundle)."""
        bundle = _verify(
            msg.manifest, msg.signature, msg.files.get, set(msg.files), trusted_keys,
            expected_obs_shape, expected_action_dim, where="bundle message",
        )  # fmt: skip
        if (msg.version, msg.parent) != (bundle.version, bundle.parent):
            raise ManifestError(
                f"bundle message says version {msg.version} parent {msg.parent} but its signed manifest "
                f"says version {bundle.version} parent {bundle.parent}; the sender is broken, reject it"
            )
        return bundle

    def write_to(self, directory: str | os.PathLike) -> Path:
        """Store this bundle unchanged (same manifest bytes and signature) atomically at `directory`."""
        contents = {MANIFEST_FILE: self.manifest_bytes, SIGNATURE_FILE: self.signature, **self.files}
        return _write_dir_atomically(Path(directory), contents)


def write_bundle(
    directory: str | os.PathLike,
    manifest: Mapping[str, Any],
    files: Mapping[str, bytes],
    signing_key: Ed25519PrivateKey,
) -> Path:
    """Sign and write a new bundle directory (must not exist yet); return its path.

    `manifest` carries version, parent, obs, action, graph, quantization, shield, training_step,
    metrics and optionally selection; format, protocol_version, created, files (sha256) and
    signer are filled here.
    """
    full = dict(manifest)
    full.update(
        format=BUNDLE_FORMAT,
        protocol_version=PROTOCOL_VERSION,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
        files={name: hashlib.sha256(data).hexdigest() for name, data in files.items()},
        signer=fingerprint(signing_key),
    )
    validate_manifest(full)
    try:
        manifest_bytes = json.dumps(full, indent=2, sort_keys=True, allow_nan=False).encode() + b"\n"
    except (TypeError, ValueError) as exc:
        raise ManifestError(
            f"manifest is not JSON-serialisable ({exc}); use plain numbers/strings, no NaN"
        ) from exc
    bundle = Bundle(full, manifest_bytes, signing_key.sign(manifest_bytes), dict(files))
    path = bundle.write_to(directory)
    log.info("wrote bundle v%s to %s (signer %s)", full["version"], path, full["signer"])
    return path


def load_bundle(
    directory: str | os.PathLike,
    trusted_keys: Iterable[Ed25519PublicKey],
    expected_obs_shape: Sequence[int] | None = None,
    expected_action_dim: int | None = None,
) -> Bundle:
    """Verify and load a bundle directory (also one copied by hand)."""
    root = Path(directory)
    try:
        manifest_bytes = (root / MANIFEST_FILE).read_bytes()
    except OSError as exc:
        raise ManifestError(
            f"{root} has no readable {MANIFEST_FILE} ({exc}); is it a bundle directory?"
        ) from exc
    try:
        signature = (root / SIGNATURE_FILE).read_bytes()
    except OSError as exc:
        raise SignatureError(
            f"{root} has no readable {SIGNATURE_FILE} ({exc}); unsigned bundles are never loaded"
        ) from exc

    def read(name: str) -> bytes | None:
        try:
            return (root / name).read_bytes()
        except OSError:
            return None

    present = {p.name for p in root.iterdir()} - {MANIFEST_FILE, SIGNATURE_FILE}
    bundle = _verify(
        manifest_bytes,
        signature,
        read,
        present,
        trusted_keys,
        expected_obs_shape,
        expected_action_dim,
        where=str(root),
    )
    return Bundle(bundle.manifest, manifest_bytes, signature, bundle.files, root)


def _verify(
    manifest_bytes: bytes,
    signature: bytes,
    read: Callable[[str], bytes | None],
    present: set[str],
    trusted_keys: Iterable[Ed25519PublicKey],
    expected_obs_shape: Sequence[int] | None,
    expected_action_dim: int | None,
    where: str,
) -> Bundle:
    try:
        manifest = json.loads(manifest_bytes)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(
            f"{where}: {MANIFEST_FILE} is not valid JSON ({exc}); the bundle is corrupt"
        ) from exc
    validate_manifest(manifest, where)

    keys = list(trusted_keys)
    if not keys:
        raise SignatureError(
            f"{where}: no trusted keys configured; copy the trainer's signing.pub to the robot"
        )
    if not any(_signed_by(key, signature, manifest_bytes) for key in keys):
        raise SignatureError(
            f"{where}: signature does not verify under any of {len(keys)} trusted key(s) "
            f"{[fingerprint(k) for k in keys]} (manifest claims signer {manifest['signer']}); "
            "the bundle was tampered with or signed by an untrusted key: do not load it"
        )

    files: dict[str, bytes] = {}
    for name, digest in manifest["files"].items():
        data = read(name)
        if data is None:
            raise HashMismatchError(f"{where}: listed file {name!r} is missing; copy the complete bundle")
        actual = hashlib.sha256(data).hexdigest()
        if actual != digest:
            raise HashMismatchError(
                f"{where}: {name!r} has sha256 {actual[:16]}..., manifest says {digest[:16]}...; "
                "the file is corrupt or tampered with: do not load it"
            )
        files[name] = data
    unlisted = sorted(present - set(files))
    if unlisted:
        log.warning("%s: ignoring files not listed in the manifest: %s", where, unlisted)

    obs_shape = tuple(manifest["obs"]["shape"])
    if expected_obs_shape is not None and obs_shape != tuple(expected_obs_shape):
        raise SpecMismatchError(
            f"{where}: bundle expects observations {obs_shape}, this robot produces {tuple(expected_obs_shape)}; "
            "train for this robot's camera resolution"
        )
    action_dim = manifest["action"]["dim"]
    if expected_action_dim is not None and action_dim != expected_action_dim:
        raise SpecMismatchError(
            f"{where}: bundle outputs {action_dim}-D actions, this robot's drive takes {expected_action_dim}-D"
        )
    return Bundle(manifest, manifest_bytes, signature, files)


def _signed_by(key: Ed25519PublicKey, signature: bytes, data: bytes) -> bool:
    try:
        key.verify(signature, data)
    except InvalidSignature:
        return False
    return True


def validate_manifest(m: Any, where: str = "manifest") -> None:
    """Raise ManifestError unless `m` has every field of a reachsafe-bundle/1 manifest, well typed."""

    def need(ok: bool, what: str) -> None:
        if not ok:
            raise ManifestError(f"{where}: {what}; the trainer that wrote it is broken or too new")

    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    def is_num(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    def is_strs(v: Any) -> bool:
        return isinstance(v, list) and all(isinstance(s, str) for s in v)

    need(isinstance(m, dict), "manifest is not a JSON object")
    need(m.get("format") == BUNDLE_FORMAT, f"format is {m.get('format')!r}, expected {BUNDLE_FORMAT!r}")
    need(
        m.get("protocol_version") == PROTOCOL_VERSION,
        f"protocol_version is {m.get('protocol_version')!r}, this runtime speaks {PROTOCOL_VERSION}",
    )
    need(is_int(m.get("version")) and m["version"] >= 1, "version must be an int >= 1")
    need(
        "parent" in m and (m["parent"] is None or (is_int(m["parent"]) and m["parent"] >= 1)),
        "parent must be null or an int >= 1",
    )
    need(isinstance(m.get("created"), str), "created must be an ISO-8601 string")
    need(isinstance(m.get("signer"), str), "signer must be a key fingerprint string")
    files = m.get("files")
    need(isinstance(files, dict) and len(files) > 0, "files must be a non-empty object name -> sha256")
    for name, digest in files.items():
        need(
            bool(_SAFE_NAME.match(name)) and name not in (MANIFEST_FILE, SIGNATURE_FILE),
            f"file name {name!r} is not a plain file name",
        )
        need(
            isinstance(digest, str) and bool(_SHA256.match(digest)),
            f"sha256 of {name!r} is not 64 lowercase hex digits",
        )
    obs = m.get("obs")
    need(
        isinstance(obs, dict)
        and isinstance(obs.get("shape"), list)
        and len(obs["shape"]) == 3
        and all(is_int(d) and d >= 1 for d in obs["shape"])
        and obs.get("dtype") == "uint8",
        "obs must be {shape: [H, W, C] positive ints, dtype: 'uint8'}",
    )
    act = m.get("action")
    need(
        isinstance(act, dict)
        and is_int(act.get("dim"))
        and act["dim"] >= 1
        and is_num(act.get("low"))
        and is_num(act.get("high")),
        "action must be {dim: int >= 1, low: number, high: number}",
    )
    graph = m.get("graph")
    need(
        isinstance(graph, dict)
        and graph.get("file") in files
        and is_strs(graph.get("inputs"))
        and is_strs(graph.get("outputs"))
        and is_strs(graph.get("candidates")),
        "graph must be {file: a listed file, inputs: [str], outputs: [str], candidates: [str]}",
    )
    quant = m.get("quantization")
    need(
        isinstance(quant, dict)
        and quant.get("shipped") in ("fp32", "int8")
        and isinstance(quant.get("reason"), str)
        and isinstance(quant.get("report"), dict),
        "quantization must be {shipped: 'fp32'|'int8', reason: str, report: object}",
    )
    shield = m.get("shield")
    need(
        isinstance(shield, dict)
        and is_num(shield.get("threshold"))
        and math.isfinite(shield["threshold"])
        and isinstance(shield.get("calibration", {}), dict),
        "shield must be {threshold: finite number, calibration?: object}",
    )
    if "selection" in m:  # optional: bundles written before selection travelled with them lack it
        sel = m["selection"]
        need(
            isinstance(sel, dict)
            and all(is_num(sel.get(k)) and math.isfinite(sel[k]) for k in ("kappa_t", "kappa_c"))
            and sel["kappa_t"] >= 0,
            "selection must be {kappa_t: finite number >= 0, kappa_c: finite number}",
        )
    need(is_int(m.get("training_step")) and m["training_step"] >= 0, "training_step must be an int >= 0")
    need(isinstance(m.get("metrics"), dict), "metrics must be an object")


def _write_dir_atomically(target: Path, contents: Mapping[str, bytes]) -> Path:
    if target.exists():
        raise BundleError(f"{target} already exists; bundles are immutable, write a new version elsewhere")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
    try:
        os.chmod(tmp, 0o755)
        for name, data in contents.items():
            with open(tmp / name, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(target.parent)
    return target
