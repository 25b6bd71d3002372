"""`reachsafe hil run`: a thin adapter over `run_suite` (the report: table here, JSON and JUnit in --out)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from reachsafe.edge_runtime.hil.config import HilConfig
from reachsafe.edge_runtime.hil.report import format_table
from reachsafe.edge_runtime.hil.suite import run_suite, scenario_names
from reachsafe.protocol.config import ConfigError, add_config_arguments, load_config


def add_commands(parser: argparse.ArgumentParser) -> None:
    verbs = parser.add_subparsers(dest="verb", metavar="<verb>")
    run = verbs.add_parser(
        "run",
        help="run the HIL acceptance scenarios against a bridge and a trainer; exit 1 if any fails",
    )
    run.add_argument("--config", type=Path, help="HilConfig YAML (kind: hil); options given here override it")
    add_config_arguments(run, HilConfig)
    run.set_defaults(func=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(HilConfig, args.config, args)
        scenario_names(cfg)
        report = run_suite(cfg, progress=lambda line: print(line, flush=True))
    except ConfigError as exc:
        print(f"reachsafe hil run: {exc}", file=sys.stderr)
        return 2
    json_path, xml_path = report.write(cfg.out)
    print(format_table(report))
    print(f"report: {json_path} and {xml_path}")
    return 0 if report.passed else 1
