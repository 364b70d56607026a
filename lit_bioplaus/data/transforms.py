"""The one image preprocessing of the library: what the DataModules apply to their
batches, and what a zoo entry's ``Weights.transforms()`` applies to a user's images."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ImagePreprocessing(nn.Module):
    """Raw images to network inputs: zero-pad, scale to ``[0, 1]``, normalise.

    ``(N, C, H, W)`` or ``(C, H, W)`` images, uint8 (``0..255``) or floating point in
    ``[0, 1]``, become float32 ``(x - mean) / std`` per channel, zero-padded by ``pad``
    pixels on each side first (in the raw range, as the DataModules pad), so
    ``(..., C, H + 2 pad, W + 2 pad)``. Like torchvision's weight presets, it does no
    resizing: the images must already have the model's size.

    Args:
        mean: per-channel mean of the images scaled to ``[0, 1]``, length ``C``.
        std: per-channel standard deviation, length ``C``.
        pad: zero padding on each side.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], pad: int = 0) -> None:
        super().__init__()
        if len(mean) != len(std) or not len(mean):
            raise ValueError(f"mean and std need one value per channel, got {list(mean)} and {list(std)}")
        if pad < 0:
            raise ValueError(f"pad must be non-negative, got {pad}")
        self.mean, self.std, self.pad = tuple(float(m) for m in mean), tuple(float(s) for s in std), int(pad)
        self.register_buffer("_mean", torch.tensor(self.mean).view(-1, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(self.std).view(-1, 1, 1), persistent=False)

    def pad_images(self, images: Tensor) -> Tensor:
        """Zero padding only (any dtype): ``(..., H, W) -> (..., H + 2 pad, W + 2 pad)``."""
        return F.pad(images, (self.pad,) * 4) if self.pad else images

    def normalize(self, images: Tensor) -> Tensor:
        """Scaling and normalisation only: uint8 is divided by 255 first."""
        if images.shape[-3] != len(self.mean):
            raise ValueError(f"expected {len(self.mean)}-channel images, got shape {tuple(images.shape)}")
        if not (images.dtype == torch.uint8 or images.is_floating_point()):
            raise ValueError(f"images must be uint8 (0..255) or floating point in [0, 1], got {images.dtype}")
        x = images.float().div_(255) if images.dtype == torch.uint8 else images.to(torch.float32, copy=True)
        return x.sub_(self._mean.to(x.device)).div_(self._std.to(x.device))

    def forward(self, images: Tensor) -> Tensor:
        return self.normalize(self.pad_images(images))

    def config(self) -> dict[str, Any]:
        """The constructor arguments (what a zoo manifest records)."""
        return {"mean": list(self.mean), "std": list(self.std), "pad": self.pad}

    def extra_repr(self) -> str:
        return f"mean={self.mean}, std={self.std}, pad={self.pad}"
