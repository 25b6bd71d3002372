"""Key generation (`reachsafe keys generate`) and key loading."""

from __future__ import annotations

import argparse
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from reachsafe.protocol import cli
from reachsafe.protocol.errors import KeyFileError
from reachsafe.protocol.keys import (
    KEY_FILES,
    fingerprint,
    generate_keys,
    load_curve_keypair,
    load_curve_public_keys,
    load_public_key,
    load_signing_key,
    load_trusted_keys,
)


def run_cli(argv: list[str]) -> int:
    """Parse like the `reachsafe` dispatcher does: `keys` is a sub-parser filled by add_commands."""
    parser = argparse.ArgumentParser(prog="reachsafe")
    parts = parser.add_subparsers(dest="part", required=True)
    cli.add_commands(parts.add_parser("keys"))
    args = parser.parse_args(argv)
    return args.func(args)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_generate_writes_all_files_with_private_modes(tmp_path):
    paths = generate_keys(tmp_path / "k")
    assert sorted(p.name for p in (tmp_path / "k").iterdir()) == sorted(KEY_FILES)
    assert set(paths) == set(KEY_FILES)
    for secret in ("signing.key", "trainer.key_secret", "robot.key_secret"):
        assert mode(paths[secret]) == 0o600, secret
    private = load_signing_key(paths["signing.key"])
    public = load_public_key(paths["signing.pub"])
    assert fingerprint(private) == fingerprint(public)
    assert public.verify(private.sign(b"x"), b"x") is None
    trainer_pub, trainer_secret = load_curve_keypair(paths["trainer.key_secret"])
    assert load_curve_public_keys(paths["trainer.key"]) == [trainer_pub] and len(trainer_secret) == 40


def test_cli_generate_refuses_overwrite_without_force(tmp_path, capsys):
    out = tmp_path / "keys"
    assert run_cli(["keys", "generate", "--out", str(out)]) == 0
    assert "fingerprint" in capsys.readouterr().out
    before = {name: (out / name).read_bytes() for name in KEY_FILES}

    assert run_cli(["keys", "generate", "--out", str(out)]) == 1
    assert "--force" in capsys.readouterr().err
    assert {name: (out / name).read_bytes() for name in KEY_FILES} == before

    assert run_cli(["keys", "generate", "--out", str(out), "--force"]) == 0
    assert (out / "signing.key").read_bytes() != before["signing.key"]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp dir left


def test_generate_refuses_if_any_single_file_exists(tmp_path):
    (tmp_path / "robot.key").write_text("keep me")
    with pytest.raises(KeyFileError, match="robot.key"):
        generate_keys(tmp_path)
    assert (tmp_path / "robot.key").read_text() == "keep me"


def test_load_trusted_keys_from_dir_and_files(tmp_path):
    a, b = generate_keys(tmp_path / "a"), generate_keys(tmp_path / "b")
    trust = tmp_path / "trust"
    trust.mkdir()
    (trust / "a.pub").write_bytes(a["signing.pub"].read_bytes())
    (trust / "b.pub").write_bytes(b["signing.pub"].read_bytes())
    from_dir = load_trusted_keys(trust)
    from_files = load_trusted_keys([a["signing.pub"], b["signing.pub"]])
    assert [fingerprint(k) for k in from_dir] == [fingerprint(k) for k in from_files]
    assert len(from_dir) == 2


def test_key_loading_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(KeyFileError, match="signing.pub"):
        load_trusted_keys(tmp_path / "empty")
    (tmp_path / "short.pub").write_bytes(b"\x00" * 31)
    with pytest.raises(KeyFileError, match="32 bytes"):
        load_trusted_keys(tmp_path / "short.pub")
    with pytest.raises(KeyFileError, match="keys generate"):
        load_signing_key(tmp_path / "nope.key")
    paths = generate_keys(tmp_path / "k")
    with pytest.raises(KeyFileError, match="key_secret"):
        load_curve_keypair(paths["robot.key"])


def test_loose_signing_key_permissions_warn(tmp_path, caplog):
    paths = generate_keys(tmp_path)
    paths["signing.key"].chmod(0o644)
    load_signing_key(paths["signing.key"])
    assert "chmod 600" in caplog.text


def test_reachsafe_keys_generate_in_a_subprocess(tmp_path):
    """The real entry point: `python -m reachsafe.cli keys generate --out DIR` (what `reachsafe` runs)."""
    cmd = [sys.executable, "-m", "reachsafe.cli", "keys", "generate", "--out", str(tmp_path / "k")]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    assert sorted(p.name for p in (tmp_path / "k").iterdir()) == sorted(KEY_FILES)
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert again.returncode == 1 and "--force" in again.stderr
