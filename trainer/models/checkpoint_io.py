"""Checkpoint bytes without pickle: msgpack with tensors and arrays as the wire's array extension.

A checkpoint is a tree of dicts (any msgpack key: str or int, as optimiser states use), lists,
str / int / float / bool / None, torch tensors and numpy arrays. Tensors and arrays are packed by
:func:`reachsafe.protocol.codec.pack_array` (whitelisted dtypes, raw little-endian data), so loading a
checkpoint builds nothing but those values: no code from the file runs, whoever wrote it.
Tuples come back as lists; ints beyond 64 bits (numpy's PCG64 state) travel as decimal text.
"""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np
import torch

from reachsafe.protocol.codec import pack_array, unpack_array

_TENSOR, _NDARRAY, _BIG_INT = 1, 2, 3
_MAX_ARRAY_BYTES = 1 << 34  # a checkpoint is a local file; the wire's per-array limit does not apply


def _default(obj: Any) -> msgpack.ExtType | Any:
    if isinstance(obj, torch.Tensor):
        return msgpack.ExtType(_TENSOR, pack_array(obj.detach().cpu().numpy()))
    if isinstance(obj, np.ndarray):
        return msgpack.ExtType(_NDARRAY, pack_array(obj))
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, int):  # only ints msgpack cannot hold reach here
        return msgpack.ExtType(_BIG_INT, str(obj).encode("ascii"))
    raise TypeError(f"cannot store {type(obj).__name__} in a checkpoint")


def _ext_hook(code: int, payload: bytes) -> Any:
    if code == _BIG_INT:
        return int(payload.decode("ascii"))
    if code in (_TENSOR, _NDARRAY):
        arr = unpack_array(payload, _MAX_ARRAY_BYTES).copy()  # writable, owns its memory
        return torch.from_numpy(arr) if code == _TENSOR else arr
    raise ValueError(f"unknown checkpoint extension type {code}")


def dumps(tree: Any) -> bytes:
    return msgpack.packb(tree, default=_default, use_bin_type=True)


def loads(data: bytes) -> Any:
    """The tree :func:`dumps` wrote; msgpack / protocol errors on anything else."""
    return msgpack.unpackb(data, ext_hook=_ext_hook, raw=False, strict_map_key=False)
