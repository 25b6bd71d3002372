"""No behaviour change from the restructuring: the same seeds give the same checkpoint tensors."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.fixtures.reference_runs import reference_runs

REFERENCE = Path(__file__).parents[1] / "fixtures" / "reference_checkpoints.npz"


def test_short_offline_and_online_runs_give_the_reference_tensors(tmp_path: Path) -> None:
    got = reference_runs(tmp_path)
    with np.load(REFERENCE) as ref:
        assert sorted(got) == sorted(ref.files), "the checkpoints hold other tensors than the reference"
        for name in ref.files:
            np.testing.assert_allclose(got[name], ref[name], rtol=1e-5, atol=1e-6, err_msg=name)
