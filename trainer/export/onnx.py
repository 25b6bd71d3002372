"""Export the agent graph to ONNX, check it against torch, and build signed bundles."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from reachsafe.trainer.algos.offline.config import OfflineConfig
from reachsafe.trainer.models.networks import GRAPH_INPUTS, GRAPH_OUTPUTS, Agent, AgentGraph

logger = logging.getLogger(__name__)

OPSET = 17
PARITY_ATOL = 1e-4
GRAPH_FILE = "agent.onnx"
DEFAULT_SHIELD_THRESHOLD = 0.0


class ExportError(Exception):
    """The ONNX export failed or does not match the torch model."""


def example_inputs(agent: Agent, batch: int = 2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random (obs, noise) of the graph's input types, for tracing and parity checks."""
    rng = np.random.default_rng(seed)
    spec = agent.spec
    if spec.is_image:
        obs = rng.integers(0, 256, size=(batch, *spec.obs_shape), dtype=np.uint8)
    else:
        obs = rng.standard_normal((batch, *spec.obs_shape)).astype(np.float32)
    noise = rng.standard_normal((batch, spec.action_dim)).astype(np.float32)
    return obs, noise


def export_onnx(agent: Agent, path: str | Path) -> Path:
    """Write ``agent.onnx`` (dynamic batch) and validate it with ``onnx.checker``.

    The TorchScript-based exporter (``dynamo=False``) is used: it handles the dynamic batch axis of
    this graph, which the dynamo exporter did not in a probe with torch 2.13.
    """
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    graph = AgentGraph(agent).eval()
    obs, noise = example_inputs(agent)
    dynamic = {name: {0: "batch"} for name in (*GRAPH_INPUTS, *GRAPH_OUTPUTS)}
    with torch.no_grad():
        torch.onnx.export(
            graph,
            (torch.from_numpy(obs), torch.from_numpy(noise)),
            str(path),
            input_names=list(GRAPH_INPUTS),
            output_names=list(GRAPH_OUTPUTS),
            dynamic_axes=dynamic,
            opset_version=OPSET,
            dynamo=False,
        )
    model = onnx.load(str(path))
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"exported graph {path} fails onnx.checker: {exc}") from exc
    logger.info("exported %s (opset %d)", path, OPSET)
    return path


def torch_outputs(agent: Agent, obs: np.ndarray, noise: np.ndarray) -> dict[str, np.ndarray]:
    with torch.no_grad():
        outs = AgentGraph(agent).eval()(torch.from_numpy(obs), torch.from_numpy(noise))
    return {name: o.numpy() for name, o in zip(GRAPH_OUTPUTS, outs, strict=True)}


def onnx_session(path: str | Path, threads: int = 1):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def run_onnx(session, obs: np.ndarray, noise: np.ndarray) -> dict[str, np.ndarray]:
    outs = session.run(list(GRAPH_OUTPUTS), {"obs": obs, "noise": noise})
    return dict(zip(GRAPH_OUTPUTS, outs, strict=True))


def parity_error(agent: Agent, path: str | Path, obs: np.ndarray, noise: np.ndarray) -> float:
    """Largest absolute difference between torch and onnxruntime over every output."""
    ref = torch_outputs(agent, obs, noise)
    got = run_onnx(onnx_session(path), obs, noise)
    # np.max, not max(): a NaN in any output must make the error NaN (and so fail the check)
    return float(np.max([np.max(np.abs(ref[k] - got[k])) for k in GRAPH_OUTPUTS]))


def check_parity(
    agent: Agent, path: str | Path, obs: np.ndarray, noise: np.ndarray, atol: float = PARITY_ATOL
) -> float:
    err = parity_error(agent, path, obs, noise)
    if not err <= atol:
        raise ExportError(f"ONNX/torch parity error {err:.3g} exceeds {atol:g} for {path}")
    logger.info("ONNX parity with torch: max abs error %.2e", err)
    return err


@dataclass(frozen=True)
class BundleResult:
    path: Path
    shipped: str
    reason: str
    report: dict[str, Any]


def build_bundle(
    source: Agent | str | Path,
    out_dir: str | Path,
    version: int,
    parent: int | None,
    signing_key: Ed25519PrivateKey | str | Path,
    int8: bool = False,
    calib_frames: np.ndarray | None = None,
    shield: Mapping[str, Any] | None = None,
    selection: Mapping[str, float] | None = None,
    training_step: int | None = None,
    metrics: dict[str, float] | None = None,
) -> BundleResult:
    """Export, check and sign a bundle into ``out_dir`` (replacing an older bundle there).

    ``source`` is an :class:`Agent` or a run directory (its latest checkpoint is used, and the
    checkpoint supplies the shield section and selection parameters). ``shield`` is the manifest's
    ``shield`` section (``{threshold, calibration?}``, see :mod:`reachsafe.trainer.algos.shield.calibration`) and
    ``selection`` its ``{kappa_t, kappa_c}``; given, they replace the source's (an Agent has a
    threshold of 0 and no selection section: robots then use their own defaults). With ``int8``
    the graph is quantized (:data:`reachsafe.trainer.export.int8.SHIPPED_RECIPE`) with half of
    ``calib_frames``, compared with fp32 on the other half, and int8 is shipped only if it passes
    :func:`reachsafe.trainer.export.int8.decide`.
    """
    from reachsafe.protocol.bundle import write_bundle
    from reachsafe.protocol.keys import load_signing_key

    agent, step, shield_section, selection_section = _resolve_source(source)
    if shield is not None:
        shield_section = dict(shield)
    if selection is not None:
        selection_section = {k: float(v) for k, v in selection.items()}
    threshold = float(shield_section["threshold"])
    if training_step is not None:
        step = training_step
    if not agent.spec.is_image:
        raise ExportError(
            f"bundles carry camera policies (uint8 [H, W, 3] input); this agent takes {agent.spec.obs_shape} vectors"
        )
    key = signing_key if isinstance(signing_key, Ed25519PrivateKey) else load_signing_key(signing_key)
    out_dir = Path(out_dir)
    with tempfile.TemporaryDirectory(prefix="reachsafe-export-") as tmp_name:
        tmp = Path(tmp_name)
        fp32 = export_onnx(agent, tmp / "agent.fp32.onnx")
        obs, noise = example_inputs(agent, batch=8)
        parity = {"parity_max_abs_err": check_parity(agent, fp32, obs, noise)}
        shipped, reason, report = "fp32", "int8 not requested", dict(parity)
        chosen = fp32
        if int8:
            from reachsafe.trainer.export.int8 import (
                SHIPPED_RECIPE,
                compare,
                decide,
                held_out_split,
                quantize_int8,
            )

            if calib_frames is None:
                raise ExportError("int8 export needs calibration frames drawn from the dataset")
            calib, held_out = held_out_split(calib_frames)
            q = quantize_int8(fp32, tmp / "agent.int8.onnx", calib, agent.spec.action_dim)
            qrep = compare(fp32, q, held_out, threshold)
            shipped, verdict = decide(qrep)
            reason = f"{SHIPPED_RECIPE.describe()}: {verdict}"
            report.update(qrep.to_dict())
            if shipped == "int8":
                chosen = q
            logger.info("quantization: shipping %s: %s", shipped, reason)
        manifest = {
            "version": int(version),
            "parent": None if parent is None else int(parent),
            "obs": {"shape": list(agent.spec.obs_shape), "dtype": "uint8"},
            "action": {"dim": agent.spec.action_dim, "low": -1.0, "high": 1.0},
            "graph": {
                "file": GRAPH_FILE,
                "inputs": list(GRAPH_INPUTS),
                "outputs": list(GRAPH_OUTPUTS),
                "candidates": agent.spec.candidate_names,
            },
            "quantization": {"shipped": shipped, "reason": reason, "report": report},
            "shield": {**shield_section, "threshold": threshold},
            "training_step": int(step),
            "metrics": {k: float(v) for k, v in (metrics or {}).items()},
        }
        if selection_section is not None:
            manifest["selection"] = selection_section
        staged = out_dir.with_name(f".{out_dir.name}.new-{os.getpid()}")
        if staged.exists():
            shutil.rmtree(staged)
        write_bundle(staged, manifest, {GRAPH_FILE: chosen.read_bytes()}, key)
    _replace_dir(staged, out_dir)
    logger.info("bundle v%d (%s) written to %s", version, shipped, out_dir)
    return BundleResult(out_dir, shipped, reason, report)


def _resolve_source(
    source: Agent | str | Path,
) -> tuple[Agent, int, dict[str, Any], dict[str, float] | None]:
    """(agent, training step, shield section, selection section or None) of an agent or run dir."""
    if isinstance(source, Agent):
        return source, 0, {"threshold": DEFAULT_SHIELD_THRESHOLD}, None
    from reachsafe.trainer.models.networks import load_checkpoint
    from reachsafe.trainer.runs.run_dir import RunDir

    agent, ckpt = load_checkpoint(RunDir(Path(source)).require_checkpoint())
    return agent, int(ckpt["step"]), checkpoint_shield(ckpt), checkpoint_selection(ckpt)


def checkpoint_shield(ckpt: Mapping[str, Any]) -> dict[str, Any]:
    """A checkpoint's calibrated shield section, else its config's fixed threshold (older runs), else 0."""
    if isinstance(ckpt.get("shield"), Mapping):
        return dict(ckpt["shield"])
    recorded = OfflineConfig.upgrade(dict(ckpt.get("config", {})))
    return {"threshold": float(recorded.get("shield", {}).get("threshold", DEFAULT_SHIELD_THRESHOLD))}


def checkpoint_selection(ckpt: Mapping[str, Any]) -> dict[str, float] | None:
    """``{kappa_t, kappa_c}`` from an offline checkpoint's config; None for runs older than these fields."""
    selection = OfflineConfig.upgrade(dict(ckpt.get("config", {}))).get("selection", {})
    if "kappa_t" not in selection or "kappa_c" not in selection:
        return None
    return {"kappa_t": float(selection["kappa_t"]), "kappa_c": float(selection["kappa_c"])}


def _replace_dir(new: Path, target: Path) -> None:
    """Move ``new`` to ``target``; an existing ``target`` is moved aside first and then deleted."""
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        target.rename(old)
    new.rename(target)
    if old.exists():
        shutil.rmtree(old)
