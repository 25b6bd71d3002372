"""AgentSession, policy-expansion selection and the reachability shield on real onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest

from reachsafe.edge_runtime.inference import (
    AgentOutput,
    AgentSession,
    ContractError,
    InferenceError,
    NonFiniteOutputError,
    SessionOptions,
    available_providers,
    choose_providers,
    engine_cache_key,
)
from reachsafe.edge_runtime.select import select, selection_probabilities
from reachsafe.edge_runtime.shield import shield
from reachsafe.protocol.constants import POLICY_OFFLINE, POLICY_ONLINE
from tests.fixtures.edge_support import make_agent_onnx

CPU = SessionOptions(providers=("cpu",), warmup_runs=1)


def test_session_runs_single_frames_and_batches() -> None:
    s = AgentSession(make_agent_onnx(), CPU)
    assert s.obs_shape == (16, 16, 3) and s.action_dim == 2 and s.num_candidates == 5
    assert s.providers[-1] == "CPUExecutionProvider"
    one = s.act(np.full((16, 16, 3), 100, np.uint8))
    assert one.a_on.shape == (2,) and one.q_h.shape == (5,) and one.candidates.shape == (5, 2)
    batch = s.act(np.full((3, 16, 16, 3), 100, np.uint8), np.zeros((3, 2), np.float32))
    assert batch.a_on.shape == (3, 2)
    np.testing.assert_allclose(batch.a_on[0], one.a_on, rtol=1e-5)
    # noise moves the online action only, and the brake candidate is all zeros
    noisy = s.act(np.full((16, 16, 3), 100, np.uint8), np.ones(2, np.float32))
    assert not np.allclose(noisy.a_on, one.a_on) and np.allclose(noisy.a_off, one.a_off)
    np.testing.assert_array_equal(one.candidates[2], [0.0, 0.0])


def test_nan_output_is_a_typed_error() -> None:
    with pytest.raises(NonFiniteOutputError, match="NaN"):  # caught by the warm-up already
        AgentSession(make_agent_onnx(nan_above=-1.0), CPU)
    s = AgentSession(make_agent_onnx(nan_above=0.5), CPU)
    s.act(np.full((16, 16, 3), 100, np.uint8))
    with pytest.raises(NonFiniteOutputError, match="a_on"):
        s.act(np.full((16, 16, 3), 200, np.uint8))


def test_wrong_inputs_are_rejected() -> None:
    s = AgentSession(make_agent_onnx(), CPU)
    with pytest.raises(InferenceError, match="uint8"):
        s.act(np.zeros((16, 16, 3), np.float32))
    with pytest.raises(InferenceError, match=r"\(16, 16, 3\)"):
        s.act(np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ContractError):
        AgentSession(b"not an onnx graph", CPU)


def test_provider_choice_always_ends_with_cpu() -> None:
    assert available_providers()[-1] == "CPUExecutionProvider"
    assert choose_providers(["cuda", "cpu", "tensorrt"])[-1] == "CPUExecutionProvider"
    with pytest.raises(ValueError, match="unknown execution provider"):
        choose_providers(["warp-drive"])
    assert len({engine_cache_key(b"a"), engine_cache_key(b"b"), engine_cache_key(b"a", fp16=True)}) == 3


def _out(q_r, q_c, q_h=(-1.0, -1.0, -1.0, -1.0)) -> AgentOutput:
    c = len(q_h)
    cands = np.arange(c * 2, dtype=np.float32).reshape(c, 2) / 10
    return AgentOutput(
        cands[0],
        cands[1],
        np.array(q_r, np.float32),
        np.array(q_c, np.float32),
        np.array(q_h, np.float32),
        cands,
    )


def test_selection_probabilities_follow_the_boltzmann_rule() -> None:
    p = selection_probabilities(np.array([1.0, 0.0]), np.array([0.0, 0.0]), kappa_t=2.0, kappa_c=0.5)
    np.testing.assert_allclose(p[0], np.exp(2.0) / (np.exp(2.0) + 1.0))
    # cost counts against a policy at its own action: equal Q_r, higher Q_c for online
    p = selection_probabilities(np.array([1.0, 1.0]), np.array([4.0, 0.0]), kappa_t=1.0, kappa_c=0.5)
    np.testing.assert_allclose(p, [1 / (1 + np.exp(2.0)), np.exp(2.0) / (1 + np.exp(2.0))])
    # large values stay finite
    assert np.isfinite(selection_probabilities(np.array([1e4, -1e4]), np.zeros(2), 10.0, 0.1)).all()


def test_explore_samples_with_the_probabilities_and_eval_is_greedy() -> None:
    out = _out(q_r=(0.2, 0.0), q_c=(0.0, 0.0))
    rng = np.random.default_rng(0)
    picks = [select(out, "explore", 5.0, 0.1, rng).policy for _ in range(4000)]
    p_on = np.exp(1.0) / (np.exp(1.0) + 1)
    assert abs(picks.count(POLICY_ONLINE) / 4000 - p_on) < 0.03
    assert all(select(out, "eval", 5.0, 0.1, rng).policy == POLICY_ONLINE for _ in range(50))
    worse = _out(q_r=(0.2, 0.0), q_c=(10.0, 0.0))
    sel = select(worse, "eval", 5.0, 0.1, rng)
    assert sel.policy == POLICY_OFFLINE
    np.testing.assert_array_equal(sel.action, worse.a_off)


def test_shield_keeps_safe_actions_and_replaces_unsafe_ones() -> None:
    safe = _out((0, 0), (0, 0), q_h=(-0.5, 0.3, -2.0, -1.0))
    d = shield(safe, POLICY_ONLINE, threshold=0.0)
    assert not d.shielded and d.candidate == 0
    np.testing.assert_array_equal(d.action, safe.candidates[0])
    d = shield(safe, POLICY_OFFLINE, threshold=0.0)
    assert d.shielded and d.candidate == 2 and d.q_h_proposed == pytest.approx(0.3)
    np.testing.assert_array_equal(d.action, safe.candidates[2])
    # a higher (overridden) threshold lets it through
    assert not shield(safe, POLICY_OFFLINE, threshold=0.5).shielded


def test_shield_defers_to_the_proposal_while_in_violation() -> None:
    """In a hazard Q_h ≈ c_scale for every action: the argmin is noise, so the proposal is kept."""
    inside = _out((0, 0), (0, 0), q_h=(24.5, 24.9, 24.2, 23.8))
    d = shield(inside, POLICY_OFFLINE, threshold=0.9, in_violation=True)
    assert not d.shielded and d.deferred and d.candidate == 1
    np.testing.assert_array_equal(d.action, inside.candidates[1])
    d = shield(inside, POLICY_OFFLINE, threshold=0.9)
    assert d.shielded and not d.deferred and d.candidate == 3
    # a safe proposal in violation is simply kept: nothing was deferred
    assert not shield(inside, POLICY_OFFLINE, threshold=30.0, in_violation=True).deferred


def test_shield_on_a_real_graph_picks_the_lowest_q_h_candidate() -> None:
    s = AgentSession(make_agent_onnx(q_h_bias=(5.0, 5.0, 1.0, 0.2, 3.0)), CPU)
    out = s.act(np.zeros((16, 16, 3), np.uint8))
    d = shield(out, POLICY_ONLINE, threshold=0.0)
    assert d.shielded and d.candidate == int(np.argmin(out.q_h)) == 3
