"""``reachsafe sim collect|serve|view``: the sim part's verbs for the lead's dispatcher."""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable
from pathlib import Path

from reachsafe.sim_bridge.policies import POLICIES
from reachsafe.sim_bridge.tasks import SPLITS, TASKS

log = logging.getLogger(__name__)

DEFAULT_TASK = "reachsafe/SafeGoal1-v0"


def _positive(kind: type[int] | type[float]) -> Callable[[str], int | float]:
    def parse(text: str) -> int | float:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its error messages
    return parse


def _non_negative(text: str) -> float:
    value = float(text)
    if not value >= 0.0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _unit_interval(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must lie in [0, 1], got {text}")
    return value


def _task_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", default=DEFAULT_TASK, choices=sorted(TASKS), help="task id")
    p.add_argument("--split", default="train", choices=SPLITS, help="layout split")
    p.add_argument("--seed", type=int, default=0, help="base seed")


def _collect(args: argparse.Namespace) -> int:
    from reachsafe.sim_bridge.collect import CollectConfig, collect, summarize
    from reachsafe.sim_bridge.plots import scatter_png

    cfg = CollectConfig(
        task=args.task,
        policy=args.policy,
        episodes=args.episodes,
        split=args.split,
        obs_mode=args.obs_mode,
        seed=args.seed,
        episode_steps=args.episode_steps,
        compression=args.compression,
        search=args.search,
        palette_jitter=args.palette_jitter,
    )
    out = Path(args.out)
    stats = collect(cfg, out, workers=args.workers)
    summary = summarize(stats)
    png = scatter_png(stats, out.with_suffix(".png"), f"{args.task} [{args.split}] policy={args.policy}")
    print(json.dumps({"dataset": str(out), "scatter": str(png), **summary}, indent=2))
    return 0


def _serve(args: argparse.Namespace) -> int:
    from reachsafe.protocol.errors import KeyFileError, TransportSecurityError
    from reachsafe.sim_bridge.server import ServerConfig, serve

    cfg = ServerConfig(
        bind=args.bind,
        task=args.task,
        split=args.split,
        robots=args.robots,
        speed=args.speed,
        seed=args.seed,
        episode_steps=args.episode_steps,
        reset_s=args.reset_s,
        keys=args.keys,
        faults=args.faults,
    )
    try:
        return serve(cfg)
    except (TransportSecurityError, KeyFileError) as exc:
        print(f"reachsafe sim serve: {exc}")
        return 2


def _view(args: argparse.Namespace) -> int:
    from reachsafe.sim_bridge.view import ViewConfig, view

    cfg = ViewConfig(
        task=args.task,
        out=Path(args.out),
        split=args.split,
        seed=args.seed,
        steps=args.steps,
        policy=args.policy,
        bundle=Path(args.bundle) if args.bundle else None,
        keys=Path(args.keys) if args.keys else None,
        every=args.every,
    )
    summary = view(cfg)
    print(json.dumps({"animation": str(cfg.out), **summary}))
    return 0


def add_commands(parser: argparse.ArgumentParser) -> None:
    """Add the ``collect``, ``serve`` and ``view`` verbs (each sets ``func``)."""
    sub = parser.add_subparsers(dest="sim_command", required=True, metavar="{collect,serve,view}")

    p = sub.add_parser("collect", help="collect an offline dataset (HDF5, DSRL keys) with scripted policies")
    _task_args(p)
    p.add_argument("--policy", default="mixed", choices=POLICIES, help="behaviour policy")
    p.add_argument("--episodes", type=_positive(int), default=20, help="number of episodes")
    p.add_argument(
        "--out", required=True, help="output .h5 file (a reward-cost scatter .png is written beside it)"
    )
    p.add_argument("--workers", type=_positive(int), default=1, help="parallel worker processes")
    p.add_argument("--obs-mode", default="image", choices=("image", "state"), help="observation stored")
    p.add_argument("--episode-steps", type=_positive(int), default=300, help="steps per episode")
    p.add_argument("--compression", default="lzf", choices=("lzf", "gzip"), help="HDF5 compression")
    p.add_argument(
        "--search",
        default=True,
        action=argparse.BooleanOptionalAction,
        help="experts turn in place while their next waypoint is out of the camera's view (--no-search: steer by the map)",
    )
    p.add_argument(
        "--palette-jitter",
        type=_unit_interval,
        default=0.0,
        metavar="S",
        help="randomise the colours every episode: each channel of each colour moved by up to ±S, and a floor "
        "grid on half of the episodes (domain randomisation; the layouts and actions stay the seed's) [default: 0]",
    )
    p.set_defaults(func=_collect)

    p = sub.add_parser("serve", help="run simulated robots as hardware servers (real-time paced)")
    _task_args(p)
    p.add_argument("--bind", required=True, help="ROUTER endpoint, e.g. tcp://127.0.0.1:5600")
    p.add_argument("--robots", type=_positive(int), default=1, help="number of robots (ids robot0..robotN-1)")
    p.add_argument("--speed", type=_positive(float), default=1.0, help="simulated seconds per wall second")
    p.add_argument("--episode-steps", type=_positive(int), default=300, help="steps per episode")
    p.add_argument(
        "--keys",
        type=Path,
        help="CURVE with the robots' trainer-link keys (`reachsafe keys generate` folder): this server uses "
        "trainer.key_secret and admits robots/*.key, else robot.key; required off loopback",
    )
    p.add_argument(
        "--reset-s",
        type=_non_negative,
        default=0.0,
        metavar="S",
        help="make every episode reset take S wall seconds, declared as `resetting` (models a slow "
        "simulator) [default: 0]",
    )
    p.add_argument(
        "--faults",
        action="store_true",
        help="take hw_fault requests: seeded fault injection for `reachsafe hil run` (docs/hil.md); "
        "a HIL bridge only",
    )
    p.set_defaults(func=_serve)

    p = sub.add_parser("view", help="render one episode as an animation (camera + top-down view)")
    _task_args(p)
    p.add_argument("--out", required=True, help="output .gif (or .mp4, needs ffmpeg)")
    p.add_argument("--bundle", help="run this bundle's policy (through edge_runtime's inference wrapper)")
    p.add_argument("--keys", help="directory/file of trusted signing keys (*.pub) to verify --bundle")
    p.add_argument("--policy", default="careful", choices=POLICIES, help="scripted policy when no --bundle")
    p.add_argument("--steps", type=_positive(int), default=300, help="episode length")
    p.add_argument("--every", type=_positive(int), default=2, help="keep every n-th step as a frame")
    p.set_defaults(func=_view)
