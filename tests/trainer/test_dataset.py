"""Loading DSRL-layout HDF5 files: typed errors for bad files, episodes and sampling."""

import json

import h5py
import numpy as np
import pytest

from reachsafe.trainer.data.dataset import (
    DatasetError,
    DatasetNotFoundError,
    DtypeError,
    EmptyDatasetError,
    IncompatibleDatasetsError,
    MissingKeyError,
    NonFiniteError,
    ShapeMismatchError,
    load_dataset,
    load_datasets,
)


def arrays(n=10, image=True, ends=(4, 9)):
    rng = np.random.default_rng(0)
    obs = (
        rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
        if image
        else rng.standard_normal((n, 3)).astype(np.float32)
    )
    timeouts = np.zeros(n, bool)
    timeouts[list(ends)] = True
    return {
        "observations": obs,
        "next_observations": obs.copy(),
        "actions": rng.uniform(-1, 1, (n, 2)).astype(np.float32),
        "rewards": rng.standard_normal(n).astype(np.float32),
        "costs": (rng.random(n) < 0.3).astype(np.float32),
        "terminals": np.zeros(n, bool),
        "timeouts": timeouts,
    }


def write(path, data, metadata=None):
    with h5py.File(path, "w") as f:
        for k, v in data.items():
            f.create_dataset(k, data=v)
        if metadata is not None:
            f.attrs["metadata"] = metadata
    return path


def test_loads_image_dataset_with_metadata(tmp_path):
    ds = load_dataset(write(tmp_path / "d.h5", arrays(), json.dumps({"task": "x"})))
    assert ds.obs_mode == "image" and ds.obs_shape == (8, 8, 3) and ds.action_dim == 2 and len(ds) == 10
    assert ds.metadata == {"task": "x"}
    assert ds.episode_bounds() == [(0, 5), (5, 10)]


def test_loads_state_dataset_and_float_flags(tmp_path):
    data = arrays(image=False)
    data["terminals"] = data["terminals"].astype(np.float32)
    ds = load_dataset(write(tmp_path / "d.h5", data))
    assert ds.obs_mode == "state" and ds.obs_shape == (3,) and ds.terminals.dtype == bool


@pytest.mark.parametrize(
    "mutate, error, words",
    [
        (lambda d: d.pop("costs"), MissingKeyError, "costs"),
        (lambda d: d.update(rewards=d["rewards"][:-1]), ShapeMismatchError, "rewards"),
        (
            lambda d: d.update(next_observations=d["next_observations"][:, :4]),
            ShapeMismatchError,
            "next_observations",
        ),
        (lambda d: d.update(observations=d["observations"].astype(np.float32)), DtypeError, "uint8"),
        (lambda d: d.update(actions=np.ones((10, 2), np.int64)), DtypeError, "actions"),
        (lambda d: d.update(terminals=np.full(10, 3, np.int64)), DtypeError, "terminals"),
        (lambda d: d["rewards"].__setitem__(3, np.nan), NonFiniteError, "rewards"),
        (lambda d: d.update(actions=d["actions"] * 3), DatasetError, "[-1, 1]"),
        (lambda d: d.update(observations=np.zeros((10, 2, 2), np.uint8)), ShapeMismatchError, "observations"),
    ],
)
def test_bad_files_raise_typed_errors_naming_the_problem(tmp_path, mutate, error, words):
    data = arrays()
    mutate(data)
    with pytest.raises(error) as info:
        load_dataset(write(tmp_path / "bad.h5", data))
    assert words in str(info.value) and "bad.h5" in str(info.value)


def test_missing_or_non_hdf5_file(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="sim collect"):
        load_dataset(tmp_path / "nope.h5")
    (tmp_path / "x.h5").write_text("not hdf5")
    with pytest.raises(DatasetNotFoundError):
        load_dataset(tmp_path / "x.h5")


def test_sequences_never_cross_episode_ends(tmp_path):
    data = arrays(n=12, ends=(2, 7, 11))  # episodes [0..2], [3..7], [8..11]
    data["rewards"] = np.arange(12, dtype=np.float32)
    ds = load_dataset(write(tmp_path / "d.h5", data))
    starts = set(ds.valid_sequence_starts(3).tolist())
    assert starts == {0, 3, 4, 5, 8, 9}
    seq = ds.sample_sequences(64, 3, np.random.default_rng(1))
    assert seq.obs.shape == (64, 4, 8, 8, 3) and seq.actions.shape == (64, 3, 2)
    r = seq.rewards
    assert np.all(np.diff(r, axis=1) == 1)  # consecutive steps
    assert set(r[:, 0].astype(int).tolist()) <= starts
    # the last observation of a sequence is the next observation of its last step
    idx = r[:, -1].astype(int)
    assert np.array_equal(seq.obs[:, -1], ds.next_observations[idx])
    with pytest.raises(EmptyDatasetError, match="horizon"):
        ds.sample_sequences(4, 6, np.random.default_rng(0))


def test_several_files_train_as_one_dataset_with_their_episodes_in_order(tmp_path):
    a = arrays(n=10, ends=(4, 9))
    b = arrays(n=7, ends=(2,))  # its last episode (steps 3-6) is unfinished
    b["rewards"] = np.arange(100, 107, dtype=np.float32)
    pa = write(tmp_path / "a.h5", a, json.dumps({"task": "x", "palette_jitter": 0.0, "episodes": 2}))
    pb = write(tmp_path / "b.h5", b, json.dumps({"task": "x", "palette_jitter": 0.2, "episodes": 2}))
    c = write(tmp_path / "c.h5", arrays(n=5, ends=(4,)), json.dumps({"task": "x"}))
    ds = load_datasets([pa, pb, c])
    assert len(ds) == 22 and ds.files == tuple(str(p.resolve()) for p in (pa, pb, c))
    assert ds.episode_bounds() == [(0, 5), (5, 10), (10, 13), (13, 17), (17, 22)]
    assert np.array_equal(ds.rewards[10:17], b["rewards"]) and ds.timeouts[16]  # closed, not joined to c
    assert 14 in ds.valid_sequence_starts(3) and 15 not in ds.valid_sequence_starts(3)
    assert ds.metadata["task"] == "x" and "palette_jitter" not in ds.metadata  # the files disagree on it
    assert [p.get("palette_jitter") for p in ds.metadata["parts"]] == [0.0, 0.2, None]
    assert "a.h5 + " in ds.source and ds.source.endswith("c.h5")
    one = load_datasets([pa])
    assert one.metadata == {"task": "x", "palette_jitter": 0.0, "episodes": 2} and len(one) == 10


@pytest.mark.parametrize(
    "other, meta, words",
    [
        (arrays(image=False), {"task": "x"}, "observations"),
        ({**arrays(), "actions": np.zeros((10, 3), np.float32)}, {"task": "x"}, "action size"),
        (arrays(), {"task": "y"}, "task"),
    ],
)
def test_files_that_cannot_train_together_are_refused_naming_both(tmp_path, other, meta, words):
    a = write(tmp_path / "a.h5", arrays(), json.dumps({"task": "x"}))
    b = write(tmp_path / "b.h5", other, json.dumps(meta))
    with pytest.raises(IncompatibleDatasetsError, match=words) as info:
        load_datasets([a, b])
    assert "a.h5" in str(info.value) and "b.h5" in str(info.value)
    with pytest.raises(DatasetNotFoundError):
        load_datasets([])
