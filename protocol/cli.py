"""`reachsafe keys ...` commands (wired in by the reachsafe.cli dispatcher).

`reachsafe keys generate --out DIR [--force]` writes the signing and CURVE key files described
in `reachsafe.protocol.keys` and prints what goes where.
"""

from __future__ import annotations

import argparse
import sys

from reachsafe.protocol.errors import KeyFileError
from reachsafe.protocol.keys import SIGNING_KEY, SIGNING_PUB, fingerprint, generate_keys, load_signing_key


def add_commands(parser: argparse.ArgumentParser) -> None:
    """Add the `keys` verbs to `parser` (the `reachsafe keys` sub-parser)."""
    verbs = parser.add_subparsers(dest="keys_command", metavar="VERB", required=True)
    gen = verbs.add_parser(
        "generate",
        help="write a bundle-signing key pair and trainer/robot CurveZMQ key pairs",
        description="Write signing.key/signing.pub (Ed25519) and trainer.key[_secret], robot.key[_secret] (CurveZMQ).",
    )
    gen.add_argument("--out", required=True, help="directory to write the key files into")
    gen.add_argument("--force", action="store_true", help="overwrite existing key files in --out")
    gen.set_defaults(func=_generate)


def _generate(args: argparse.Namespace) -> int:
    try:
        paths = generate_keys(args.out, force=args.force)
    except KeyFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {', '.join(sorted(paths))} to {args.out}")
    print(f"signing key fingerprint: {fingerprint(load_signing_key(paths[SIGNING_KEY]))}")
    print(
        f"trainer keeps {SIGNING_KEY}, trainer.key_secret and each robot's robot.key (allow-list); "
        f"each robot gets {SIGNING_PUB}, trainer.key and its own robot.key_secret."
    )
    return 0
