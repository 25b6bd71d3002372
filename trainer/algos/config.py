"""What the offline and the online learner share in their configs and options (torch-free, like
their configs): the ``compute`` section and the ``--device`` option."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from reachsafe.protocol.config import Config, option


@dataclass
class ComputeConfig(Config):
    """How the learner's arithmetic runs; the device itself is a command-line choice (``--device``)."""

    bf16: bool = option(
        False,
        "Run the forward passes under bfloat16 autocast (weights, optimiser state and exports stay fp32; "
        "default off).",
    )
    compile: bool = option(
        False,
        "torch.compile the networks the learner runs (the first updates then wait for compilation; "
        "default off).",
    )


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    """``--device auto|cpu|cuda|cuda:N``, the one shape every verb that trains takes
    (:func:`reachsafe.trainer.models.device.resolve_device` reads it)."""
    parser.add_argument(
        "--device",
        default="auto",
        metavar="auto|cpu|cuda|cuda:N",
        help="torch device of the learner; auto: the current CUDA GPU when one is present, else the CPU "
        "[default: auto]",
    )
