"""Data-parallel runs on torch.distributed: one process per CPU share or GPU, one set of weights.

A run joins the process group its environment names: ``torchrun --nproc-per-node N`` sets RANK,
WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT; :func:`spawn` (the
``--nproc N`` option) starts N processes on this machine with the same variables. Without them a
run is a group of one and touches no torch.distributed state. gloo on CPUs, NCCL on GPUs, each
local rank on its own GPU. What each process computes is
:class:`~reachsafe.trainer.models.parallel.Replica`'s business; rank 0 alone writes the run
directory.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from reachsafe.protocol.sockets import free_tcp_port
from reachsafe.trainer.models.device import DeviceError, resolve_device
from reachsafe.trainer.models.parallel import SINGLE, Replica

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProcessGroup:
    """This process's place in a data-parallel run and its device."""

    replica: Replica
    local_count: int
    device: torch.device

    @property
    def writes(self) -> bool:
        """Rank 0 writes checkpoints, scalars and bundles; the others only compute."""
        return self.replica.index == 0


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def device_for_rank(name: str, local_rank: int, local_count: int) -> torch.device:
    """The device of local rank ``local_rank``: its own GPU (``cuda`` / ``auto`` with CUDA present,
    one GPU per local process), else the CPU. A single ``cuda:N`` cannot serve several processes."""
    if local_count == 1:
        return resolve_device(name)
    name = name.strip().lower()
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return resolve_device("cpu")
    if name not in ("auto", "cuda"):
        raise DeviceError(
            f"--device {name} names one GPU; {local_count} processes need --device cuda or auto"
        )
    if not torch.cuda.is_available():
        raise DeviceError(f"--device {name}: this torch build or machine has no CUDA GPU; use --device cpu")
    if local_count > torch.cuda.device_count():
        raise DeviceError(f"{local_count} processes on this machine but {torch.cuda.device_count()} GPU(s)")
    return resolve_device(f"cuda:{local_rank}")


@contextlib.contextmanager
def join_process_group(device: str = "auto") -> Iterator[ProcessGroup]:
    """The process group the environment names (a group of one without it), for the block's length."""
    world = _env_int("WORLD_SIZE", 1)
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    local_count = _env_int("LOCAL_WORLD_SIZE", world)
    dev = device_for_rank(device, local_rank, local_count)
    if world == 1:
        yield ProcessGroup(SINGLE, 1, dev)
        return
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    dist.init_process_group(
        backend, rank=rank, world_size=world, device_id=dev if dev.type == "cuda" else None
    )
    logger.info(
        "data-parallel rank %d of %d (%s, local rank %d) on %s", rank, world, backend, local_rank, dev
    )
    try:
        yield ProcessGroup(Replica(rank, world), local_count, dev)
    finally:
        dist.destroy_process_group()


def spawn(nproc: int, fn: Callable[..., Any], *args: Any) -> None:
    """Run ``fn(*args)`` in ``nproc`` new processes on this machine, as the ranks of one group.

    Returns when all have finished; if one fails, the others are stopped and its error is raised.
    ``fn`` and ``args`` must be picklable (module-level function, plain values).
    """
    env = {"WORLD_SIZE": str(nproc), "LOCAL_WORLD_SIZE": str(nproc), "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(free_tcp_port())}  # fmt: skip
    mp.start_processes(_rank_main, args=(env, logging.getLogger().level, fn, args), nprocs=nproc,
                       start_method="spawn")  # fmt: skip


def _rank_main(rank: int, env: dict[str, str], log_level: int, fn: Callable[..., Any], args: tuple) -> None:
    os.environ.update(env, RANK=str(rank), LOCAL_RANK=str(rank))
    logging.basicConfig(level=log_level, format=f"%(levelname)s rank{rank} %(name)s: %(message)s")
    fn(*args)
