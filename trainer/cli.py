"""Trainer verbs of the ``reachsafe`` CLI: ``train offline|online|reeval``, ``daemon serve|status``,
``export``, ``eval``.

Each verb is a thin adapter: it parses options, calls one typed function of ``trainer.runs``,
``trainer.daemon`` or ``trainer.export``, and prints the result. User errors (a bad config, dataset,
bundle or run directory) print one line and exit 2.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from reachsafe.trainer.algos.config import add_device_argument
from reachsafe.trainer.data.dataset import add_dataset_argument

if TYPE_CHECKING:
    from reachsafe.trainer.algos.offline.config import OfflineConfig

logger = logging.getLogger(__name__)


def _user_errors() -> tuple[type[Exception], ...]:
    """Errors that are the user's to fix: reported as one line (exit code 2), not a traceback."""
    from reachsafe.protocol.config import ConfigError
    from reachsafe.protocol.errors import BundleError, KeyFileError
    from reachsafe.trainer.data.dataset import DatasetError
    from reachsafe.trainer.export.onnx import ExportError
    from reachsafe.trainer.models.device import DeviceError
    from reachsafe.trainer.models.networks import CheckpointError
    from reachsafe.trainer.runs.envs import EnvSpecError
    from reachsafe.trainer.runs.evaluate import EvalError
    from reachsafe.trainer.runs.reeval import ReevalError
    from reachsafe.trainer.runs.run_dir import RunDirError

    return (
        ConfigError,
        DeviceError,
        BundleError,
        KeyFileError,
        DatasetError,
        EvalError,
        ExportError,
        RunDirError,
        CheckpointError,
        ReevalError,
        EnvSpecError,
    )


def _reporting_user_errors(func):
    """Wrap a verb so that a user error prints its message and returns 2."""

    def run(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except _user_errors() as exc:
            logger.error("%s", exc)
            return 2

    return run


# ----- train offline -----------------------------------------------------
def add_train_commands(parser: argparse.ArgumentParser) -> None:
    verbs = parser.add_subparsers(dest="verb", metavar="<verb>")
    _add_offline_verb(verbs)
    _add_online_verb(verbs)
    _add_reeval_verb(verbs)


def _add_offline_verb(verbs: argparse._SubParsersAction) -> None:
    from reachsafe.protocol.config import add_config_arguments
    from reachsafe.trainer.algos.offline.config import OfflineConfig

    p = verbs.add_parser(
        "offline",
        help="offline pretraining (FOSP-lite) on an HDF5 dataset; exports RUN/bundle",
        description="Train π_off, the critics and the reachability critics on a DSRL-layout dataset, "
        "then export and sign RUN/bundle/. Config precedence: defaults < --config YAML < options.",
    )
    add_dataset_argument(
        p,
        "HDF5 dataset (DSRL keys); several files train together, e.g. the same episodes collected "
        "with and without --palette-jitter",
        required=True,
    )
    p.add_argument(
        "--out", required=True, type=Path, help="run directory RUN (config, checkpoints, bundle, tb)"
    )
    p.add_argument("--config", type=Path, help="YAML OfflineConfig (kind: offline)")
    p.add_argument("--keys", type=Path, help="directory with signing.key (default: generate one in RUN/keys)")
    p.add_argument("--resume", action="store_true", help="continue RUN from its latest checkpoint")
    p.add_argument(
        "--no-world-model",
        action="store_true",
        help="ablation: train without the latent world model (and so without imagined targets)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_device_argument(p)
    p.add_argument(
        "--nproc",
        type=int,
        default=1,
        help="data-parallel processes to start on this machine, one per GPU with CUDA (NCCL), else "
        "sharing the cores (gloo); --batch-size is their batch together. Under torchrun leave it at 1 "
        "[default: 1]",
    )
    add_config_arguments(p, OfflineConfig)
    p.set_defaults(func=_reporting_user_errors(_run_train_offline))


def _run_train_offline(args: argparse.Namespace) -> int:
    from reachsafe.protocol.config import ConfigError, load_config
    from reachsafe.trainer.algos.offline.config import OfflineConfig
    from reachsafe.trainer.runs.parallel import device_for_rank, spawn
    from reachsafe.trainer.runs.run_dir import RunDir

    config_path = args.config
    if config_path is None and args.resume and RunDir(args.out).config.is_file():
        config_path = RunDir(args.out).config
    cfg = load_config(OfflineConfig, config_path, args)
    if args.no_world_model:
        cfg = cfg.replace(
            world_model=cfg.world_model.replace(enabled=False), imagine=cfg.imagine.replace(enabled=False)
        )
    if args.nproc < 1 or cfg.batch_size % args.nproc:
        raise ConfigError(
            f"--nproc {args.nproc}: need ≥ 1 processes that divide --batch-size {cfg.batch_size}"
        )
    job = (args.dataset, args.out, cfg, args.keys, args.resume, not args.no_progress, args.device)
    if args.nproc == 1:
        _train_offline_process(*job)
    else:
        device_for_rank(args.device, 0, args.nproc)  # a device error is reported here, not by every rank
        spawn(args.nproc, _train_offline_process, *job)
    return 0


def _train_offline_process(
    dataset: list[Path],
    out: Path,
    cfg: OfflineConfig,
    keys: Path | None,
    resume: bool,
    progress: bool,
    device: str,
) -> None:
    """One process of ``train offline`` (a data-parallel rank with --nproc or torchrun); rank 0 reports."""
    from reachsafe.trainer.data.dataset import load_datasets
    from reachsafe.trainer.runs.offline import train_offline

    result = train_offline(
        load_datasets(dataset), out, cfg, keys_dir=keys, resume=resume, progress=progress, device=device
    )
    if not result.written:
        return
    if result.bundle is not None:
        print(f"trained {result.steps} updates in {result.seconds:.1f} s; bundle: {result.bundle.path}")
    else:
        print(f"trained {result.steps} updates in {result.seconds:.1f} s; checkpoint: {result.run.latest}")


# ----- train online --------------------------------------------------------
ENV_HELP = (
    "gymnasium id (reachsafe/SafeGoal1-v0, or MODULE:ID to import the module that registers it), or a robot "
    "server: remote:tcp://HOST:PORT[/ROBOT][?keys=DIR] (docs/robots.md)"
)


def add_env_arguments(parser: argparse.ArgumentParser) -> None:
    """--obs-key and --cost-key: how an in-process gymnasium env's observation and cost are read."""
    parser.add_argument(
        "--obs-key", help="image key of dict observations (e.g. Safety-Gymnasium vision tasks)"
    )
    parser.add_argument(
        "--cost-key",
        default="cost",
        help="info key of the step's cost (ignored for envs whose step() returns the safety API's 6-tuple "
        "(obs, reward, cost, terminated, truncated, info)); a step without it is an error [default: cost]",
    )


def _add_online_verb(verbs: argparse._SubParsersAction) -> None:
    from reachsafe.protocol.config import add_config_arguments
    from reachsafe.trainer.algos.online.config import OnlineConfig

    p = verbs.add_parser(
        "online",
        help="online fine-tuning of RUN's agent against a gymnasium env in-process or a robot server (remote:…)",
        description="VPA, then SAC-Lag for π_on with safe policy expansion, the robot's shield and an adaptive PID λ, "
        "on any env reporting its cost (info[--cost-key] or the safety API's 6-tuple step). Writes OUT/episodes.jsonl, OUT/evals.jsonl, OUT/summary.json, OUT/checkpoint.pt, "
        "OUT/tb.",
    )
    p.add_argument(
        "--run", required=True, type=Path, help="offline run directory (RUN/checkpoints/latest.pt)"
    )
    p.add_argument("--env", required=True, help=ENV_HELP)
    p.add_argument(
        "--split", choices=["train", "unseen"], help="task split (reachsafe envs) [default: the env's]"
    )
    p.add_argument("--steps", required=True, type=int, help="environment steps")
    p.add_argument("--out", type=Path, help="output directory [default: RUN/online_sim]")
    add_env_arguments(p)
    add_dataset_argument(p, "offline dataset file(s) for mixing and VPA [default: the run's]")
    p.add_argument("--no-vpa", action="store_true", help="ablation: skip Value Pre-Alignment")
    p.add_argument("--no-expansion", action="store_true", help="ablation: act with π_on only (no policy set)")
    p.add_argument("--no-shield", action="store_true", help="ablation: no reachability shield")
    p.add_argument(
        "--no-world-model",
        action="store_true",
        help="ablation: model-free SAC-Lag, selection by the critics (the world model neither learns nor is used)",
    )
    p.add_argument(
        "--lagrangian",
        choices=["bounded", "marvel", "pid", "fixed"],
        help="λ controller (docs/method.md §10): bounded = PID + bounded gain adaptation per episode, "
        "marvel = Marvel's released adaptive PID, pid = OmniSafe's PID, fixed = constant λ [default: bounded]",
    )
    p.add_argument("--eval-episodes", type=int, default=5, help="greedy episodes at the end [default: 5]")
    p.add_argument(
        "--eval-every",
        type=int,
        default=0,
        help="also evaluate --eval-episodes greedy episodes every this many steps, from step 0 (OUT/evals.jsonl) "
        "[default: 0, only at the end]",
    )
    p.add_argument("--resume", action="store_true", help="continue OUT/checkpoint.pt")
    p.add_argument("--config", type=Path, help="YAML OnlineConfig (kind: online)")
    add_device_argument(p)
    add_config_arguments(p, OnlineConfig)
    p.set_defaults(func=_reporting_user_errors(_run_train_online))


def _run_train_online(args: argparse.Namespace) -> int:
    from reachsafe.protocol.config import load_config
    from reachsafe.trainer.algos.online.config import OnlineConfig
    from reachsafe.trainer.runs.online import train_online

    cfg = load_config(OnlineConfig, args.config, args)
    if args.no_vpa:
        cfg = cfg.replace(vpa=cfg.vpa.replace(enabled=False))
    if args.no_expansion:
        cfg = cfg.replace(expansion=cfg.expansion.replace(enabled=False))
    if args.no_world_model:
        cfg = cfg.replace(world_model=cfg.world_model.replace(enabled=False))
    if args.lagrangian:
        cfg = cfg.replace(lagrange=cfg.lagrange.replace(mode=args.lagrangian))
    result = train_online(
        args.run, args.env, args.steps, cfg, args.out or args.run / "online_sim",
        split=args.split, obs_key=args.obs_key, cost_key=args.cost_key, use_shield=not args.no_shield, resume=args.resume,
        dataset_paths=args.dataset, eval_episodes=args.eval_episodes, eval_every=args.eval_every,
        device=args.device,
    )  # fmt: skip
    print(
        f"{result.steps} steps, {result.episodes} episodes in {result.seconds:.0f} s; cumulative cost "
        f"{result.cumulative_cost:.0f}; final eval {result.final_eval}; outputs in {result.out}"
    )
    return 0


# ----- daemon serve / status ------------------------------------------------------------------
def add_daemon_commands(parser: argparse.ArgumentParser) -> None:
    from reachsafe.trainer.daemon.serve import add_serve_arguments

    verbs = parser.add_subparsers(dest="verb", metavar="<verb>")
    p = verbs.add_parser(
        "serve",
        help="trainer daemon: ingest robot steps, fine-tune online, ship signed bundles",
        description="ROUTER for any number of robots: steps are ACKed once durably stored (RUN/online/steps/), "
        "a learner thread fine-tunes (VPA, SAC-Lag, adaptive PID λ) and ships bundles to RUN/bundles/ and the robots. "
        "SIGTERM/SIGINT: checkpoint and exit 0.",
    )
    add_serve_arguments(p)
    p.set_defaults(func=_reporting_user_errors(_run_serve))
    s = verbs.add_parser("status", help="show a daemon's RUN/status.json (robots, rates, λ, bundle)")
    s.add_argument("--run", required=True, type=Path, help="run directory the daemon serves")
    s.add_argument("--json", action="store_true", help="print the raw status JSON")
    s.set_defaults(func=_run_status)


def _run_serve(args: argparse.Namespace) -> int:
    from reachsafe.protocol.config import load_config
    from reachsafe.trainer.algos.online.config import OnlineConfig
    from reachsafe.trainer.daemon.serve import serve

    cfg = load_config(OnlineConfig, args.config, args)
    return serve(
        cfg, args.run, args.bind, keys=args.keys, dataset_paths=args.dataset, resume=args.resume,
        device=args.device,
    )  # fmt: skip


def _run_status(args: argparse.Namespace) -> int:
    import json

    from reachsafe.trainer.daemon.status import StatusError, format_status, read_status

    try:
        status = read_status(args.run)
    except StatusError as exc:
        print(f"error: {exc}")
        return 1
    print(json.dumps(status, indent=1, sort_keys=True) if args.json else format_status(status))
    return 0


# ----- train reeval ---------------------------------------------------------------------------
def _add_reeval_verb(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser(
        "reeval",
        help="re-evaluate the final agents of train online runs on episode seeds they never saw",
        description="Load each run's final agent (OUT/checkpoint.pt) and let it act as it did in its own "
        "evaluations (greedy, the λ it ended with, the shield at its last threshold) on episode seeds "
        "SEED_BASE + 1000·seed + i; print a markdown table per run and per LABEL.",
    )
    p.add_argument("groups", nargs="+", help="LABEL=DIR[,DIR...] (train online --out directories)")
    p.add_argument("--episodes", type=int, default=30, help="greedy episodes per run [default: 30]")
    p.add_argument(
        "--seed-base",
        type=int,
        default=50_000,
        help="episode i of the run with seed s uses SEED_BASE + 1000·s + i [default: 50000]",
    )
    p.add_argument("--no-shield", action="store_true", help="act without the shield")
    p.add_argument(
        "--obs-key", help="image key of dict observations [default: the one the run was trained with]"
    )
    p.add_argument("--cost-limit", type=float, default=10.0, help="episode cost limit d [default: 10]")
    p.add_argument("--jsonl", type=Path, help="also append one JSON line per run here")
    p.set_defaults(func=_reporting_user_errors(_run_reeval))


def _run_reeval(args: argparse.Namespace) -> int:
    import json

    from reachsafe.trainer.runs.reeval import parse_groups, reevaluate, table

    results: dict[str, list[dict]] = {}
    for label, dirs in parse_groups(args.groups).items():
        for d in dirs:
            row = reevaluate(d, args.episodes, args.seed_base, not args.no_shield, args.obs_key)
            logger.info("%s %s: return %.2f cost %.2f", label, d, row["return_mean"], row["cost_mean"])
            results.setdefault(label, []).append(row)
            if args.jsonl:
                with args.jsonl.open("a") as f:
                    f.write(json.dumps({"label": label, **row}) + "\n")
    print(table(results, args.cost_limit))
    return 0


# ----- export --------------------------------------------------------------
def add_export_command(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Export a run's latest checkpoint to a signed bundle (agent.onnx). With --int8 the graph is "
        "quantized (the recipe of reachsafe.trainer.export.int8: the heads' hidden layers in dynamic int8, the "
        "encoders fp32) and int8 ships only if, on held-out dataset frames, it agrees "
        "with fp32 on ≥ 99% of shield decisions and is not slower; the manifest records the choice."
    )
    parser.add_argument("--run", required=True, type=Path, help="run directory (RUN/checkpoints/latest.pt)")
    parser.add_argument(
        "--out", required=True, type=Path, help="bundle directory to write (replaced if present)"
    )
    parser.add_argument("--int8", action="store_true", help="try int8 quantization (the shipped recipe)")
    add_dataset_argument(parser, "calibration dataset file(s) (default: the one(s) the run trained on)")
    parser.add_argument("--keys", type=Path, help="directory with signing.key (default: RUN/keys)")
    parser.add_argument("--version", type=int, default=1, help="bundle version [default: 1]")
    parser.add_argument("--parent", type=int, default=None, help="parent bundle version [default: none]")
    parser.set_defaults(func=_reporting_user_errors(_run_export))


def _run_export(args: argparse.Namespace) -> int:
    from reachsafe.trainer.algos.offline.config import offline_config_from_checkpoint
    from reachsafe.trainer.export.onnx import ExportError, build_bundle
    from reachsafe.trainer.models.networks import load_checkpoint
    from reachsafe.trainer.runs.run_dir import RunDir, resolve_signing_key
    from reachsafe.trainer.runs.start import load_offline_dataset

    run = RunDir(args.run)
    _, ckpt = load_checkpoint(run.require_checkpoint())
    calib = None
    if args.int8:
        dataset = load_offline_dataset(args.dataset, ckpt)
        if dataset is None:
            raise ExportError("--int8 needs calibration frames from the run's dataset: pass --dataset FILE")
        calib = dataset.calibration_frames(offline_config_from_checkpoint(ckpt).calib_frames)
    result = build_bundle(
        run.root,
        args.out,
        version=args.version,
        parent=args.parent,
        signing_key=resolve_signing_key(args.keys, run),
        int8=args.int8,
        calib_frames=calib,
    )
    print(f"bundle v{args.version} → {result.path}: shipped {result.shipped} ({result.reason})")
    for k, v in result.report.items():
        print(f"  {k:24s} {v:.6g}")
    return 0


# ----- eval ----------------------------------------------------------------
def add_eval_command(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Run a bundle on a simulated task through the edge runtime's inference, selection and shield, "
        "and print mean ± std return, cost (with the part from touching solid objects), success rate and "
        "DSRL-normalised return/cost."
    )
    parser.add_argument("--bundle", required=True, type=Path, help="bundle directory")
    parser.add_argument("--task", required=True, help=ENV_HELP)
    add_env_arguments(parser)
    parser.add_argument(
        "--split", default="train", choices=["train", "unseen"], help="task split [default: train]"
    )
    parser.add_argument(
        "--palette",
        choices=["train", "unseen"],
        help="paint the split's layouts with this split's colours, to tell what a change of appearance costs "
        "from what a change of layout does [default: the split's own]",
    )
    parser.add_argument(
        "--episodes", type=int, default=10, help="episodes when --seeds is not given [default: 10]"
    )
    parser.add_argument("--seeds", type=int, nargs="+", help="explicit episode seeds")
    parser.add_argument(
        "--keys", type=Path, help="trusted signing.pub (file or dir; default: RUN/keys next to the bundle)"
    )
    parser.add_argument("--cost-limit", type=float, default=10.0, help="episode cost limit d [default: 10]")
    add_dataset_argument(parser, "dataset file(s) whose min/max episode return are the reward references")
    parser.add_argument(
        "--reward-ref", type=float, nargs=2, metavar=("LOW", "HIGH"), help="reference returns"
    )
    parser.add_argument("--episode-steps", type=int, help="override the task's episode length")
    shield = parser.add_mutually_exclusive_group()
    shield.add_argument("--no-shield", action="store_true", help="execute the policy's action unshielded")
    shield.add_argument(
        "--shield-threshold",
        type=float,
        help="replace the manifest's shield threshold: the policy's action is replaced where Q_h exceeds it "
        "(higher: fewer interventions, more return and cost) [default: the manifest's]",
    )
    parser.add_argument("--json", type=Path, help="also write the summary as JSON here")
    parser.set_defaults(func=_reporting_user_errors(_run_eval))


def _run_eval(args: argparse.Namespace) -> int:
    import json

    from reachsafe.trainer.runs.evaluate import evaluate_bundle, load_verified_bundle

    ref = tuple(args.reward_ref) if args.reward_ref else None
    if ref is None and args.dataset is not None:
        from reachsafe.trainer.data.dataset import load_datasets

        returns, _ = load_datasets(args.dataset).episode_returns()
        ref = (float(returns.min()), float(returns.max()))
    bundle = load_verified_bundle(args.bundle, args.keys)
    summary = evaluate_bundle(
        bundle,
        args.task,
        split=args.split,
        episodes=args.episodes,
        seeds=args.seeds,
        cost_limit=args.cost_limit,
        reward_ref=ref,
        episode_steps=args.episode_steps,
        use_shield=not args.no_shield,
        shield_threshold=args.shield_threshold,
        palette=args.palette,
        obs_key=args.obs_key,
        cost_key=args.cost_key,
    )
    print(summary.format())
    if args.json:
        args.json.write_text(json.dumps(summary.to_dict(), indent=2))
    return 0
