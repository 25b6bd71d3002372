"""GPU execution providers (run on a machine with CUDA / TensorRT; skipped with a reason elsewhere)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from reachsafe.edge_runtime.inference import AgentSession, SessionOptions, engine_cache_key
from tests.fixtures.edge_support import make_agent_onnx

pytestmark = pytest.mark.gpu
INSTALLED = set(ort.get_available_providers())


def _reference(model: bytes):
    return AgentSession(model, SessionOptions(providers=("cpu",))).act(np.full((16, 16, 3), 90, np.uint8))


@pytest.mark.skipif(
    "CUDAExecutionProvider" not in INSTALLED, reason="onnxruntime has no CUDA execution provider here"
)
def test_cuda_provider_is_chosen_and_agrees_with_cpu() -> None:
    model = make_agent_onnx()
    session = AgentSession(model, SessionOptions(providers=("cuda",)))
    assert session.providers[0] == "CUDAExecutionProvider" and session.providers[-1] == "CPUExecutionProvider"
    out = session.act(np.full((16, 16, 3), 90, np.uint8))
    np.testing.assert_allclose(out.a_on, _reference(model).a_on, atol=1e-4)


@pytest.mark.skipif(
    "TensorrtExecutionProvider" not in INSTALLED, reason="onnxruntime has no TensorRT execution provider here"
)
def test_tensorrt_engine_is_cached_per_model_and_reused(tmp_path) -> None:
    model = make_agent_onnx()
    opts = SessionOptions(providers=("tensorrt",), engine_cache_dir=tmp_path)
    first = AgentSession(model, opts)
    assert first.providers[0] == "TensorrtExecutionProvider"
    cache = tmp_path / engine_cache_key(model)
    assert any(cache.iterdir()), "no engine written to the cache"
    second = AgentSession(model, opts)
    assert second.warmup_ms < first.warmup_ms  # the engine is loaded, not rebuilt
    out = second.act(np.full((16, 16, 3), 90, np.uint8))
    np.testing.assert_allclose(out.a_on, _reference(model).a_on, atol=1e-4)
    assert engine_cache_key(make_agent_onnx(seed=1)) != engine_cache_key(model)
