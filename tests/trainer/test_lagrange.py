"""The λ controller's modes: pid and marvel against sequences from OmniSafe's and Marvel's own code
(tests/fixtures/lagrangian_references.json, scripts/lagrangian_references.py), bounded against values
worked out by hand; the old mode name and old checkpoints still load."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from reachsafe.trainer.algos.online.config import OnlineConfig
from reachsafe.trainer.algos.online.lagrange import LagrangeConfig, PIDLagrangian

FIXTURES = Path(__file__).parents[1] / "fixtures"
REFERENCES = json.loads((FIXTURES / "lagrangian_references.json").read_text())


def pid(**kw: object) -> PIDLagrangian:
    base = dict(
        mode="pid", cost_limit=10.0, kp=1.0, ki=0.5, kd=2.0, p_ema_alpha=0.5, d_ema_alpha=0.5, d_delay=2
    )
    base.update(kw)
    return PIDLagrangian(LagrangeConfig(**base))


def test_pid_matches_hand_computed_sequence() -> None:
    lag = pid()
    assert lag.value == 0.0  # λ starts at 0 online
    # J=20: Δ=10, I=5, P=5, EMA(J)=10, D=10-0=10 → λ = 5 + 5 + 2·10 = 30
    # J=20: Δ=10, I=10, P=7.5, EMA(J)=15, D=15-0=15 (2 updates ago) → λ = 7.5 + 10 + 30 = 47.5
    # J=5:  Δ=-5, I=7.5, P=1.25, EMA(J)=10, D=max(0, 10-10)=0 → λ = 1.25 + 7.5 = 8.75
    assert [lag.update(j) for j in (20.0, 20.0, 5.0)] == pytest.approx([30.0, 47.5, 8.75])
    # far below the limit: the integral is clipped at 0 and λ at 0
    for _ in range(20):
        lam = lag.update(0.0)
    assert lag.integral == 0.0 and lam == 0.0


def test_lambda_is_clipped_at_lambda_max() -> None:
    lag = pid(lambda_max=40.0)
    assert [lag.update(j) for j in (20.0, 20.0)] == pytest.approx([30.0, 40.0])


def test_fixed_mode_never_moves() -> None:
    lag = pid(mode="fixed", lambda_fixed=0.7)
    assert [lag.update(j) for j in (100.0, 0.0)] == [0.7, 0.7]


def test_adaptation_direction_and_amount() -> None:
    lag = pid(mode="bounded", adapt_rate=0.05)
    # above the limit: relative error (20 − 10)/max(20, 10) = 0.5 → K_p, K_i × 1.025; K_d unchanged (std 0)
    lag.update(20.0, std_cost=0.0)
    assert (lag.kp, lag.ki, lag.kd) == pytest.approx((1.025, 0.5125, 2.0))
    # below: (5 − 10)/max(5, 10) = −0.5 → × 0.975; K_d × (1 + 0.05·2/10)
    lag.update(5.0, std_cost=2.0)
    assert (lag.kp, lag.ki, lag.kd) == pytest.approx((1.025 * 0.975, 0.5125 * 0.975, 2.02))


def test_one_low_cost_episode_does_not_floor_the_gains() -> None:
    """The DESIGN rule's /e made this factor 1 − 0.05·9.9/0.1 = −3.95: both gains at K₀/10 at once."""
    lag = pid(mode="bounded", adapt_rate=0.05)
    lag.update(0.1)  # (0.1 − 10)/10 = −0.99 → × (1 − 0.0495)
    assert (lag.kp, lag.ki) == pytest.approx((0.9505, 0.47525))
    lag.update(0.0)  # e = 0 is well defined: the largest step down, × 0.95
    assert (lag.kp, lag.ki) == pytest.approx((0.9505 * 0.95, 0.47525 * 0.95))
    lag.update(30.0)  # costs rise: the gains rise again at once, × (1 + 0.05·20/30)
    assert lag.kp == pytest.approx(0.9505 * 0.95 * (1 + 0.05 * 2 / 3))


@pytest.mark.parametrize("e", [0.0, 1e-6, 0.1, 5.0, 9.99, 10.0, 10.01, 20.0, 1e3, 1e9])
@pytest.mark.parametrize("std", [0.0, 0.5, 1e12])
def test_one_update_moves_each_gain_by_at_most_eta(e: float, std: float) -> None:
    lag = pid(mode="bounded", adapt_rate=0.05)
    lag.update(e, std_cost=std)
    kp_factor, kd_factor = lag.kp / 1.0, lag.kd / 2.0
    assert 0.95 - 1e-12 <= kp_factor <= 1.05 + 1e-12
    assert (kp_factor > 1.0) == (e > 10.0) and (kp_factor < 1.0) == (e < 10.0)
    assert lag.ki / 0.5 == pytest.approx(kp_factor)
    assert 1.0 <= kd_factor <= 1.05 + 1e-12 and (kd_factor > 1.0) == (std > 0.0)
    if std == 1e12:  # a huge spread is capped at one full step
        assert kd_factor == pytest.approx(1.05)


def test_zero_cost_at_a_zero_limit_leaves_the_gains() -> None:
    lag = pid(mode="bounded", adapt_rate=0.05, cost_limit=0.0)
    lag.update(0.0, std_cost=1.0)
    assert (lag.kp, lag.ki, lag.kd) == (1.0, 0.5, 2.0)


def test_adapted_gains_respect_the_clamps() -> None:
    hot, cold = pid(mode="bounded", adapt_rate=0.5), pid(mode="bounded", adapt_rate=0.5)
    for _ in range(200):
        hot.update(1e6, std_cost=1e6)
        cold.update(0.0)
    assert (hot.kp, hot.ki, hot.kd) == pytest.approx((10.0, 5.0, 20.0))
    assert (cold.kp, cold.ki) == pytest.approx((0.1, 0.05))


def test_plain_pid_keeps_its_gains_and_state_round_trips() -> None:
    lag = pid()
    for j in (30.0, 2.0, 11.0):
        lag.observe_episode(j)
        lag.update_from_window()
    assert (lag.kp, lag.ki, lag.kd) == (1.0, 0.5, 2.0)
    twin = pid()
    twin.load_state_dict(lag.state_dict())
    assert twin.update(12.0, 1.0) == pytest.approx(lag.update(12.0, 1.0))


def _same(ours: list[float], theirs: list[float]) -> None:
    assert ours == pytest.approx(theirs, rel=1e-9, abs=1e-12)


def _trace(lag: PIDLagrangian, trace: dict[str, list[float]]) -> None:
    for key, attr in (("lambda", "lam"), ("integral", "integral"), ("kp", "kp"), ("ki", "ki"), ("kd", "kd")):
        trace[key].append(getattr(lag, attr))


@pytest.mark.parametrize("case", REFERENCES["cases"], ids=lambda c: c["label"])
def test_pid_and_marvel_reproduce_the_published_code(case: dict[str, Any]) -> None:
    """pid cases: OmniSafe 0.5.0's PIDLagrangian; marvel cases: Marvel's released class; step by step."""
    lag = PIDLagrangian(LagrangeConfig(**case["config"]))
    ours: dict[str, list[float]] = {k: [] for k in case["steps"]}
    for cost in REFERENCES["costs"]:
        lag.update(cost)
        _trace(lag, ours)
    for key, theirs in case["steps"].items():
        _same(ours[key], theirs)


def test_marvel_steps_per_gradient_update_on_the_latest_episodes() -> None:
    """exp_Marvel.py's schedule: 5 episodes, then 20 pid_update calls on their mean cost."""
    ref = REFERENCES["schedule"]
    lag = PIDLagrangian(LagrangeConfig(**ref["config"]))
    costs, ours = REFERENCES["costs"], {k: [] for k in ref["steps"]}
    for start in range(0, len(costs), ref["rollout"]):
        for cost in costs[start : start + ref["rollout"]]:
            lag.observe_episode(cost)
            before = lag.state_dict()
            lag.update_from_window()  # the per-episode call does nothing in mode marvel
            assert lag.state_dict() == before
        for _ in range(ref["updates_per_rollout"]):
            lag.on_gradient_step()
            _trace(lag, ours)
    for key, theirs in ref["steps"].items():
        _same(ours[key], theirs)
    assert lag.updates == len(ref["steps"]["lambda"])


@pytest.mark.parametrize("mode", ["pid", "bounded", "fixed"])
def test_only_marvel_steps_per_gradient_update(mode: str) -> None:
    lag = pid(mode=mode)
    lag.on_gradient_step()  # before any episode: nothing to read, in every mode
    lag.observe_episode(30.0)
    before = lag.state_dict()
    lag.on_gradient_step()
    assert lag.state_dict() == before
    lag.update_from_window()
    assert lag.updates == 1


def test_marvel_adapts_on_the_lagging_buffer_by_hand() -> None:
    """One step of cost 20 > d = 10: the buffer [0, C = 10] reads below the limit, so K_p, K_i fall."""
    lag = pid(mode="marvel", adapt_rate=0.05)
    lag.update(20.0)
    m = 5.0 + 0.1  # mean of [0, 10] plus Marvel's 0.1; population std 5
    assert (lag.kp, lag.ki) == pytest.approx(
        (1.0 * (1 + 0.05 * (m - 10) / m), 0.5 * (1 + 0.05 * (m - 10) / m))
    )
    assert lag.kd == pytest.approx(2.0 * (1 + 0.05 * 5.0 / m))
    assert lag.lam == pytest.approx(30.0)  # the PID step is pid's (first hand-computed value above)


def test_the_integral_starts_at_lambda_init_and_lambda_reads_zero_until_then() -> None:
    lag = pid(lambda_init=2.0, kd=0.0)
    assert lag.value == 0.0 and lag.integral == 2.0
    assert lag.update(10.0) == pytest.approx(2.0)  # at the limit: P = 0, I = 2


def test_diff_norm_and_sum_norm_choose_the_clamp() -> None:
    """OmniSafe: diff_norm clips I and λ to 1, sum_norm lifts the λ_max clip, neither clips at λ_max."""
    # J = 30: Δ = 20, I = 10, P = 10, EMA(J) = 15, D = 15 → 10 + 10 + 2·15 = 50
    assert pid(lambda_max=40.0).update(30.0) == 40.0
    assert pid(lambda_max=40.0, sum_norm=True).update(30.0) == pytest.approx(50.0)
    assert pid(lambda_max=40.0, sum_norm=True, diff_norm=True).update(30.0) == 1.0
    lag = pid(diff_norm=True)
    lag.update(30.0)
    assert lag.integral == 1.0


def test_the_old_mode_name_loads_as_bounded_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="reachsafe.trainer.algos.online.lagrange"):
        assert LagrangeConfig.from_dict({"version": 1, "mode": "adaptive"}).mode == "bounded"
    assert "deprecated" in caplog.text
    recorded = OnlineConfig.from_yaml(FIXTURES / "configs_v1" / "online.yaml").to_dict()
    recorded["lagrange"]["mode"] = "adaptive"  # what a checkpoint of an earlier run recorded
    cfg = OnlineConfig.from_recorded(recorded)
    assert cfg.lagrange.mode == "bounded" and cfg.lagrange.to_dict()["mode"] == "bounded"
    assert (cfg.lagrange.lambda_init, cfg.lagrange.sum_norm, cfg.lagrange.diff_norm) == (0.0, False, False)


@pytest.mark.parametrize("mode", ["bounded", "marvel", "pid", "fixed"])
def test_a_checkpoint_of_the_earlier_controller_loads_in_every_mode(mode: str) -> None:
    """The state the controller wrote before the modes were split (mode adaptive) still loads."""
    old = {
        "kp": 1.1, "ki": 0.6, "kd": 2.2, "integral": 3.0, "delta_p": 1.5, "cost_d": 12.0,
        "cost_ds": [0.0, 6.0, 12.0], "lam": 7.0, "updates": 3, "recent": [20.0, 10.0, 16.0],
    }  # fmt: skip
    lag = pid(mode=mode, d_delay=3)
    lag.load_state_dict(old)
    assert lag.state_dict() == old
    lag.update_from_window()
    lag.on_gradient_step()
    assert lag.updates == 4  # one step at the mode's cadence
