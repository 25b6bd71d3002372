"""PID Lagrangian (OmniSafe form) and Marvel's gain adaptation (bounded steps), against values worked out by hand."""

from __future__ import annotations

import pytest

from reachsafe.trainer.algos.online.lagrange import LagrangeConfig, PIDLagrangian


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
    lag = pid(mode="adaptive", adapt_rate=0.05)
    # above the limit: relative error (20 − 10)/max(20, 10) = 0.5 → K_p, K_i × 1.025; K_d unchanged (std 0)
    lag.update(20.0, std_cost=0.0)
    assert (lag.kp, lag.ki, lag.kd) == pytest.approx((1.025, 0.5125, 2.0))
    # below: (5 − 10)/max(5, 10) = −0.5 → × 0.975; K_d × (1 + 0.05·2/10)
    lag.update(5.0, std_cost=2.0)
    assert (lag.kp, lag.ki, lag.kd) == pytest.approx((1.025 * 0.975, 0.5125 * 0.975, 2.02))


def test_one_low_cost_episode_does_not_floor_the_gains() -> None:
    """The DESIGN rule's /e made this factor 1 − 0.05·9.9/0.1 = −3.95: both gains at K₀/10 at once."""
    lag = pid(mode="adaptive", adapt_rate=0.05)
    lag.update(0.1)  # (0.1 − 10)/10 = −0.99 → × (1 − 0.0495)
    assert (lag.kp, lag.ki) == pytest.approx((0.9505, 0.47525))
    lag.update(0.0)  # e = 0 is well defined: the largest step down, × 0.95
    assert (lag.kp, lag.ki) == pytest.approx((0.9505 * 0.95, 0.47525 * 0.95))
    lag.update(30.0)  # costs rise: the gains rise again at once, × (1 + 0.05·20/30)
    assert lag.kp == pytest.approx(0.9505 * 0.95 * (1 + 0.05 * 2 / 3))


@pytest.mark.parametrize("e", [0.0, 1e-6, 0.1, 5.0, 9.99, 10.0, 10.01, 20.0, 1e3, 1e9])
@pytest.mark.parametrize("std", [0.0, 0.5, 1e12])
def test_one_update_moves_each_gain_by_at_most_eta(e: float, std: float) -> None:
    lag = pid(mode="adaptive", adapt_rate=0.05)
    lag.update(e, std_cost=std)
    kp_factor, kd_factor = lag.kp / 1.0, lag.kd / 2.0
    assert 0.95 - 1e-12 <= kp_factor <= 1.05 + 1e-12
    assert (kp_factor > 1.0) == (e > 10.0) and (kp_factor < 1.0) == (e < 10.0)
    assert lag.ki / 0.5 == pytest.approx(kp_factor)
    assert 1.0 <= kd_factor <= 1.05 + 1e-12 and (kd_factor > 1.0) == (std > 0.0)
    if std == 1e12:  # a huge spread is capped at one full step
        assert kd_factor == pytest.approx(1.05)


def test_zero_cost_at_a_zero_limit_leaves_the_gains() -> None:
    lag = pid(mode="adaptive", adapt_rate=0.05, cost_limit=0.0)
    lag.update(0.0, std_cost=1.0)
    assert (lag.kp, lag.ki, lag.kd) == (1.0, 0.5, 2.0)


def test_adapted_gains_respect_the_clamps() -> None:
    hot, cold = pid(mode="adaptive", adapt_rate=0.5), pid(mode="adaptive", adapt_rate=0.5)
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
