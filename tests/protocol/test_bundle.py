"""Bundles: write -> load, and every kind of tampering gives the right typed error."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from reachsafe.protocol import codec
from reachsafe.protocol.bundle import (
    Bundle,
    BundleError,
    HashMismatchError,
    ManifestError,
    SignatureError,
    SpecMismatchError,
    load_bundle,
    write_bundle,
)
from reachsafe.protocol.keys import fingerprint

FILES = {"agent.onnx": b"\x08\x07fake-onnx-bytes" * 100, "notes.txt": b"hello"}


def manifest(**over) -> dict:
    base = {
        "version": 3,
        "parent": 2,
        "obs": {"shape": [64, 64, 3], "dtype": "uint8"},
        "action": {"dim": 2, "low": -1.0, "high": 1.0},
        "graph": {
            "file": "agent.onnx",
            "inputs": ["obs", "noise"],
            "outputs": ["a_on", "a_off", "q_r", "q_c", "q_h", "candidates"],
            "candidates": ["a_on", "a_off", "brake", "primitive_0"],
        },
        "quantization": {"shipped": "int8", "reason": "agrees with fp32", "report": {"max_action_err": 0.01}},
        "shield": {"threshold": 0.0},
        "training_step": 12000,
        "metrics": {"eval/return": 12.5},
    }
    base.update(over)
    return base


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def bundle_dir(tmp_path: Path, key) -> Path:
    return write_bundle(tmp_path / "v3", manifest(), FILES, key)


def test_write_then_load(bundle_dir, key, tmp_path):
    assert sorted(os.listdir(tmp_path)) == ["v3"]  # no temp dir left behind
    b = load_bundle(bundle_dir, [Ed25519PrivateKey.generate().public_key(), key.public_key()], (64, 64, 3), 2)
    assert (b.version, b.parent, b.obs_shape, b.action_dim) == (3, 2, (64, 64, 3), 2)
    assert b.files == FILES and b.files[b.manifest["graph"]["file"]] == FILES["agent.onnx"]
    assert b.manifest["signer"] == fingerprint(key.public_key())
    assert b.manifest["format"] == "reachsafe-bundle/1" and b.manifest["protocol_version"] == 1
    assert b.manifest["created"].endswith("Z")
    assert b.manifest_bytes == (bundle_dir / "manifest.json").read_bytes()
    assert b.path == bundle_dir


def test_message_round_trip_and_store(bundle_dir, key, tmp_path):
    trusted = [key.public_key()]
    msg = codec.decode(codec.encode(load_bundle(bundle_dir, trusted).to_message()))
    received = Bundle.from_message(msg, trusted, (64, 64, 3), 2)
    assert received.files == FILES and received.version == 3
    stored = received.write_to(tmp_path / "robot" / "v3")
    again = load_bundle(stored, trusted)
    assert again.manifest_bytes == received.manifest_bytes and again.signature == received.signature


def test_tampered_file_byte(bundle_dir, key):
    data = bytearray((bundle_dir / "agent.onnx").read_bytes())
    data[10] ^= 1
    (bundle_dir / "agent.onnx").write_bytes(bytes(data))
    with pytest.raises(HashMismatchError, match="agent.onnx"):
        load_bundle(bundle_dir, [key.public_key()])


def test_missing_listed_file(bundle_dir, key):
    (bundle_dir / "notes.txt").unlink()
    with pytest.raises(HashMismatchError, match="missing"):
        load_bundle(bundle_dir, [key.public_key()])


def test_tampered_manifest(bundle_dir, key):
    text = (bundle_dir / "manifest.json").read_text()
    (bundle_dir / "manifest.json").write_text(text.replace('"version": 3', '"version": 4'))
    with pytest.raises(SignatureError):
        load_bundle(bundle_dir, [key.public_key()])


def test_manifest_rehashed_after_file_swap_still_fails_signature(bundle_dir, key):
    """An attacker who swaps a file and fixes its hash in the manifest is caught by the signature."""
    evil = b"evil graph"
    (bundle_dir / "agent.onnx").write_bytes(evil)
    m = json.loads((bundle_dir / "manifest.json").read_bytes())
    m["files"]["agent.onnx"] = hashlib.sha256(evil).hexdigest()
    (bundle_dir / "manifest.json").write_text(json.dumps(m, indent=2, sort_keys=True) + "\n")
    with pytest.raises(SignatureError):
        load_bundle(bundle_dir, [key.public_key()])


def test_invalid_manifest_json(bundle_dir, key):
    (bundle_dir / "manifest.json").write_bytes(b"{not json")
    with pytest.raises(ManifestError, match="JSON"):
        load_bundle(bundle_dir, [key.public_key()])


def test_tampered_or_missing_signature(bundle_dir, key):
    sig = bytearray((bundle_dir / "manifest.sig").read_bytes())
    assert len(sig) == 64
    sig[0] ^= 0x80
    (bundle_dir / "manifest.sig").write_bytes(bytes(sig))
    with pytest.raises(SignatureError):
        load_bundle(bundle_dir, [key.public_key()])
    (bundle_dir / "manifest.sig").unlink()
    with pytest.raises(SignatureError, match="unsigned"):
        load_bundle(bundle_dir, [key.public_key()])


def test_untrusted_key(bundle_dir):
    with pytest.raises(SignatureError, match="trusted"):
        load_bundle(bundle_dir, [Ed25519PrivateKey.generate().public_key()])
    with pytest.raises(SignatureError, match="no trusted keys"):
        load_bundle(bundle_dir, [])


def test_spec_mismatch(bundle_dir, key):
    with pytest.raises(SpecMismatchError, match="observations"):
        load_bundle(bundle_dir, [key.public_key()], expected_obs_shape=(96, 96, 3))
    with pytest.raises(SpecMismatchError, match="actions"):
        load_bundle(bundle_dir, [key.public_key()], expected_action_dim=3)


def test_unlisted_files_are_ignored(bundle_dir, key, caplog):
    (bundle_dir / "sneaky.onnx").write_bytes(b"not listed")
    with caplog.at_level(logging.WARNING, logger="reachsafe.protocol.bundle"):
        b = load_bundle(bundle_dir, [key.public_key()])
    assert "sneaky.onnx" not in b.files and "sneaky.onnx" in caplog.text


def test_message_checks(bundle_dir, key):
    trusted = [key.public_key()]
    msg = load_bundle(bundle_dir, trusted).to_message()
    with pytest.raises(HashMismatchError):
        Bundle.from_message(dataclasses.replace(msg, files={**msg.files, "agent.onnx": b"x"}), trusted)
    with pytest.raises(ManifestError, match="version"):
        Bundle.from_message(dataclasses.replace(msg, version=9), trusted)
    with pytest.raises(SignatureError):
        Bundle.from_message(dataclasses.replace(msg, signature=bytes(64)), trusted)
    with pytest.raises(SpecMismatchError):
        Bundle.from_message(msg, trusted, expected_action_dim=4)


@pytest.mark.parametrize(
    "bad",
    [
        {"version": 0},
        {"parent": "2"},
        {"obs": {"shape": [64, 64], "dtype": "uint8"}},
        {"obs": {"shape": [64, 64, 3], "dtype": "float32"}},
        {"action": {"dim": 2}},
        {"graph": {"file": "other.onnx", "inputs": [], "outputs": [], "candidates": []}},
        {"quantization": {"shipped": "fp16", "reason": "", "report": {}}},
        {"shield": {}},
        {"training_step": -1},
        {"metrics": [1]},
        {"metrics": {"x": float("nan")}},
    ],
)
def test_write_rejects_bad_manifest(tmp_path, key, bad):
    with pytest.raises(ManifestError):
        write_bundle(tmp_path / "b", manifest(**bad), FILES, key)
    assert not (tmp_path / "b").exists()


def test_write_rejects_unsafe_names_and_existing_dir(tmp_path, key, bundle_dir):
    with pytest.raises(ManifestError, match="plain file name"):
        write_bundle(tmp_path / "b", manifest(), {**FILES, "../escape": b"x"}, key)
    with pytest.raises(BundleError, match="exists"):
        write_bundle(bundle_dir, manifest(), FILES, key)


def test_missing_manifest(tmp_path, key):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ManifestError, match="bundle directory"):
        load_bundle(tmp_path / "empty", [key.public_key()])
