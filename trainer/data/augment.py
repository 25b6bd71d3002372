"""Image augmentation of training batches: random shift (DrQ) and colour jitter.

The random numbers are drawn first, on the CPU, one row per frame (:func:`draw_augmentation`), and
applied where the frames are (:func:`augment`): a run draws the same augmentation on any device,
and data-parallel processes draw the whole batch's and keep their own rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class AugmentDraws:
    """One batch's augmentation, one row per frame: shifts [N, 2] (rows, columns) in [0, 2·pad],
    channel gains [N, 1, 1, C] and brightness offsets [N, 1, 1, 1]; None where that part is off."""

    pad: int
    shifts: torch.Tensor | None
    gains: torch.Tensor | None
    offsets: torch.Tensor | None

    def rows(self, part: slice) -> AugmentDraws:
        """The draws of frames ``part`` only."""
        return AugmentDraws(
            self.pad, *(None if t is None else t[part] for t in (self.shifts, self.gains, self.offsets))
        )


def draw_augmentation(
    frames: int, channels: int, pad: int, colour: float, generator: torch.Generator
) -> AugmentDraws:
    """Shifts by up to ±``pad`` pixels (0: none); gains in [1 − s, 1 + s] per frame and channel and
    offsets within ±s·128 per frame for s = ``colour`` (0: none), drawn in that order."""
    shifts = gains = offsets = None
    if pad > 0:
        rows = torch.randint(0, 2 * pad + 1, (frames,), generator=generator)
        cols = torch.randint(0, 2 * pad + 1, (frames,), generator=generator)
        shifts = torch.stack([rows, cols], dim=1)
    if colour > 0:
        gains = 1.0 + colour * (2.0 * torch.rand(frames, 1, 1, channels, generator=generator) - 1.0)
        offsets = colour * 128.0 * (2.0 * torch.rand(frames, 1, 1, 1, generator=generator) - 1.0)
    return AugmentDraws(pad, shifts, gains, offsets)


def augment(frames: torch.Tensor, draws: AugmentDraws) -> torch.Tensor:
    """[N, H, W, C] frames augmented by ``draws``: float in [0, 255] when anything applies, else as given."""
    x = frames
    if draws.shifts is not None:
        x = random_shift(x, draws.shifts.to(x.device, non_blocking=True), draws.pad)
    if draws.gains is not None and draws.offsets is not None:
        gains = draws.gains.to(x.device, non_blocking=True)
        x = colour_jitter(x.to(torch.float32), gains, draws.offsets.to(x.device, non_blocking=True))
    return x


def random_shift(obs: torch.Tensor, shifts: torch.Tensor, pad: int) -> torch.Tensor:
    """[N, H, W, C] frames shifted by ``shifts`` [N, 2] − ``pad`` pixels (rows, columns) with
    replicate padding: DrQ's pad-and-crop.

    Returns float frames in [0, 255] (the encoder divides by 255 itself). Padding and cropping are
    one gather of whole pixels at clamped coordinates, on the frames as given (uint8 from a dataset).
    """
    n, h, w, c = obs.shape
    device = obs.device
    rows = (torch.arange(h, device=device)[None, :] + shifts[:, :1] - pad).clamp_(0, h - 1)
    cols = (torch.arange(w, device=device)[None, :] + shifts[:, 1:] - pad).clamp_(0, w - 1)
    pixel = torch.arange(n, device=device)[:, None, None] * (h * w) + rows[:, :, None] * w + cols[:, None, :]
    return obs.reshape(n * h * w, c).index_select(0, pixel.reshape(-1)).reshape(n, h, w, c).to(torch.float32)


def colour_jitter(frames: torch.Tensor, gains: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """``frames · gains + offsets`` on float [N, H, W, C] frames in [0, 255], clamped back to that range.

    Why: the unseen split repaints the floor, walls, hazards and pillars; an encoder that only saw the
    training colours keys on them.
    """
    return (frames * gains + offsets).clamp_(0.0, 255.0)
