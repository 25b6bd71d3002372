"""int8 static QDQ quantization of the agent graph and the fp32-vs-int8 gate (docs/architecture.md, "Bundles").

int8 is shipped only if its shield decisions agree with fp32 on ≥ 99% of the comparison frames and
it is not slower on this machine; the report says what was measured.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from reachsafe.edge_runtime.inference import AgentOutput
from reachsafe.edge_runtime.shield import shield
from reachsafe.protocol.constants import POLICY_OFFLINE, POLICY_ONLINE
from reachsafe.trainer.export.onnx import onnx_session, run_onnx

logger = logging.getLogger(__name__)

MIN_AGREEMENT = 0.99


class QuantizationError(Exception):
    """int8 quantization could not be done (e.g. no calibration frames)."""


@dataclass(frozen=True)
class QuantReport:
    frames: int
    action_err_max: float
    action_err_mean: float
    q_h_err_max: float
    shield_agreement: float
    fp32_p50_ms: float
    fp32_p99_ms: float
    int8_p50_ms: float
    int8_p99_ms: float

    def to_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}


class _CalibrationReader:
    """onnxruntime CalibrationDataReader over single frames with zero noise."""

    def __init__(self, frames: np.ndarray, action_dim: int) -> None:
        self._frames = iter(frames)
        self._noise = np.zeros((1, action_dim), np.float32)

    def get_next(self) -> dict[str, np.ndarray] | None:
        frame = next(self._frames, None)
        if frame is None:
            return None
        return {"obs": np.ascontiguousarray(frame[None]), "noise": self._noise}


def quantize_int8(
    fp32_path: str | Path, int8_path: str | Path, calib_frames: np.ndarray, action_dim: int
) -> Path:
    """Static QDQ int8 (per-channel weights) of the convolutions and matrix products."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if calib_frames is None or len(calib_frames) == 0:
        raise QuantizationError("int8 needs calibration frames; pass frames drawn from the training dataset")
    quantize_static(
        str(fp32_path),
        str(int8_path),
        _CalibrationReader(calib_frames, action_dim),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        op_types_to_quantize=["Conv", "MatMul", "Gemm"],
        calibrate_method=CalibrationMethod.MinMax,
    )
    return Path(int8_path)


def _decisions(out: dict[str, np.ndarray], threshold: float) -> list[tuple[bool, int]]:
    decisions = []
    for i in range(out["q_h"].shape[0]):
        one = AgentOutput(**{k: v[i] for k, v in out.items()})
        for policy in (POLICY_ONLINE, POLICY_OFFLINE):
            d = shield(one, policy, threshold)
            decisions.append((d.shielded, d.candidate))
    return decisions


def _latency_ms(sessions: list, frames: np.ndarray, action_dim: int, runs: int) -> list[np.ndarray]:
    """Single-frame latency of each session, measured interleaved so load changes hit both alike."""
    noise = np.zeros((1, action_dim), np.float32)
    times = [np.empty(runs) for _ in sessions]
    for r in range(runs):
        frame = np.ascontiguousarray(frames[r % len(frames)][None])
        for s, sess in enumerate(sessions):
            t0 = time.monotonic()
            run_onnx(sess, frame, noise)
            times[s][r] = (time.monotonic() - t0) * 1e3
    return times


def compare(
    fp32_path: str | Path,
    int8_path: str | Path,
    frames: np.ndarray,
    threshold: float,
    latency_runs: int = 200,
) -> QuantReport:
    """Action error, shield-decision agreement and single-thread latency of int8 against fp32."""
    fp32, int8 = onnx_session(fp32_path), onnx_session(int8_path)
    action_dim = fp32.get_inputs()[1].shape[1]
    noise = np.zeros((len(frames), action_dim), np.float32)
    ref, got = run_onnx(fp32, frames, noise), run_onnx(int8, frames, noise)
    act_err = np.abs(np.concatenate([ref["a_on"] - got["a_on"], ref["a_off"] - got["a_off"]]))
    agree = np.mean(
        [a == b for a, b in zip(_decisions(ref, threshold), _decisions(got, threshold), strict=True)]
    )
    for _ in range(10):  # warm-up
        run_onnx(fp32, frames[:1], noise[:1])
        run_onnx(int8, frames[:1], noise[:1])
    t32, t8 = _latency_ms([fp32, int8], frames, action_dim, latency_runs)
    return QuantReport(
        frames=len(frames),
        action_err_max=float(act_err.max()),
        action_err_mean=float(act_err.mean()),
        q_h_err_max=float(np.abs(ref["q_h"] - got["q_h"]).max()),
        shield_agreement=float(agree),
        fp32_p50_ms=float(np.percentile(t32, 50)),
        fp32_p99_ms=float(np.percentile(t32, 99)),
        int8_p50_ms=float(np.percentile(t8, 50)),
        int8_p99_ms=float(np.percentile(t8, 99)),
    )


def decide(report: QuantReport, min_agreement: float = MIN_AGREEMENT) -> tuple[str, str]:
    """("int8" | "fp32", reason): int8 only if shield agreement ≥ min_agreement and p50 not slower."""
    if report.shield_agreement < min_agreement:
        return "fp32", (
            f"int8 shield-decision agreement {report.shield_agreement:.2%} < {min_agreement:.0%} "
            f"(max action error {report.action_err_max:.3g})"
        )
    if report.int8_p50_ms > report.fp32_p50_ms:
        return "fp32", (
            f"int8 is slower here (p50 {report.int8_p50_ms:.3f} ms vs fp32 {report.fp32_p50_ms:.3f} ms)"
        )
    return "int8", (
        f"int8 agrees on {report.shield_agreement:.2%} of shield decisions (max action error "
        f"{report.action_err_max:.3g}) and is not slower (p50 {report.int8_p50_ms:.3f} ms vs "
        f"{report.fp32_p50_ms:.3f} ms)"
    )
