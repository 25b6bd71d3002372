"""The offline bench's paired comparison with BC (the arithmetic; the runs themselves are bench-only)."""

from __future__ import annotations

import pytest

from bench.offline_results import _key, _unkey, paired_vs_bc


def _s(ret: float, cost: float) -> dict[str, float]:
    return {"return_mean": ret, "cost_mean": cost}


def test_paired_differences_by_hand():
    results = {
        ("bc", "train", False): [_s(5.0, 8.0), _s(7.0, 10.0), _s(6.0, 6.0)],
        ("fosp", "train", False): [_s(6.0, 4.0), _s(6.0, 7.0), _s(6.0, 7.0)],
        ("fosp", "train", True): [_s(4.0, 2.0), _s(5.0, 3.0), _s(6.0, 1.0)],
    }
    lines = paired_vs_bc(results)
    # return differences +1, −1, 0: mean 0, SE = 1/√3 = 0.58; cost −4, −3, +1: mean −2, SE = √7/√3 = 1.53
    assert lines[0] == "train, fosp − bc: return +0.00 ± 0.58, cost -2.00 ± 1.53, cost lower on 2/3 seeds"
    # return −1, −2, 0: mean −1, SE = 1/√3; cost −6, −7, −5: mean −6, SE = 1/√3; lower on all
    assert (
        lines[1]
        == "train, fosp + shield − bc: return -1.00 ± 0.58, cost -6.00 ± 0.58, cost lower on 3/3 seeds"
    )


@pytest.mark.parametrize("missing", ["bc", "short"])
def test_no_pairs_without_a_matching_bc(missing):
    fosp = [_s(6.0, 4.0), _s(6.0, 7.0)]
    results = {("fosp", "unseen", False): fosp}
    if missing == "short":
        results[("bc", "unseen", False)] = [_s(5.0, 8.0)]
    assert paired_vs_bc(results) == []


def test_evaluation_cache_keys_round_trip():
    for split_shield in [("train", False), ("unseen", True)]:
        assert _unkey(_key(split_shield)) == split_shield
