"""Rebuilding transitions from robot streams (each step sent once, obs_t with the step)."""

from __future__ import annotations

import numpy as np

from reachsafe.trainer.data.episodes import EpisodeTracker
from reachsafe.trainer.data.replay import StepReplay


def cols(first: int, n: int, terminated: set[int] = frozenset(), truncated: set[int] = frozenset()) -> dict:
    idx = np.arange(first, first + n)
    return {
        "obs": np.repeat(idx.astype(np.uint8)[:, None, None, None], 3, axis=3).reshape(n, 1, 1, 3),
        "action": np.stack([idx, -idx], axis=1).astype(np.float32),
        "reward": idx.astype(np.float32),
        "cost": (idx % 2).astype(np.float32),
        "terminated": np.isin(idx, list(terminated)),
        "truncated": np.isin(idx, list(truncated)),
    }


def test_transitions_link_consecutive_steps_across_batches_and_streams() -> None:
    rb = StepReplay(64, (1, 1, 3), 2)
    rb.add_batch("a", 0, cols(0, 3))
    rb.add_batch("b", 100, cols(100, 2))
    rb.add_batch("a", 3, cols(3, 3, terminated={4}))
    # stream a: 0→1, 1→2, 2→3 (across batches), 3→4, 4 terminal; 5 waits for its successor; b: 100→101
    assert len(rb) == 6
    batch = rb.sample(256, np.random.default_rng(0))
    obs, nxt = batch.obs[:, 0, 0, 0].astype(int), batch.next_obs[:, 0, 0, 0].astype(int)
    live = ~batch.terminals
    assert np.all(nxt[live] == obs[live] + 1)
    assert set(obs[batch.terminals]) == {4}
    assert np.all(batch.rewards == obs) and np.all(batch.actions[:, 0] == obs)


def test_steps_keep_the_proposal_and_whether_the_shield_replaced_it() -> None:
    rb = StepReplay(16, (1, 1, 3), 2)
    rb.add_batch("a", 0, cols(0, 3))  # no shield columns: unshielded, the proposal is the action
    shielded = {
        **cols(3, 3),
        "proposed": np.full((3, 2), 9.0, np.float32),
        "shielded": np.array([1, 0, 1], bool),
    }
    rb.add_batch("a", 3, shielded)
    batch = rb.sample(256, np.random.default_rng(0))
    step = batch.obs[:, 0, 0, 0].astype(int)
    assert set(step) == {0, 1, 2, 3, 4}  # 5 waits for its successor
    assert np.array_equal(batch.shielded, np.isin(step, [3]))
    assert np.all(batch.proposed[step < 3] == batch.actions[step < 3])
    assert np.all(batch.proposed[step >= 3] == 9.0)


def test_truncated_step_and_gaps_make_no_transition_and_ring_overwrites_oldest() -> None:
    rb = StepReplay(4, (1, 1, 3), 2)
    rb.add_batch("a", 0, cols(0, 2, truncated={1}))  # 0→1; 1 truncated: its next frame was never seen
    rb.add_batch("a", 2, cols(2, 1))  # must not link 1→2 (new episode)
    assert len(rb) == 1
    rb.add_batch("a", 10, cols(10, 1))  # gap 2→10: no link
    assert len(rb) == 1
    rb.add_batch("a", 11, cols(11, 2))  # overwrites slots of steps 0 and 1
    batch = rb.sample(32, np.random.default_rng(1))
    assert set(batch.obs[:, 0, 0, 0].astype(int)) == {10, 11}


def test_episode_tracker_sums_per_stream() -> None:
    tr = EpisodeTracker()
    assert tr.add("a", cols(0, 3)) == []
    done = tr.add("a", cols(3, 4, truncated={4}))
    assert [(e.ret, e.cost, e.length) for e in done] == [(0 + 1 + 2 + 3 + 4, 2.0, 5)]
    done = tr.add("a", cols(7, 2, terminated={7, 8}))
    assert [(e.ret, e.length) for e in done] == [(5 + 6 + 7, 3), (8, 1)]
