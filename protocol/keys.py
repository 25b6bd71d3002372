"""Key files: Ed25519 bundle-signing keys and CurveZMQ transport key pairs.

`generate_keys(out_dir, force=False)` writes, in one directory:

- `signing.key` (raw 32-byte Ed25519 private key, mode 0600) and `signing.pub` (raw 32-byte
  public key): the trainer signs bundles with the first; robots trust the second.
- `trainer.key` / `trainer.key_secret` and `robot.key` / `robot.key_secret`: CurveZMQ
  certificates in pyzmq's z85 text format (`zmq.auth.create_certificates`), secrets mode 0600.
  The trainer needs `trainer.key_secret` + the robots' `*.key`; a robot needs its own
  `robot.key_secret` + `trainer.key`.

Loading: `load_signing_key`, `load_public_key`, `load_trusted_keys` (files or a directory of
`*.pub`), `fingerprint`, `load_curve_keypair`, `load_curve_public_keys`. Problems raise
`KeyFileError` saying which file and what to do.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import zmq.auth
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from reachsafe.protocol.errors import KeyFileError

log = logging.getLogger(__name__)

SIGNING_KEY = "signing.key"
SIGNING_PUB = "signing.pub"
CURVE_NAMES = ("trainer", "robot")
KEY_FILES = (SIGNING_KEY, SIGNING_PUB) + tuple(
    f"{name}{ext}" for name in CURVE_NAMES for ext in (".key", ".key_secret")
)


def public_bytes(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def fingerprint(key: Ed25519PublicKey | Ed25519PrivateKey) -> str:
    """Short stable id of a signing key: "ed25519:" + first 32 hex digits of sha256(raw public key)."""
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return "ed25519:" + hashlib.sha256(public_bytes(pub)).hexdigest()[:32]


def generate_keys(out_dir: str | os.PathLike, *, force: bool = False) -> dict[str, Path]:
    """Write a fresh signing key pair and trainer/robot CURVE pairs into out_dir.

    Refuses (KeyFileError) if any of the files exists unless force=True. Files are written in a
    temporary directory first and moved in place, so a failure leaves no half set.
    """
    out = Path(out_dir)
    existing = [name for name in KEY_FILES if (out / name).exists()]
    if existing and not force:
        raise KeyFileError(
            f"{out} already holds {existing}; refusing to overwrite keys (robots and trainers that "
            "trust them would stop working). Pass --force to replace them, or choose another --out."
        )
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out, prefix=".keys-") as tmp_name:
        tmp = Path(tmp_name)
        private = Ed25519PrivateKey.generate()
        _write_private(
            tmp / SIGNING_KEY, private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        )
        (tmp / SIGNING_PUB).write_bytes(public_bytes(private.public_key()))
        for name in CURVE_NAMES:
            zmq.auth.create_certificates(str(tmp), name)
            os.chmod(tmp / f"{name}.key_secret", 0o600)
        for name in KEY_FILES:
            os.replace(tmp / name, out / name)
    log.info("wrote keys to %s (signing key %s)", out, fingerprint(private))
    return {name: out / name for name in KEY_FILES}


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _read_raw(path: str | os.PathLike, what: str) -> bytes:
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise KeyFileError(
            f"cannot read {what} {p}: {exc}; create keys with `reachsafe keys generate --out DIR`"
        ) from exc
    if len(data) != 32:
        raise KeyFileError(f"{p} is {len(data)} bytes; a raw Ed25519 {what} is exactly 32 bytes")
    return data


def load_signing_key(path: str | os.PathLike) -> Ed25519PrivateKey:
    """Load a raw Ed25519 private key (signing.key); warns if others can read it."""
    data = _read_raw(path, "signing key")
    if os.stat(path).st_mode & 0o077:
        log.warning("signing key %s is readable by other users; run `chmod 600 %s`", path, path)
    return Ed25519PrivateKey.from_private_bytes(data)


def load_public_key(path: str | os.PathLike) -> Ed25519PublicKey:
    """Load a raw Ed25519 public key (signing.pub)."""
    return Ed25519PublicKey.from_public_bytes(_read_raw(path, "public key"))


def load_trusted_keys(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Ed25519PublicKey]:
    """Load bundle-verification keys from files and/or directories (every `*.pub` inside).

    Raises KeyFileError if nothing is found: a robot that trusts no key can install nothing.
    """
    items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    files: list[Path] = []
    for item in map(Path, items):
        files.extend(sorted(item.glob("*.pub")) if item.is_dir() else [item])
    keys = [load_public_key(f) for f in files]
    if not keys:
        raise KeyFileError(
            f"no trusted signing keys found in {[str(i) for i in items]}; copy the trainer's signing.pub there"
        )
    return keys


def load_curve_keypair(secret_file: str | os.PathLike) -> tuple[bytes, bytes]:
    """(public, secret) z85 keys from a CurveZMQ `*.key_secret` file."""
    try:
        public, secret = zmq.auth.load_certificate(str(secret_file))
    except (OSError, ValueError) as exc:
        raise KeyFileError(
            f"cannot load CURVE key pair {secret_file}: {exc}; use the *.key_secret file "
            "written by `reachsafe keys generate`"
        ) from exc
    if not secret:
        raise KeyFileError(f"{secret_file} holds no secret key; pass the *.key_secret file, not *.key")
    return public, secret


def load_curve_public_keys(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[bytes]:
    """z85 public keys from CurveZMQ `*.key` files and/or directories (every `*.key` inside)."""
    items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    files: list[Path] = []
    for item in map(Path, items):
        files.extend(sorted(item.glob("*.key")) if item.is_dir() else [item])
    keys = []
    for f in files:
        try:
            public, _ = zmq.auth.load_certificate(str(f))
        except (OSError, ValueError) as exc:
            raise KeyFileError(f"cannot load CURVE public key {f}: {exc}") from exc
        keys.append(public)
    return keys
