"""int8 of the agent graph: which parts run in int8, the raw-frame input, parity with fp32, and the
gate that decides which graph a bundle ships."""

from collections import Counter

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from reachsafe.edge_runtime.inference import AgentOutput, AgentSession, SessionOptions
from reachsafe.edge_runtime.shield import shield
from reachsafe.protocol.bundle import load_bundle
from reachsafe.protocol.constants import POLICY_ONLINE
from reachsafe.protocol.keys import generate_keys, load_trusted_keys
from reachsafe.trainer.export import int8
from reachsafe.trainer.export.int8 import (
    FRAME_SCALE,
    SHIPPED_RECIPE,
    Int8Recipe,
    QuantizationError,
    QuantReport,
    held_out_split,
    quantize_int8,
)
from reachsafe.trainer.export.onnx import build_bundle, export_onnx
from reachsafe.trainer.models.networks import Agent, AgentSpec

SPEC = AgentSpec(obs_shape=(32, 32, 3), action_dim=2, latent_dim=16, hidden_dim=32, cnn_channels=8)
# 2 actors + 2 Q_r + 2 Q_c + n_qh Q_h members, each an MLP with two hidden layers
HIDDEN_LAYERS = 2 * (2 + 2 + 2 + SPEC.n_qh)


def _agent(fine_tuned: bool) -> Agent:
    """A fresh agent has π_on = π_off (as an offline bundle); ``fine_tuned`` moves π_on away."""
    torch.manual_seed(0)
    agent = Agent(SPEC).eval()
    with torch.no_grad():
        # a random critic barely depends on the action: make Q_h tell the candidates apart
        for member in agent.q_h.members:
            member[0].weight[:, -SPEC.action_dim :] *= 30
        if fine_tuned:
            for p in [*agent.encoder.parameters(), *agent.actor_on.parameters()]:
                p.mul_(1 + 0.1 * torch.randn_like(p))
    return agent


@pytest.fixture(scope="module")
def fp32_graph(tmp_path_factory):
    return export_onnx(_agent(fine_tuned=True), tmp_path_factory.mktemp("fp32") / "agent.onnx")


@pytest.fixture(scope="module")
def frames():
    """Smooth frames (colour blobs), nearer camera images than uniform noise."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:32, 0:32] / 32.0
    out = []
    for _ in range(48):
        cx, cy, r = rng.uniform(0.2, 0.8, 3)
        blob = ((xx - cx) ** 2 + (yy - cy) ** 2 < (r / 2) ** 2)[..., None]
        out.append(np.where(blob, rng.integers(0, 256, 3), rng.integers(0, 256, 3)))
    return np.asarray(out, np.uint8)


def _ops(path) -> Counter:
    return Counter(n.op_type for n in onnx.load(str(path)).graph.node)


def _float_weight_ops(path, op_type: str) -> int:
    """How many ``op_type`` nodes read a float32 constant weight (i.e. run in fp32)."""
    model = onnx.load(str(path))
    floats = {i.name for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
    return sum(n.op_type == op_type and n.input[1] in floats for n in model.graph.node)


def _outputs(path, frames):
    session = AgentSession.from_file(path, SessionOptions(providers=("cpu",), warmup_runs=1))
    return session, session.act(frames)


def test_shipped_graph_quantizes_the_heads_and_keeps_the_encoders_fp32(fp32_graph, frames, tmp_path):
    q = quantize_int8(fp32_graph, tmp_path / "int8.onnx", None, SPEC.action_dim)
    ops = _ops(q)
    assert ops["MatMulInteger"] == HIDDEN_LAYERS  # every hidden layer of every actor and critic
    assert _float_weight_ops(q, "Conv") == 8  # both encoders' convolutions stay fp32
    assert ops["QuantizeLinear"] == ops["QLinearConv"] == ops["ConvInteger"] == 0
    # the output layers (Q values, action mean and σ) keep their fp32 weights
    assert _float_weight_ops(q, "MatMul") + _float_weight_ops(q, "Gemm") == 2 + 2 + 2 + SPEC.n_qh + 2
    _, ref = _outputs(fp32_graph, frames)
    _, got = _outputs(q, frames)
    np.testing.assert_allclose(got.a_on, ref.a_on, atol=0.05)
    np.testing.assert_allclose(got.q_h, ref.q_h, atol=0.05)


def test_static_encoder_reads_the_raw_uint8_frame(fp32_graph, frames, tmp_path):
    recipe = Int8Recipe(encoder="static", heads="fp32", per_channel=True)
    q = quantize_int8(fp32_graph, tmp_path / "enc.onnx", frames, SPEC.action_dim, recipe)
    model = onnx.load(str(q))
    ops = _ops(q)
    assert ops["Cast"] == 0  # no float conversion of the frame
    (transpose,) = [n for n in model.graph.node if "obs" in n.input]
    assert transpose.op_type == "Transpose"
    dequant = [n for n in model.graph.node if transpose.output[0] in n.input]
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    assert dequant and all(n.op_type == "DequantizeLinear" for n in dequant)
    for n in dequant:
        assert np.isclose(inits[n.input[1]], FRAME_SCALE) and inits[n.input[2]] == 0
    assert _float_weight_ops(q, "Conv") == 0 and ops["MatMulInteger"] == 0
    _, ref = _outputs(fp32_graph, frames)
    _, got = _outputs(q, frames)
    np.testing.assert_allclose(got.a_off, ref.a_off, atol=0.1)


def test_qoperator_format_feeds_the_frame_to_qlinearconv(fp32_graph, frames, tmp_path):
    recipe = Int8Recipe(encoder="static", heads="fp32", quant_format="qoperator")
    q = quantize_int8(fp32_graph, tmp_path / "qop.onnx", frames, SPEC.action_dim, recipe)
    model = onnx.load(str(q))
    (transpose,) = [n for n in model.graph.node if "obs" in n.input]
    assert {n.op_type for n in model.graph.node if transpose.output[0] in n.input} == {"QLinearConv"}
    assert _ops(q)["QLinearConv"] == 8


def test_equal_branches_share_their_int8_constants(frames, tmp_path):
    """An offline agent's π_on and π_off are equal: the int8 graph must not hold (and run) two copies."""
    fp32 = export_onnx(_agent(fine_tuned=False), tmp_path / "fp32.onnx")
    for name, recipe in {
        "heads": SHIPPED_RECIPE,
        "all": Int8Recipe(encoder="static", heads="static"),
    }.items():
        model = onnx.load(
            str(quantize_int8(fp32, tmp_path / f"{name}.onnx", frames, SPEC.action_dim, recipe))
        )
        blobs = [numpy_helper.to_array(i) for i in model.graph.initializer]
        keys = [(a.dtype.str, a.shape, a.tobytes()) for a in blobs]
        assert len(set(keys)) == len(keys), name
        used = {i for n in model.graph.node for i in n.input}
        assert {i.name for i in model.graph.initializer} <= used, name


def test_int8_runs_in_the_robot_session_with_the_same_shield_choice(fp32_graph, frames, tmp_path):
    """With a threshold below every proposal the shield replaces each one by the lowest-Q_h
    candidate; int8 in the robot's session must pick the candidate fp32 picks."""
    q = quantize_int8(fp32_graph, tmp_path / "int8.onnx", None, SPEC.action_dim)
    _, ref = _outputs(fp32_graph, frames)
    session, got = _outputs(q, frames)
    assert session.num_candidates == ref.q_h.shape[-1]
    threshold = float(ref.q_h[:, :2].min()) - 0.05
    same = []
    for i in range(len(frames)):
        want = shield(AgentOutput(**{k: v[i] for k, v in vars(ref).items()}), POLICY_ONLINE, threshold)
        have = shield(AgentOutput(**{k: v[i] for k, v in vars(got).items()}), POLICY_ONLINE, threshold)
        assert want.shielded and have.shielded
        same.append(have.candidate == want.candidate)
    assert np.mean(same) >= 0.95


def test_recipes_are_validated_and_static_parts_need_frames(fp32_graph, tmp_path):
    with pytest.raises(ValueError, match="quantizes nothing"):
        Int8Recipe(encoder="fp32", heads="fp32")
    with pytest.raises(ValueError, match="heads"):
        Int8Recipe(heads="int4")  # type: ignore[arg-type]
    with pytest.raises(QuantizationError, match="calibration frames"):
        quantize_int8(fp32_graph, tmp_path / "x.onnx", None, SPEC.action_dim, Int8Recipe(encoder="static"))
    assert "heads dynamic int8" in SHIPPED_RECIPE.describe()


def test_held_out_split_is_disjoint_and_spread():
    frames = np.arange(10)[:, None]
    calib, held = held_out_split(frames)
    assert not set(calib.ravel()) & set(held.ravel())
    assert len(calib) == len(held) == 5 and held.min() < 2 and held.max() > 7
    with pytest.raises(QuantizationError):
        held_out_split(frames[:1])


def _fake_report(agreement: float, int8_ms: float) -> QuantReport:
    return QuantReport(
        frames=8, action_err_max=0.01, action_err_mean=0.001, q_err_max=0.01, q_h_err_max=0.01,
        shield_agreement=agreement, fp32_p50_ms=1.0, fp32_p99_ms=2.0, int8_p50_ms=int8_ms, int8_p99_ms=2.0,
    )  # fmt: skip


@pytest.mark.parametrize(
    "agreement, int8_ms, shipped", [(1.0, 0.5, "int8"), (0.98, 0.5, "fp32"), (1.0, 1.5, "fp32")]
)
def test_bundle_ships_the_int8_graph_only_through_the_gate(
    frames, tmp_path, monkeypatch, agreement, int8_ms, shipped
):
    seen: list[int] = []

    def fake_compare(fp32_path, int8_path, held_out, threshold):
        seen.append(len(held_out))
        return _fake_report(agreement, int8_ms)

    monkeypatch.setattr(int8, "compare", fake_compare)
    generate_keys(tmp_path / "keys")
    result = build_bundle(
        _agent(fine_tuned=True), tmp_path / "b", 1, None, tmp_path / "keys" / "signing.key",
        int8=True, calib_frames=frames,
    )  # fmt: skip
    bundle = load_bundle(result.path, load_trusted_keys(tmp_path / "keys"))
    graph = onnx.load_from_string(bundle.files["agent.onnx"])
    assert result.shipped == bundle.manifest["quantization"]["shipped"] == shipped
    assert any(n.op_type == "MatMulInteger" for n in graph.graph.node) == (shipped == "int8")
    assert seen == [len(frames) // 2]  # judged on the half that did not calibrate
    assert SHIPPED_RECIPE.describe() in result.reason
