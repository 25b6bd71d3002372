"""Offline datasets in the DSRL HDF5 layout, held in memory, with batch and sequence sampling.

Keys (docs/architecture.md): ``observations`` uint8 (N, H, W, 3) or float (N, D), ``next_observations``
(same), ``actions`` float (N, A), ``rewards``, ``costs`` float (N,), ``terminals``, ``timeouts``
bool (N,); optional root attribute ``metadata`` (JSON string).
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

REQUIRED_KEYS = ("observations", "next_observations", "actions", "rewards", "costs", "terminals", "timeouts")
#: keys of the ``metadata`` attribute a dataset should carry (docs/robots.md): ``task`` keeps files of
#: different tasks from training together; the others say how the data was made, recorded in every run
OPTIONAL_METADATA_KEYS = ("task", "policy", "episodes", "episode_steps", "seeds")


class DatasetError(Exception):
    """Base class for every problem with an offline dataset file."""


class DatasetNotFoundError(DatasetError):
    """The dataset file does not exist or is not HDF5."""


class MissingKeyError(DatasetError):
    """A required DSRL key is absent."""


class ShapeMismatchError(DatasetError):
    """Arrays disagree on length, or an array has the wrong rank / trailing shape."""


class DtypeError(DatasetError):
    """An array has a dtype the trainer cannot use."""


class NonFiniteError(DatasetError):
    """An array holds NaN or infinite values."""


class EmptyDatasetError(DatasetError):
    """The dataset (or the requested sequence length) leaves nothing to sample."""


class IncompatibleDatasetsError(DatasetError):
    """Several dataset files cannot be trained on together (other observations, actions or task)."""


@dataclass(frozen=True)
class Batch:
    """Transitions (o, a, r, c, o', terminal), all numpy arrays with a leading batch axis.

    Online steps also carry what the shield did: ``proposed`` (the selected policy's action) and
    ``shielded`` (the shield executed ``actions`` instead). None for offline data.
    """

    obs: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    costs: np.ndarray
    next_obs: np.ndarray
    terminals: np.ndarray
    proposed: np.ndarray | None = None
    shielded: np.ndarray | None = None


@dataclass(frozen=True)
class SequenceBatch:
    """B sequences of H consecutive transitions within one episode.

    ``obs`` is (B, H+1, ...): o_0 … o_H, where o_{t+1} is the next observation of step t. A terminal can
    only occur at the last step of a sequence; earlier steps never cross an episode boundary.
    """

    obs: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    costs: np.ndarray
    terminals: np.ndarray


@dataclass
class OfflineDataset:
    """An offline dataset held in memory; build it with :func:`load_dataset` or :meth:`from_arrays`."""

    observations: np.ndarray
    next_observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    costs: np.ndarray
    terminals: np.ndarray
    timeouts: np.ndarray
    metadata: dict[str, Any] = field(default_factory=dict)
    source: str = "<memory>"
    files: tuple[str, ...] = ()  # absolute paths of the HDF5 file(s) it was read from, in order

    def __post_init__(self) -> None:
        _validate(self)
        self.observations = np.ascontiguousarray(self.observations)
        self.next_observations = np.ascontiguousarray(self.next_observations)
        self.actions = np.asarray(self.actions, dtype=np.float32)
        self.rewards = np.asarray(self.rewards, dtype=np.float32).reshape(-1)
        self.costs = np.asarray(self.costs, dtype=np.float32).reshape(-1)
        self.terminals = np.asarray(self.terminals).reshape(-1).astype(bool)
        self.timeouts = np.asarray(self.timeouts).reshape(-1).astype(bool)
        if self.obs_mode == "state":
            self.observations = self.observations.astype(np.float32)
            self.next_observations = self.next_observations.astype(np.float32)
        self._valid_starts: dict[int, np.ndarray] = {}

    @classmethod
    def from_arrays(
        cls, arrays: dict[str, np.ndarray], metadata: dict[str, Any] | None = None
    ) -> OfflineDataset:
        missing = [k for k in REQUIRED_KEYS if k not in arrays]
        if missing:
            raise MissingKeyError(
                f"dataset is missing required key(s) {missing}; a DSRL-layout dataset needs {list(REQUIRED_KEYS)}"
            )
        return cls(**{k: arrays[k] for k in REQUIRED_KEYS}, metadata=dict(metadata or {}))

    def __len__(self) -> int:
        return int(self.actions.shape[0])

    @property
    def obs_mode(self) -> str:
        """``"image"`` for uint8 (N, H, W, 3) frames, ``"state"`` for float (N, D) vectors."""
        return "image" if self.observations.ndim == 4 else "state"

    @property
    def obs_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.observations.shape[1:])

    @property
    def action_dim(self) -> int:
        return int(self.actions.shape[1])

    @property
    def episode_ends(self) -> np.ndarray:
        """Boolean (N,): the step closes an episode (terminal or timeout)."""
        return self.terminals | self.timeouts

    def episode_bounds(self) -> list[tuple[int, int]]:
        """Half-open [start, stop) index ranges of episodes; a trailing unfinished episode is included."""
        stops = np.flatnonzero(self.episode_ends) + 1
        if len(stops) == 0 or stops[-1] != len(self):
            stops = np.append(stops, len(self))
        starts = np.concatenate([[0], stops[:-1]])
        return [(int(a), int(b)) for a, b in zip(starts, stops, strict=True)]

    def episode_returns(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-episode summed reward and cost."""
        bounds = self.episode_bounds()
        ret = np.array([self.rewards[a:b].sum() for a, b in bounds], dtype=np.float64)
        cost = np.array([self.costs[a:b].sum() for a, b in bounds], dtype=np.float64)
        return ret, cost

    def sample(self, batch_size: int, rng: np.random.Generator) -> Batch:
        idx = rng.integers(0, len(self), size=batch_size)
        return Batch(
            obs=self.observations[idx],
            actions=self.actions[idx],
            rewards=self.rewards[idx],
            costs=self.costs[idx],
            next_obs=self.next_observations[idx],
            terminals=self.terminals[idx],
        )

    def valid_sequence_starts(self, horizon: int) -> np.ndarray:
        """Indices i such that steps i … i+horizon−1 lie in one episode (only the last may end it)."""
        if horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {horizon}")
        if horizon not in self._valid_starts:
            n = len(self)
            ends = self.episode_ends.astype(np.int64)
            csum = np.concatenate([[0], np.cumsum(ends)])
            starts = np.arange(0, max(n - horizon + 1, 0))
            # no episode end among steps i … i+horizon-2
            ok = (csum[starts + horizon - 1] - csum[starts]) == 0
            self._valid_starts[horizon] = starts[ok]
        return self._valid_starts[horizon]

    def sample_sequences(
        self, batch_size: int, horizon: int, rng: np.random.Generator, rows: slice = slice(None)
    ) -> SequenceBatch:
        """``batch_size`` sequences of ``horizon`` steps, uniformly over the valid starts; only ``rows``
        of them are gathered (a data-parallel process's share: every process draws the same starts)."""
        starts = self.valid_sequence_starts(horizon)
        if len(starts) == 0:
            raise EmptyDatasetError(
                f"{self.source}: no episode has {horizon} consecutive steps; lower the world-model horizon"
            )
        i0 = rng.choice(starts, size=batch_size)[rows]
        idx = i0[:, None] + np.arange(horizon)[None, :]
        obs = np.concatenate([self.observations[idx], self.next_observations[idx[:, -1:]]], axis=1)
        return SequenceBatch(
            obs=obs,
            actions=self.actions[idx],
            rewards=self.rewards[idx],
            costs=self.costs[idx],
            terminals=self.terminals[idx],
        )

    def calibration_frames(self, count: int, seed: int = 0) -> np.ndarray:
        """Observations spread over the dataset, for int8 calibration and parity checks."""
        rng = np.random.default_rng(seed)
        idx = np.sort(rng.choice(len(self), size=min(count, len(self)), replace=False))
        return self.observations[idx]


def load_dataset(path: str | Path) -> OfflineDataset:
    """Load a DSRL-layout HDF5 file into memory, validating keys, shapes, dtypes and values."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise DatasetNotFoundError(
            f"dataset file {path} does not exist; create one with `reachsafe sim collect`"
        )
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise DatasetNotFoundError(f"{path} is not a readable HDF5 file: {exc}") from exc
    with f:
        missing = [k for k in REQUIRED_KEYS if k not in f]
        if missing:
            raise MissingKeyError(
                f"{path}: missing required key(s) {missing}; a DSRL-layout dataset needs {list(REQUIRED_KEYS)}"
            )
        arrays = {k: np.asarray(f[k][()]) for k in REQUIRED_KEYS}
        metadata = _parse_metadata(f.attrs.get("metadata"), path)
    _warn_missing_metadata(metadata, path)
    source = str(path.resolve())  # absolute: runs are read from elsewhere
    ds = _construct(arrays, metadata, source, (source,))
    logger.info(
        "loaded %s: %d steps, %d episodes, obs %s %s, action dim %d",
        path,
        len(ds),
        len(ds.episode_bounds()),
        ds.obs_mode,
        ds.obs_shape,
        ds.action_dim,
    )
    return ds


def load_datasets(paths: Sequence[str | Path]) -> OfflineDataset:
    """One dataset from one or more files, their episodes in the order given.

    Files from several collection runs (another split of seeds, the same episodes in randomised colours)
    train together. They must agree on observation shape and dtype, action size and task; a file whose
    last episode is unfinished has it closed with a timeout, so no sequence runs into the next file.
    The metadata keeps what every file agrees on, and each file's own under ``parts``.
    """
    if not paths:
        raise DatasetNotFoundError("no dataset file given")
    parts = [load_dataset(p) for p in paths]
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    for part in parts[1:]:
        checks = (
            (
                "observations",
                (first.obs_shape, first.observations.dtype),
                (part.obs_shape, part.observations.dtype),
            ),
            ("action size", first.action_dim, part.action_dim),
            ("task", first.metadata.get("task"), part.metadata.get("task")),
        )
        for name, want, got in checks:
            if got != want:
                raise IncompatibleDatasetsError(
                    f"{part.source} and {first.source} differ in {name} ({got} vs {want}); "
                    "train on files collected for the same task and robot"
                )
    timeouts = []
    for part in parts:
        t = part.timeouts.copy()
        if not part.episode_ends[-1]:
            logger.info("%s ends mid-episode: closing its last episode with a timeout", part.source)
            t[-1] = True
        timeouts.append(t)
    arrays = {k: np.concatenate([getattr(p, k) for p in parts]) for k in REQUIRED_KEYS if k != "timeouts"}
    shared = {
        k: v for k, v in first.metadata.items() if all(k in p.metadata and p.metadata[k] == v for p in parts)
    }
    ds = _construct(
        {**arrays, "timeouts": np.concatenate(timeouts)},
        {**shared, "parts": [p.metadata for p in parts]},
        " + ".join(p.source for p in parts),
        tuple(f for p in parts for f in p.files),
    )
    logger.info(
        "training on %d files together: %d steps, %d episodes", len(parts), len(ds), len(ds.episode_bounds())
    )
    return ds


def add_dataset_argument(p: argparse.ArgumentParser, help: str, required: bool = False) -> None:
    """``--dataset FILE [FILE ...]``, the one shape every verb that reads offline data takes
    (:func:`load_datasets` joins the files)."""
    p.add_argument("--dataset", required=required, type=Path, nargs="+", metavar="FILE", help=help)


def _construct(
    arrays: dict[str, np.ndarray], metadata: dict[str, Any], source: str, files: tuple[str, ...] = ()
) -> OfflineDataset:
    try:
        ds = OfflineDataset(**arrays, metadata=metadata, source=source, files=files)
    except DatasetError as exc:
        raise type(exc)(f"{source}: {exc}") from None
    return ds


def _warn_missing_metadata(metadata: dict[str, Any], path: Path) -> None:
    """Training works without them, but a run then cannot tell which task its data is from (nor refuse
    to mix tasks), so say so once per file."""
    missing = [k for k in OPTIONAL_METADATA_KEYS if k not in metadata]
    if missing:
        logger.warning(
            "%s: metadata lacks %s; write them as the JSON root attribute 'metadata' (docs/robots.md)",
            path,
            missing,
        )


def _parse_metadata(raw: Any, path: Path) -> dict[str, Any]:
    if raw is None:
        return {}
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8")
    try:
        meta = json.loads(str(raw))
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}: root attribute 'metadata' is not valid JSON: {exc}") from exc
    if not isinstance(meta, dict):
        raise DatasetError(
            f"{path}: root attribute 'metadata' must be a JSON object, got {type(meta).__name__}"
        )
    return meta


def _validate(ds: OfflineDataset) -> None:
    obs, nobs, act = np.asarray(ds.observations), np.asarray(ds.next_observations), np.asarray(ds.actions)
    n = act.shape[0] if act.ndim >= 1 else 0
    if n == 0:
        raise EmptyDatasetError("dataset has no steps")
    if act.ndim != 2:
        raise ShapeMismatchError(f"'actions' must be (N, A), got shape {act.shape}")
    if not np.issubdtype(act.dtype, np.floating):
        raise DtypeError(f"'actions' must be floating point, got {act.dtype}")
    if obs.ndim == 4:
        if obs.shape[-1] != 3:
            raise ShapeMismatchError(f"image 'observations' must be (N, H, W, 3), got {obs.shape}")
        if obs.dtype != np.uint8:
            raise DtypeError(f"image 'observations' must be uint8 (raw camera frames), got {obs.dtype}")
    elif obs.ndim == 2:
        if not np.issubdtype(obs.dtype, np.floating):
            raise DtypeError(f"state 'observations' must be floating point, got {obs.dtype}")
    else:
        raise ShapeMismatchError(
            f"'observations' must be uint8 (N, H, W, 3) images or float (N, D) states, got shape {obs.shape}"
        )
    if nobs.shape != obs.shape:
        raise ShapeMismatchError(
            f"'next_observations' shape {nobs.shape} differs from 'observations' {obs.shape}"
        )
    if nobs.dtype != obs.dtype:
        raise DtypeError(f"'next_observations' dtype {nobs.dtype} differs from 'observations' {obs.dtype}")
    for key in ("rewards", "costs", "terminals", "timeouts"):
        arr = np.asarray(getattr(ds, key))
        if arr.ndim == 2 and arr.shape[1] == 1:
            arr = arr[:, 0]
        if arr.ndim != 1 or arr.shape[0] != n:
            raise ShapeMismatchError(f"'{key}' must have shape ({n},) like 'actions', got {arr.shape}")
        if key in ("rewards", "costs") and not (
            np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)
        ):
            raise DtypeError(f"'{key}' must be numeric, got {arr.dtype}")
        if key in ("terminals", "timeouts"):
            if arr.dtype != bool and not np.all((arr == 0) | (arr == 1)):
                raise DtypeError(f"'{key}' must be boolean (or 0/1), got {arr.dtype} with other values")
    if obs.shape[0] != n:
        raise ShapeMismatchError(f"'observations' has {obs.shape[0]} steps but 'actions' has {n}")
    floats = {"actions": act, "rewards": ds.rewards, "costs": ds.costs}
    if obs.ndim == 2:
        floats.update(observations=obs, next_observations=nobs)
    for key, arr in floats.items():
        if not np.all(np.isfinite(np.asarray(arr, dtype=np.float64))):
            raise NonFiniteError(
                f"'{key}' contains NaN or infinite values; clean the dataset before training"
            )
    if np.any(np.asarray(ds.costs) < 0):
        raise DatasetError("'costs' must be >= 0: a cost is a count of violations, never a reward")
    if np.any(np.abs(act) > 1.0 + 1e-6):
        raise DatasetError("'actions' must lie in [-1, 1]; rescale the dataset's actions")
