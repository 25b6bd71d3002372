"""ONNX export of the agent graph: contract, torch parity, signed bundles, the int8 gate."""

import json
import pickle
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from reachsafe.edge_runtime.inference import AgentSession
from reachsafe.protocol.bundle import load_bundle
from reachsafe.protocol.errors import HashMismatchError, SignatureError
from reachsafe.protocol.keys import generate_keys, load_public_key, load_trusted_keys
from reachsafe.trainer.export.int8 import QuantReport, decide
from reachsafe.trainer.export.onnx import (
    build_bundle,
    example_inputs,
    export_onnx,
    parity_error,
    torch_outputs,
)
from reachsafe.trainer.models import checkpoint_io
from reachsafe.trainer.models.networks import (
    GRAPH_OUTPUTS,
    Agent,
    AgentSpec,
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
)


@pytest.fixture(scope="module")
def image_agent():
    torch.manual_seed(0)
    return Agent(AgentSpec(obs_shape=(32, 32, 3), action_dim=2, latent_dim=16, hidden_dim=32, cnn_channels=8))


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    generate_keys(d)
    return d


def test_graph_contract_and_parity(image_agent, tmp_path):
    path = export_onnx(image_agent, tmp_path / "agent.onnx")
    model = onnx.load(str(path))
    assert [i.name for i in model.graph.input] == ["obs", "noise"]
    assert [o.name for o in model.graph.output] == list(GRAPH_OUTPUTS)
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    obs, noise = example_inputs(image_agent, batch=7, seed=3)
    assert parity_error(image_agent, path, obs, noise) <= 1e-4
    out = torch_outputs(image_agent, obs, noise)
    c = 3 + len(image_agent.spec.primitives)
    assert out["q_h"].shape == (7, c) and out["candidates"].shape == (7, c, 2)
    assert np.array_equal(out["candidates"][:, 0], out["a_on"]) and np.all(out["candidates"][:, 2] == 0)
    assert np.all(np.abs(out["a_on"]) <= 1)


def test_state_agent_exports_with_parity(tmp_path):
    agent = Agent(
        AgentSpec(obs_shape=(5,), action_dim=3, latent_dim=8, hidden_dim=16, primitives=((1, 0, 0),))
    )
    path = export_onnx(agent, tmp_path / "s.onnx")
    obs, noise = example_inputs(agent, batch=4)
    assert parity_error(agent, path, obs, noise) <= 1e-4


def test_checkpoint_round_trip(image_agent, tmp_path):
    save_checkpoint(tmp_path / "c.pt", image_agent, 42, {"config": {"shield_threshold": 0.5}})
    agent, ckpt = load_checkpoint(tmp_path / "c.pt")
    obs, noise = example_inputs(agent)
    a, b = torch_outputs(agent, obs, noise), torch_outputs(image_agent, obs, noise)
    assert ckpt["step"] == 42 and all(np.array_equal(a[k], b[k]) for k in GRAPH_OUTPUTS)


def test_bad_checkpoints_are_a_typed_error(image_agent, tmp_path):
    good = tmp_path / "good.pt"
    save_checkpoint(good, image_agent, step=3)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:1000])
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)  # a torch file, but not a reachsafe checkpoint
    for path, says in (
        (tmp_path / "missing.pt", "no checkpoint"),
        (truncated, "not a usable"),
        (foreign, "not a usable"),
    ):
        with pytest.raises(CheckpointError, match=says):
            load_checkpoint(path)
    assert load_checkpoint(good)[1]["step"] == 3


class _RunsCode:
    """A pickle payload that, if unpickled, would create ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_pickle_that_would_run_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "ran"
    hostile = tmp_path / "hostile.pt"
    hostile.write_bytes(pickle.dumps({"agent": _RunsCode(marker)}))
    with pytest.raises(CheckpointError, match="not a usable"):
        load_checkpoint(hostile)
    assert not marker.exists()


def test_checkpoint_bytes_keep_every_value_the_trainer_stores():
    gen = torch.Generator().manual_seed(3)
    rng_state = np.random.default_rng(5).bit_generator.state  # 128-bit ints
    tree = {
        "optimizer": {
            "state": {0: {"step": torch.tensor(7.0), "exp_avg": torch.randn(3, 2)}},
            "groups": [(0.9, 0.99)],
        },
        "generator": gen.get_state(),
        "numpy_rng": rng_state,
        "flags": torch.tensor([True, False]),
        "array": np.arange(6, dtype=np.int64).reshape(2, 3),
        "scalar": np.float64(0.25),
        "none": None,
    }
    back = checkpoint_io.loads(checkpoint_io.dumps(tree))
    assert back["optimizer"]["state"][0]["step"].item() == 7.0
    assert torch.equal(back["optimizer"]["state"][0]["exp_avg"], tree["optimizer"]["state"][0]["exp_avg"])
    assert back["optimizer"]["groups"] == [[0.9, 0.99]]  # tuples come back as lists
    assert torch.equal(back["generator"], tree["generator"]) and back["generator"].dtype == torch.uint8
    assert back["numpy_rng"] == rng_state
    assert back["flags"].dtype == torch.bool and back["flags"].tolist() == [True, False]
    assert isinstance(back["array"], np.ndarray) and back["array"].tolist() == [[0, 1, 2], [3, 4, 5]]
    assert back["scalar"] == 0.25 and back["none"] is None
    back["optimizer"]["state"][0]["exp_avg"].add_(1.0)  # loaded tensors are writable
    with pytest.raises(TypeError, match="cannot store"):
        checkpoint_io.dumps({"x": object()})


def test_signed_bundle_loads_in_the_runtime_and_tampering_is_refused(image_agent, keys, tmp_path):
    result = build_bundle(
        image_agent, tmp_path / "b", version=3, parent=2, signing_key=keys / "signing.key", training_step=7
    )
    bundle = load_bundle(
        result.path, load_trusted_keys(keys), expected_obs_shape=(32, 32, 3), expected_action_dim=2
    )
    m = bundle.manifest
    assert (m["version"], m["parent"], m["training_step"]) == (3, 2, 7)
    assert m["quantization"]["shipped"] == "fp32" and m["graph"]["candidates"][:3] == [
        "a_on",
        "a_off",
        "brake",
    ]
    session = AgentSession.from_bundle(bundle)
    obs, noise = example_inputs(image_agent, batch=2)
    ref = torch_outputs(image_agent, obs, noise)
    assert np.allclose(session.act(obs, noise).q_h, ref["q_h"], atol=1e-4)

    # re-exporting into the same directory replaces the bundle
    build_bundle(image_agent, tmp_path / "b", version=4, parent=3, signing_key=keys / "signing.key")
    assert load_bundle(tmp_path / "b", load_trusted_keys(keys)).version == 4

    onnx_path = tmp_path / "b" / "agent.onnx"
    data = bytearray(onnx_path.read_bytes())
    data[-10] ^= 0xFF
    onnx_path.write_bytes(bytes(data))
    with pytest.raises(HashMismatchError):
        load_bundle(tmp_path / "b", load_trusted_keys(keys))

    build_bundle(image_agent, tmp_path / "c", version=1, parent=None, signing_key=keys / "signing.key")
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_text())
    manifest["shield"]["threshold"] = 1e9  # disable the shield without re-signing
    (tmp_path / "c" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SignatureError):
        load_bundle(tmp_path / "c", load_trusted_keys(keys))

    other = tmp_path / "other_keys"
    generate_keys(other)
    build_bundle(image_agent, tmp_path / "d", version=1, parent=None, signing_key=other / "signing.key")
    with pytest.raises(SignatureError):
        load_bundle(tmp_path / "d", [load_public_key(keys / "signing.pub")])


def report(agreement, int8_ms, fp32_ms=1.0):
    return QuantReport(
        frames=100, action_err_max=0.01, action_err_mean=0.001, q_err_max=0.1, q_h_err_max=0.1,
        shield_agreement=agreement, fp32_p50_ms=fp32_ms, fp32_p99_ms=2 * fp32_ms, int8_p50_ms=int8_ms,
        int8_p99_ms=2 * int8_ms,
    )  # fmt: skip


@pytest.mark.parametrize(
    "agreement, int8_ms, shipped",
    [(1.0, 0.5, "int8"), (0.99, 1.0, "int8"), (0.989, 0.5, "fp32"), (1.0, 1.01, "fp32")],
)
def test_int8_gate(agreement, int8_ms, shipped):
    choice, reason = decide(report(agreement, int8_ms))
    assert choice == shipped and reason


def test_int8_export_reports_and_obeys_the_gate(image_agent, keys, tmp_path):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(64, 32, 32, 3), dtype=np.uint8)
    result = build_bundle(
        image_agent, tmp_path / "q", 1, None, keys / "signing.key", int8=True, calib_frames=frames
    )
    manifest = load_bundle(result.path, load_trusted_keys(keys)).manifest
    rep = manifest["quantization"]["report"]
    for key in (
        "shield_agreement",
        "action_err_max",
        "q_err_max",
        "fp32_p50_ms",
        "int8_p50_ms",
        "parity_max_abs_err",
    ):
        assert key in rep
    assert 0.0 <= rep["shield_agreement"] <= 1.0
    fields = {k: rep[k] for k in QuantReport.__dataclass_fields__}
    assert manifest["quantization"]["shipped"] == decide(QuantReport(**fields))[0] == result.shipped
    assert manifest["quantization"]["reason"] == result.reason
