"""The shield's intervention budget adapted to the measured episode cost (reachsafe.trainer.algos.shield.budget)."""

from __future__ import annotations

import math

import pytest

from reachsafe.protocol.config import ConfigError
from reachsafe.trainer.algos.online.config import OnlineConfig, OnlineShieldConfig
from reachsafe.trainer.algos.online.lagrange import LagrangeConfig
from reachsafe.trainer.algos.online.learner import OnlineLearner
from reachsafe.trainer.algos.shield.budget import ShieldBudget
from reachsafe.trainer.models.networks import Agent, AgentSpec


def test_the_budget_shrinks_under_the_cost_limit_and_grows_over_it() -> None:
    b = ShieldBudget(0.1, rate=0.2, low=0.01, high=0.5)
    assert b.update([2.0, 4.0], cost_limit=10.0) == pytest.approx(0.1 * math.exp(0.2 * (3.0 - 10.0) / 10.0))
    under = b.value
    assert b.update([30.0], cost_limit=10.0) == pytest.approx(under * math.exp(0.2 * 2.0))
    assert b.value > under


def test_the_budget_respects_its_clamps_and_a_zero_rate_or_empty_window_keeps_it() -> None:
    b = ShieldBudget(0.1, rate=5.0, low=0.02, high=0.3)
    assert b.update([0.0], cost_limit=10.0) == 0.02  # exp(−5) · 0.1 < 0.02
    assert b.update([1000.0], cost_limit=10.0) == 0.3
    assert b.update([], cost_limit=10.0) == 0.3
    fixed = ShieldBudget(0.1, rate=0.0, low=0.01, high=0.5)
    assert fixed.update([0.0], cost_limit=10.0) == 0.1 and fixed.update([99.0], 10.0) == 0.1
    zero_limit = ShieldBudget(0.1, rate=1.0, low=0.01, high=0.5)  # d = 0: the excess is in cost units
    assert zero_limit.update([0.5], cost_limit=0.0) == pytest.approx(0.1 * math.exp(0.5))
    with pytest.raises(ValueError, match="budget_min"):
        ShieldBudget(0.6, rate=0.1, low=0.01, high=0.5)


def test_the_config_rejects_an_inconsistent_budget_and_a_negative_rate() -> None:
    with pytest.raises(ConfigError, match="budget_min"):
        OnlineShieldConfig(intervention_budget=0.005)
    with pytest.raises(ConfigError, match="budget_rate"):
        OnlineShieldConfig(budget_rate=-1.0)
    OnlineShieldConfig(intervention_budget=None, budget_min=0.9)  # no budget: unused


def _learner(**kw) -> OnlineLearner:
    cfg = OnlineConfig(lagrange=LagrangeConfig(cost_limit=10.0), shield=OnlineShieldConfig(**kw))
    return OnlineLearner(Agent(AgentSpec(obs_shape=(4,), action_dim=2, world_model=True)), cfg)


def test_each_finished_episode_moves_lambda_and_the_budget_and_a_checkpoint_keeps_both() -> None:
    learner = _learner(budget_rate=0.2)
    for cost in (0.0, 0.0, 40.0):
        lam = learner.observe_episode(cost)
    assert lam == learner.lam and list(learner.lagrange.recent) == [0.0, 0.0, 40.0]
    expected = 0.1
    for window in ([0.0], [0.0, 0.0], [0.0, 0.0, 40.0]):
        expected *= math.exp(0.2 * (sum(window) / len(window) - 10.0) / 10.0)
    assert learner.shield_budget.value == pytest.approx(expected)
    assert learner.metrics()["online/shield_budget"] == pytest.approx(expected)
    restored = _learner(budget_rate=0.2)
    restored.load_state_dict(learner.state_dict())
    assert restored.shield_budget.value == pytest.approx(expected)
    older = learner.state_dict()
    del older["shield_budget"]  # a checkpoint from before the adaptive budget: the configured start
    restored = _learner(budget_rate=0.2)
    restored.load_state_dict(older)
    assert restored.shield_budget.value == 0.1
    assert _learner(intervention_budget=None).shield_budget is None
