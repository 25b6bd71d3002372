"""The ``reachsafe`` command: ``reachsafe <part> <verb> [options]``.

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

#: part → (module, function adding the part's verbs to its parser, one-line help, extra to install)
PARTS: dict[str, tuple[str, str, str, str]] = {
    "edge": (
        "edge_runtime.commands",
        "add_commands",
        "run, inspect and roll back the robot runtime",
        "robot",
    ),
    "flash": (
        "edge_runtime.deploy",
        "add_commands",
        "package the runtime for a robot (folder or ssh)",
        "robot",
    ),
    "keys": ("protocol.cli", "add_commands", "generate signing and CurveZMQ key pairs", "robot"),
    "sim": ("sim_bridge.cli", "add_commands", "PyBullet tasks: collect datasets, serve robots, view", "sim"),
    "train": ("trainer.cli", "add_train_commands", "train a policy offline or online", "trainer"),
    "trainer": (
        "trainer.cli",
        "add_trainer_commands",
        "the trainer daemon: serve a fleet, status",
        "trainer",
    ),
    "export": (
        "trainer.cli",
        "add_export_command",
        "export a run to a signed bundle (ONNX, int8)",
        "trainer",
    ),
    "eval": ("trainer.cli", "add_eval_command", "evaluate a bundle on a simulated task", "trainer"),
    "demo": (
        "trainer.demo",
        "add_commands",
        "the whole loop on localhost with the PyBullet bridge",
        "trainer,sim",
    ),
}

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


class MissingExtraError(SystemExit):
    """A part's dependencies are not installed on this machine."""


def _top_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reachsafe",
        description="Safe offline-to-online fine-tuning of a vision policy on a real robot.",
        epilog="Run 'reachsafe <part> --help' for a part's verbs and options.",
    )
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="logging verbosity"
    )
    parts = parser.add_subparsers(dest="part", metavar="<part>")
    for name, (_, _, helptext, _) in PARTS.items():
        parts.add_parser(name, help=helptext, add_help=False)
    return parser


def _load_part(name: str, parser: argparse.ArgumentParser) -> None:
    module_name, func_name, _, extra = PARTS[name]
    try:
        getattr(importlib.import_module(module_name), func_name)(parser)
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] in {
            "edge_runtime",
            "protocol",
            "hardware",
            "sim_bridge",
            "trainer",
        }:
            raise
        raise MissingExtraError(
            f"reachsafe {name}: needs the Python package {exc.name!r}, which is not installed here. "
            f"Install the part's extra: pip install 'reachsafe[{extra}]'"
        ) from None


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    """The full parser for ``argv``: the top level plus the one part named in it."""
    parser = _top_parser()
    known, _ = parser.parse_known_args([a for a in argv if a not in ("-h", "--help")])
    if known.part:
        sub = parser._subparsers._group_actions[0].choices[known.part]  # the part's own parser
        sub.add_argument("-h", "--help", action="help", help="show this help message and exit")
        sub.prog = f"reachsafe {known.part}"
        _load_part(known.part, sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level), format=LOG_FORMAT, stream=sys.stderr)
    func = getattr(args, "func", None)
    if func is None:
        parser.parse_args([*argv, "--help"])  # prints the relevant help and exits 0
        return 0
    try:
        return int(func(args) or 0)
    except KeyboardInterrupt:
        logging.getLogger(__name__).warning("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
