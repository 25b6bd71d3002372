"""int8 of the agent graph where it pays, and the fp32-vs-int8 gate (docs/architecture.md, "Bundles").

What runs in int8 is an :class:`Int8Recipe`. The shipped one, :data:`SHIPPED_RECIPE`, quantizes the
hidden layers of the actor and critic heads dynamically (int8 weights; each call's activations are
quantized on the fly, so there is no calibrated range to get wrong) and keeps the convolutional
encoders fp32 (why this split: docs/results/int8.md). int8 is shipped only if its shield decisions agree with
fp32 on ≥ 99% of held-out frames and it is not slower on this machine; the report says what was
measured.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from reachsafe.edge_runtime.inference import AgentOutput
from reachsafe.edge_runtime.shield import shield
from reachsafe.protocol.constants import POLICY_OFFLINE, POLICY_ONLINE
from reachsafe.trainer.export.onnx import onnx_session, run_onnx

logger = logging.getLogger(__name__)

MIN_AGREEMENT = 0.99
#: frames a session runs back to back per turn when latencies are compared
TURN_FRAMES = 25
#: the graph's ÷255 of the camera frame: a uint8 frame is already int8 data with this scale, zero point 0
FRAME_SCALE = 1.0 / 255.0

Part = Literal["fp32", "static", "dynamic"]


class QuantizationError(Exception):
    """int8 quantization could not be done (e.g. no calibration frames)."""


@dataclass(frozen=True)
class Int8Recipe:
    """Which parts of the agent graph run in int8, and how.

    ``encoder``: "fp32" or "static" (the convolutions, calibrated on dataset frames; the first one
    reads the raw uint8 frame as its quantized input, with no float conversion before it).
    ``heads`` (the hidden layers of the actors and critics): "fp32", "static" (calibrated) or
    "dynamic" (activations quantized per call). ``quant_format`` ("qdq" or "qoperator") applies to
    the static parts, ``per_channel`` to every int8 weight. Static activations are uint8 and weights
    int8 (u8s8): onnxruntime's fast x86 path, and what ARM's dot-product kernels take too.
    """

    encoder: Literal["fp32", "static"] = "fp32"
    heads: Part = "dynamic"
    quant_format: Literal["qdq", "qoperator"] = "qdq"
    per_channel: bool = False

    def __post_init__(self) -> None:
        if self.encoder not in ("fp32", "static"):
            raise ValueError(f"encoder must be 'fp32' or 'static', got {self.encoder!r}")
        if self.heads not in ("fp32", "static", "dynamic"):
            raise ValueError(f"heads must be 'fp32', 'static' or 'dynamic', got {self.heads!r}")
        if self.quant_format not in ("qdq", "qoperator"):
            raise ValueError(f"quant_format must be 'qdq' or 'qoperator', got {self.quant_format!r}")
        if self.encoder == "fp32" and self.heads == "fp32":
            raise ValueError("a recipe with every part fp32 quantizes nothing")

    @property
    def is_static(self) -> bool:
        return "static" in (self.encoder, self.heads)

    def describe(self) -> str:
        """E.g. "encoder fp32, heads dynamic int8, per-tensor"."""

        def part(name: str, how: str) -> str:
            if how == "fp32":
                return f"{name} fp32"
            return f"{name} {how} int8" + (f" ({self.quant_format})" if how == "static" else "")

        granularity = "per-channel" if self.per_channel else "per-tensor"
        return f"{part('encoder', self.encoder)}, {part('heads', self.heads)}, {granularity}"


#: the recipe export ships (why: docs/results/int8.md)
SHIPPED_RECIPE = Int8Recipe()


@dataclass(frozen=True)
class QuantReport:
    frames: int
    action_err_max: float
    action_err_mean: float
    q_err_max: float
    q_h_err_max: float
    shield_agreement: float
    fp32_p50_ms: float
    fp32_p99_ms: float
    int8_p50_ms: float
    int8_p99_ms: float

    def to_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}


def held_out_split(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(calibration, held-out) halves, alternating so both spread over the dataset the frames came
    from: the parity gate judges int8 on frames its calibration did not see."""
    if frames is None or len(frames) < 2:
        raise QuantizationError(
            "int8 needs at least 2 frames drawn from the training dataset (half calibrate, half check parity)"
        )
    return frames[0::2], frames[1::2]


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
    fp32_path: str | Path,
    int8_path: str | Path,
    calib_frames: np.ndarray | None,
    action_dim: int,
    recipe: Int8Recipe = SHIPPED_RECIPE,
) -> Path:
    """Write the int8 graph of ``recipe``; ``calib_frames`` (dataset frames) calibrate its static parts."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = _inline_constant_identities(onnx.load(str(fp32_path)))
    if recipe.heads == "dynamic":
        model = _gemm_as_matmul(model, _hidden_layers(model, ("Gemm",)))
    if recipe.is_static:
        if calib_frames is None or len(calib_frames) == 0:
            raise QuantizationError(
                "int8 needs calibration frames; pass frames drawn from the training dataset"
            )
        model = _quantize_static(model, Path(int8_path), calib_frames, action_dim, recipe)
    if recipe.heads == "dynamic":
        quantize_dynamic(
            model,
            str(int8_path),
            op_types_to_quantize=["MatMul"],
            nodes_to_quantize=_hidden_layers(model, ("MatMul",)),
            per_channel=recipe.per_channel,
            weight_type=QuantType.QInt8,
        )
        model = onnx.load(str(int8_path))
    onnx.save(_tidy_initializers(model), str(int8_path))
    logger.info("int8 graph (%s) written to %s", recipe.describe(), int8_path)
    return Path(int8_path)


def _quantize_static(model, out: Path, frames: np.ndarray, action_dim: int, recipe: Int8Recipe):
    """Calibrated static int8 of the recipe's static parts (each matrix product with its ReLU, so the
    ReLU folds into the int8 output range); ``out`` is scratch space."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    nodes: list[str] = []
    if recipe.encoder == "static":
        nodes += _with_relus(model, [n.name for n in model.graph.node if n.op_type == "Conv"])
    if recipe.heads == "static":
        nodes += _with_relus(model, _hidden_layers(model, ("MatMul", "Gemm")))
    quantize_static(
        model,
        str(out),
        _CalibrationReader(frames, action_dim),
        quant_format=QuantFormat.QDQ if recipe.quant_format == "qdq" else QuantFormat.QOperator,
        per_channel=recipe.per_channel,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        op_types_to_quantize=sorted({_op(model, n) for n in nodes}),
        nodes_to_quantize=nodes,
        calibrate_method=CalibrationMethod.MinMax,
    )
    quantized = onnx.load(str(out))
    if recipe.encoder == "static":
        _feed_raw_frame(quantized)
    return quantized


def _op(model, name: str) -> str:
    return next(n.op_type for n in model.graph.node if n.name == name)


def _consumers(model, tensor: str) -> list:
    return [n for n in model.graph.node if tensor in n.input]


def _with_relus(model, names: Iterable[str]) -> list[str]:
    """``names`` and the ReLU each one's output (after a bias Add) feeds."""
    out = []
    by_name = {n.name: n for n in model.graph.node}
    for name in names:
        out.append(name)
        relu = _relu_after(model, by_name[name])
        if relu is not None:
            out.append(relu.name)
    return out


def _relu_after(model, node):
    """The ReLU fed by ``node`` directly or through one Add (a bias), else None."""
    nexts = _consumers(model, node.output[0])
    if len(nexts) == 1 and nexts[0].op_type == "Add":
        nexts = _consumers(model, nexts[0].output[0])
    return nexts[0] if len(nexts) == 1 and nexts[0].op_type == "Relu" else None


def _hidden_layers(model, op_types: tuple[str, ...]) -> list[str]:
    """Matrix products with a constant weight whose output feeds a ReLU: the hidden layers of the
    actor and critic MLPs. The encoders' linear layer (into LayerNorm) and the 1- and 2A-wide output
    layers stay fp32: there the quantize step costs more than the arithmetic it saves."""
    weights = {i.name for i in model.graph.initializer}
    return [
        n.name
        for n in model.graph.node
        if n.op_type in op_types and n.input[1] in weights and _relu_after(model, n) is not None
    ]


def _inline_constant_identities(model):
    """Drop ``Identity(initializer)`` nodes: the exporter writes them where two modules hold equal
    weights (π_on = π_off after offline training); referencing the initializer itself lets the
    quantizers see a constant weight and keeps the two branches sharing one int8 copy."""
    g = model.graph
    weights = {i.name for i in g.initializer}
    outputs = {o.name for o in g.output}
    alias = {
        n.output[0]: n.input[0]
        for n in g.node
        if n.op_type == "Identity" and n.input[0] in weights and n.output[0] not in outputs
    }
    keep = [n for n in g.node if not (n.op_type == "Identity" and n.output[0] in alias)]
    for n in keep:
        n.input[:] = [alias.get(i, i) for i in n.input]
    del g.node[:]
    g.node.extend(keep)
    return model


def _gemm_as_matmul(model, names: list[str]):
    """Gemm(x, W, b) with transB=1 (torch's Linear) → MatMul(x, Wᵀ) + Add(b): onnxruntime's dynamic
    quantizer handles MatMul only, and fuses the pair back into one int8 node with the bias. Other
    Gemm forms stay as they are (and fp32)."""
    import onnx
    from onnx import helper, numpy_helper

    g = model.graph
    inits = {i.name: i for i in g.initializer}
    transposed: dict[str, str] = {}
    nodes = []
    for n in g.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        linear = attrs.get("transB") == 1 and not attrs.get("transA") and len(n.input) == 3
        if (
            n.name not in names
            or not linear
            or attrs.get("alpha", 1.0) != 1.0
            or attrs.get("beta", 1.0) != 1.0
        ):
            nodes.append(n)
            continue
        w = n.input[1]
        if w not in transposed:  # a weight shared by equal branches stays shared
            transposed[w] = f"{w}_kn"
            kn = np.ascontiguousarray(numpy_helper.to_array(inits[w]).T)
            g.initializer.append(numpy_helper.from_array(kn, transposed[w]))
        product = f"{n.output[0]}_matmul"
        nodes.append(helper.make_node("MatMul", [n.input[0], transposed[w]], [product], name=n.name))
        nodes.append(helper.make_node("Add", [product, n.input[2]], [n.output[0]], name=f"{n.name}_bias"))
    del g.node[:]
    g.node.extend(nodes)
    onnx.checker.check_model(model)
    return model


def _feed_raw_frame(model) -> None:
    """Feed the camera's uint8 frame straight to the first quantized convolutions.

    The exported graph computes Cast(float) → Transpose → ÷255 → QuantizeLinear; a uint8 frame
    already is that quantized tensor with scale 1/255 and zero point 0, so the chain becomes a
    uint8 Transpose (which onnxruntime's NHWC int8 convolution then cancels).
    """
    from onnx import numpy_helper

    g = model.graph
    inits = {i.name: i for i in g.initializer}
    cast = next((n for n in g.node if n.op_type == "Cast" and n.input[0] == "obs"), None)
    chain = [cast]
    for op in ("Transpose", "Div"):
        nxt = _consumers(model, chain[-1].output[0]) if chain[-1] is not None else []
        chain.append(nxt[0] if len(nxt) == 1 and nxt[0].op_type == op else None)
    if None in chain:
        raise QuantizationError(
            "the graph does not start with Cast → Transpose → ÷255; cannot feed the raw frame"
        )
    cast, transpose, div = chain
    divisor = _constant(model, div.input[1])
    quants = _consumers(model, div.output[0])
    if divisor is None or not np.isclose(float(divisor), 255.0) or not quants:
        raise QuantizationError("the frame's ÷255 is missing or feeds no quantized convolution")
    if any(q.op_type != "QuantizeLinear" for q in quants):
        raise QuantizationError("the scaled frame feeds a float node too; cannot feed the raw frame")
    for q in quants:
        inits[q.input[1]].CopyFrom(numpy_helper.from_array(np.array(FRAME_SCALE, np.float32), q.input[1]))
        inits[q.input[2]].CopyFrom(numpy_helper.from_array(np.array(0, np.uint8), q.input[2]))
        for user in _consumers(model, q.output[0]):
            user.input[:] = [transpose.output[0] if i == q.output[0] else i for i in user.input]
    transpose.input[0] = "obs"
    for n in (cast, div, *quants):
        g.node.remove(n)
    stale = [v for v in g.value_info if v.name == transpose.output[0]]
    for v in stale:
        g.value_info.remove(v)


def _constant(model, name: str) -> np.ndarray | None:
    """The value of ``name`` if an initializer or a Constant node holds it, else None."""
    from onnx import numpy_helper

    for init in model.graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    for n in model.graph.node:
        if n.op_type == "Constant" and n.output[0] == name and n.attribute[0].name == "value":
            return numpy_helper.to_array(n.attribute[0].t)
    return None


def _tidy_initializers(model):
    """Make equal constants one initializer and drop unused ones. Quantization writes a scale and
    zero point per tensor; where π_on and π_off are equal (offline bundles) the two branches then
    read the same constants, and onnxruntime computes them once, as it does for the fp32 graph."""
    from onnx import numpy_helper

    g = model.graph
    first: dict[tuple[int, tuple[int, ...], bytes], str] = {}
    rename: dict[str, str] = {}
    for init in g.initializer:
        key = (init.data_type, tuple(init.dims), numpy_helper.to_array(init).tobytes())
        rename[init.name] = first.setdefault(key, init.name)
    for n in g.node:
        n.input[:] = [rename.get(i, i) for i in n.input]
    used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
    keep = [i for i in g.initializer if rename[i.name] == i.name and i.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)
    return model


def _decisions(out: dict[str, np.ndarray], threshold: float) -> list[tuple[bool, int]]:
    decisions = []
    for i in range(out["q_h"].shape[0]):
        one = AgentOutput(**{k: v[i] for k, v in out.items()})
        for policy in (POLICY_ONLINE, POLICY_OFFLINE):
            d = shield(one, policy, threshold)
            decisions.append((d.shielded, d.candidate))
    return decisions


def _latency_ms(sessions: list, frames: np.ndarray, action_dim: int, runs: int) -> list[np.ndarray]:
    """Single-frame latency of each session. The sessions take turns of TURN_FRAMES frames: within a
    turn a graph runs back to back with its weights in cache, as on the robot, and the turns
    alternate so that load changes on a shared machine hit every session alike."""
    noise = np.zeros((1, action_dim), np.float32)
    times = [np.empty(runs) for _ in sessions]
    for start in range(0, runs, TURN_FRAMES):
        for s, sess in enumerate(sessions):
            for r in range(start, min(start + TURN_FRAMES, runs)):
                frame = np.ascontiguousarray(frames[r % len(frames)][None])
                t0 = time.perf_counter()
                run_onnx(sess, frame, noise)
                times[s][r] = (time.perf_counter() - t0) * 1e3
    return times


def compare(
    fp32_path: str | Path,
    int8_path: str | Path,
    frames: np.ndarray,
    threshold: float,
    latency_runs: int = 200,
) -> QuantReport:
    """Action and Q errors, shield-decision agreement and single-thread latency of int8 against fp32
    on ``frames`` (held out from calibration)."""
    fp32, int8 = onnx_session(fp32_path), onnx_session(int8_path)
    action_dim = fp32.get_inputs()[1].shape[1]
    noise = np.zeros((len(frames), action_dim), np.float32)
    ref, got = run_onnx(fp32, frames, noise), run_onnx(int8, frames, noise)
    act_err = np.abs(np.concatenate([ref["a_on"] - got["a_on"], ref["a_off"] - got["a_off"]]))
    q_err = np.abs(np.concatenate([ref["q_r"] - got["q_r"], ref["q_c"] - got["q_c"]]))
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
        q_err_max=float(q_err.max()),
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
