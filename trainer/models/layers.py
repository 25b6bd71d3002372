"""Building blocks shared by the agent's networks and the world model."""

from __future__ import annotations

from torch import nn


def mlp(inp: int, hidden: int, out: int, layers: int = 2) -> nn.Sequential:
    """``layers`` hidden Linear + ReLU layers of width ``hidden``, then a Linear to ``out``."""
    mods: list[nn.Module] = []
    dim = inp
    for _ in range(layers):
        mods += [nn.Linear(dim, hidden), nn.ReLU()]
        dim = hidden
    mods.append(nn.Linear(dim, out))
    return nn.Sequential(*mods)
