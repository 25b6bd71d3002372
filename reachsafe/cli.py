"""The ``reachsafe`` command (also ``python -m reachsafe``): ``reachsafe <part> <verb> [options]``.

The dispatcher knows each part only through :data:`PARTS` and imports a part's module when that
part is invoked, so the robot (which has no torch and no simulator) can run ``reachsafe edge ...``
and ``reachsafe --help`` stays instant. This is the only place that configures logging.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Part:
    """One ``reachsafe <part>``: the module and function that add its verbs, and what it needs."""

    module: str
    adder: str
    help: str
    extra: str  # the pip extra that installs its dependencies
    renamed_to: str | None = None  # an old spelling kept working: the part's new name


PARTS: dict[str, Part] = {
    "edge": Part(
        "reachsafe.edge_runtime.commands",
        "add_commands",
        "run, inspect and roll back the robot runtime",
        "robot",
    ),
    "flash": Part(
        "reachsafe.edge_runtime.deploy",
        "add_commands",
        "package the runtime for a robot (folder or ssh)",
        "robot",
    ),
    "hil": Part(
        "reachsafe.edge_runtime.hil.cli",
        "add_commands",
        "hardware-in-the-loop acceptance scenarios, run from the robot",
        "robot",
    ),
    "keys": Part(
        "reachsafe.protocol.cli", "add_commands", "generate signing and CurveZMQ key pairs", "robot"
    ),
    "sim": Part(
        "reachsafe.sim_bridge.cli",
        "add_commands",
        "PyBullet tasks: collect datasets, serve robots, view",
        "sim",
    ),
    "train": Part(
        "reachsafe.trainer.cli",
        "add_train_commands",
        "train a policy offline or online; re-evaluate runs",
        "trainer",
    ),
    "daemon": Part(
        "reachsafe.trainer.cli", "add_daemon_commands", "the trainer daemon: serve a fleet, status", "trainer"
    ),
    "export": Part(
        "reachsafe.trainer.cli",
        "add_export_command",
        "export a run to a signed bundle (ONNX, int8)",
        "trainer",
    ),
    "eval": Part(
        "reachsafe.trainer.cli", "add_eval_command", "evaluate a bundle on a simulated task", "trainer"
    ),
    "demo": Part(
        "reachsafe.demo",
        "add_commands",
        "the whole loop on localhost with the PyBullet bridge",
        "trainer,sim",
    ),
    "trainer": Part(
        "reachsafe.trainer.cli",
        "add_daemon_commands",
        "deprecated spelling of 'daemon'",
        "trainer",
        renamed_to="daemon",
    ),
}

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


class MissingExtraError(SystemExit):
    """A part's dependencies are not installed on this machine."""


def _top_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    parser = argparse.ArgumentParser(
        prog="reachsafe",
        description="Safe offline-to-online fine-tuning of a vision policy on a real robot.",
        epilog="Run 'reachsafe <part> --help' for a part's verbs and options.",
    )
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="logging verbosity"
    )
    parts = parser.add_subparsers(dest="part", metavar="<part>")
    subs = {
        name: parts.add_parser(name, help=argparse.SUPPRESS if part.renamed_to else part.help, add_help=False)
        for name, part in PARTS.items()
    }
    return parser, subs


def _missing_extra(name: str, exc: ModuleNotFoundError) -> MissingExtraError:
    """The error for a third-party package that ``reachsafe <name>`` needs and this machine lacks."""
    if exc.name and exc.name.split(".")[0] == "reachsafe":
        raise exc
    return MissingExtraError(
        f"reachsafe {name}: needs the Python package {exc.name!r}, which is not installed here. "
        f"Install the part's extra: pip install 'reachsafe[{PARTS[name].extra}]'"
    )


def _load_part(name: str, parser: argparse.ArgumentParser) -> None:
    part = PARTS[name]
    try:
        getattr(importlib.import_module(part.module), part.adder)(parser)
    except ModuleNotFoundError as exc:
        raise _missing_extra(name, exc) from None


def part_parser(argv: Sequence[str]) -> tuple[argparse.ArgumentParser, argparse.ArgumentParser | None]:
    """The full parser for ``argv`` (the top level plus the one part named in it) and that part's own."""
    parser, subs = _top_parser()
    known, _ = parser.parse_known_args([a for a in argv if a not in ("-h", "--help")])
    if not known.part:
        return parser, None
    sub = subs[known.part]
    sub.add_argument("-h", "--help", action="help", help="show this help message and exit")
    sub.prog = f"reachsafe {known.part}"
    _load_part(known.part, sub)
    return parser, sub


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    """The full parser for ``argv``: the top level plus the one part named in it."""
    return part_parser(argv)[0]


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level), format=LOG_FORMAT, stream=sys.stderr)
    renamed_to = PARTS[args.part].renamed_to if args.part else None
    if renamed_to:
        logger.warning(
            "'reachsafe %s' is deprecated and will be removed: use 'reachsafe %s'", args.part, renamed_to
        )
    func = getattr(args, "func", None)
    if func is None:
        parser.parse_args([*argv, "--help"])  # prints the relevant help and exits 0
        return 0
    try:
        return int(func(args) or 0)
    except ModuleNotFoundError as exc:  # a verb's heavy dependency, imported when it runs
        raise _missing_extra(args.part, exc) from None
    except KeyboardInterrupt:
        logger.warning("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
