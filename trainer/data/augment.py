"""Image augmentation of training batches: random shift (DrQ) and colour jitter."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def random_shift(obs: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Random-shift augmentation of [N, H, W, C] frames by up to ±pad pixels (replicate padding).

    Returns float frames in [0, 255] of the same shape (the encoder divides by 255 itself).
    """
    n, h, w, _ = obs.shape
    x = F.pad(obs.to(torch.float32).permute(0, 3, 1, 2), (pad, pad, pad, pad), mode="replicate")
    x = x.permute(0, 2, 3, 1)
    sy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    sx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    rows = (torch.arange(h)[None, :] + sy[:, None])[:, :, None]
    cols = (torch.arange(w)[None, :] + sx[:, None])[:, None, :]
    return x[torch.arange(n)[:, None, None], rows, cols]


def colour_jitter(frames: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor:
    """Per-frame random channel gains in [1 − s, 1 + s] and a brightness offset in ±s·128 on float
    [N, H, W, C] frames in [0, 255], clamped back to that range.

    Why: the unseen split repaints the floor, walls, hazards and pillars; an encoder that only saw the
    training colours keys on them.
    """
    n, c = frames.shape[0], frames.shape[-1]
    gain = 1.0 + strength * (2.0 * torch.rand(n, 1, 1, c, generator=generator) - 1.0)
    offset = strength * 128.0 * (2.0 * torch.rand(n, 1, 1, 1, generator=generator) - 1.0)
    return (frames * gain + offset).clamp_(0.0, 255.0)
