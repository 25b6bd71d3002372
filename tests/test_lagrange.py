"""PID Lagrangian (OmniSafe form) and Marvel's gain adaptation, against values worked out by hand."""

from __future__ import annotations

import pytest

from trainer.lagrange import LagrangeConfig, PIDLagrangian


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
    lag.update(20.0, std_cost=0.0)  # above the limit: K_p, K_i × (1 + 0.05·10/20); K_d unchanged (std 0)
    assert (lag.kp, lag.ki, lag.kd) == pytest.approx((1.025, 0.5125, 2.0))
    lag.update(5.0, std_cost=2.0)  # below: × (1 − 0.05·5/5); K_d × (1 + 0.05·2/5)
    assert (lag.kp, lag.ki, lag.kd) == pytest.approx((1.025 * 0.95, 0.5125 * 0.95, 2.04))


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
