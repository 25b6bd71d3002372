"""Where the trainer computes: the device, CPU threads, host → device batches, mixed precision.

The learners take a ``torch.device`` and use these helpers; which device a run uses is the runs'
and the command line's business (``--device auto|cpu|cuda[:N]``, :func:`resolve_device`). On the
CPU the batch helpers copy nothing and change no arithmetic.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

logger = logging.getLogger(__name__)

#: glibc ``mallopt`` parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_KEEP_FREED_BYTES = 1 << 30


class DeviceError(ValueError):
    """A requested device does not exist on this machine."""


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` → the current CUDA device when CUDA is available, else the CPU; ``cpu``, ``cuda``,
    ``cuda:N`` as given, after checking that the GPU exists. Logs the choice."""
    name = name.strip().lower()
    if name == "auto":
        device = (
            torch.device("cuda", torch.cuda.current_device())
            if torch.cuda.is_available()
            else torch.device("cpu")
        )
        logger.info("device auto: %s", describe_device(device))
        return device
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DeviceError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device {name}: this torch build or machine has no CUDA GPU; use --device cpu")
        index = torch.cuda.current_device() if device.index is None else device.index
        if index >= torch.cuda.device_count():
            raise DeviceError(f"device {name}: only {torch.cuda.device_count()} CUDA GPU(s) present")
        device = torch.device("cuda", index)
    elif device.type != "cpu":
        raise DeviceError(f"device {name}: the trainer runs on auto, cpu, cuda or cuda:N")
    logger.info("device: %s", describe_device(device))
    return device


def describe_device(device: torch.device) -> str:
    """The device and, for a GPU, its name: ``cuda:0 (NVIDIA H100 80GB HBM3)``, ``cpu``."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return "cpu"


def device_record(device: torch.device) -> dict[str, Any]:
    """What a run records about where it trained (checkpoints, summaries)."""
    record: dict[str, Any] = {
        "device": str(device),
        "name": describe_device(device),
        "torch": torch.__version__,
    }
    if device.type == "cpu":
        record["threads"] = torch.get_num_threads()
    return record


def free_cpu_cores() -> int:
    """Cores this process may run on and nothing else keeps busy: its CPU affinity (taskset,
    cpusets), capped by a cgroup CPU quota (containers), less the machine's 1-minute load average
    (rounded); at least 1. ``os.cpu_count()`` counts the machine's cores, which a shared or
    containerised trainer does not have, and a torch thread pool larger than the idle cores makes
    every update wait for its slowest thread."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    allowed = min(cores, math.ceil(quota)) if quota is not None else cores
    busy = round(os.getloadavg()[0]) if hasattr(os, "getloadavg") else 0
    return max(1, allowed - busy)


def _cgroup_cpu_quota(path: Path = Path("/sys/fs/cgroup/cpu.max")) -> float | None:
    """CPUs allowed by a cgroup-v2 quota (``max`` or no file: None)."""
    try:
        quota, period = path.read_text().split()[:2]
    except (OSError, ValueError):
        return None
    return None if quota == "max" else int(quota) / int(period)


def choose_threads(requested: int, share: int = 1, reserve: int = 0) -> int:
    """torch intra-op threads: ``requested`` when > 0; 0 = auto: the free cores less ``reserve``
    (cores kept for other threads of the process, e.g. the daemon's ingest), split over ``share``
    processes on this machine (data-parallel ranks); at least 1."""
    if requested > 0:
        return requested
    return max(1, (free_cpu_cores() - reserve) // max(1, share))


def set_threads(requested: int, share: int = 1, reserve: int = 0) -> int:
    """Apply :func:`choose_threads` to torch; returns the thread count."""
    threads = choose_threads(requested, share, reserve)
    torch.set_num_threads(threads)
    how = (
        f"auto: {free_cpu_cores()} free cores, {reserve} reserved, {share} process(es)"
        if requested == 0
        else "set"
    )
    logger.info("torch threads: %d (%s)", threads, how)
    return threads


def keep_freed_memory() -> bool:
    """Let glibc keep freed blocks for reuse instead of handing them back to the kernel.

    Why: autograd frees and re-allocates the same multi-megabyte activation and gradient buffers
    in every update; by default glibc serves such blocks with mmap and unmaps them on free (or
    trims the heap), so every update page-faults them in again. The process's resident memory
    then stays at its peak. Returns False where the C library is not glibc.
    """
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt if name else None
    except (OSError, AttributeError):
        mallopt = None
    if mallopt is None:
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, _KEEP_FREED_BYTES)) and bool(
        mallopt(_M_TRIM_THRESHOLD, _KEEP_FREED_BYTES)
    )


def module_device(module: nn.Module) -> torch.device:
    """The device of a module's first parameter (the CPU for a module without parameters)."""
    return next((p.device for p in module.parameters()), torch.device("cpu"))


def to_device(array: np.ndarray, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A numpy batch as a tensor on ``device``.

    CPU: the array's own memory (no copy). CUDA: staged in pinned host memory and copied without
    blocking the host: the copy is queued on the GPU's stream ahead of the kernels that read it,
    while Python goes on launching them.
    """
    host = torch.from_numpy(np.ascontiguousarray(array))
    if device.type == "cpu":
        return host if dtype is None else host.to(dtype)
    return host.pin_memory().to(device, dtype=dtype, non_blocking=True)


def autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on ``device`` when ``bf16`` is set, else nothing (fp32)."""
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def to_floats(
    values: Mapping[str, torch.Tensor], reduce: Callable[[torch.Tensor], torch.Tensor] | None = None
) -> dict[str, float]:
    """Scalar tensors as Python floats through one device → host copy (a GPU waits once per update,
    not once per value); float64 keeps every float32 value exact. ``reduce`` maps the stacked values
    first (e.g. their mean over data-parallel processes)."""
    if not values:
        return {}
    stacked = torch.stack([v.detach().reshape(()).to(torch.float64) for v in values.values()])
    return dict(zip(values, (stacked if reduce is None else reduce(stacked)).tolist(), strict=True))


def compile_modules(*modules: nn.Module) -> None:
    """``torch.compile`` each module in place: its state dict, checkpoints and exports are unchanged."""
    for module in modules:
        module.compile()
