"""A second, randomly changed view of a batch of one modality, on its device, for the two-view contrastive loss of
single-modality samples (``contrastive.py``). Mild on purpose: the view must keep what the sample is.

    image  uint8 (B, H, W, 3): shifted by up to 1/8 of the side (wrapping), brightness x U(0.8, 1.2)
    audio  float32 (B, N):     shifted in time by up to 10 %, gain x U(0.7, 1.3), noise at 1 % of the peak
    text   int64 (B, L):       each token dropped (set to padding) with probability 0.15, the first never
"""

from __future__ import annotations

import torch


def _shift(x: torch.Tensor, dims: tuple[int, ...], fraction: float) -> torch.Tensor:
    shifts = tuple(int(torch.randint(-int(x.shape[d] * fraction), int(x.shape[d] * fraction) + 1, ()).item())
                   for d in dims)
    return torch.roll(x, shifts, dims)


def augmented_view(modality: str, x: torch.Tensor) -> torch.Tensor:
    b = len(x)
    if modality == "image":
        bright = torch.empty(b, 1, 1, 1, device=x.device).uniform_(0.8, 1.2)
        return (_shift(x.float(), (1, 2), 0.125) * bright).clamp(0, 255).to(x.dtype)
    if modality == "audio":
        gain = torch.empty(b, 1, device=x.device).uniform_(0.7, 1.3)
        peak = x.abs().amax(1, keepdim=True)
        return _shift(x, (1,), 0.1) * gain + 0.01 * peak * torch.randn_like(x)
    if modality == "text":
        drop = torch.rand(x.shape, device=x.device) < 0.15
        drop[:, 0] = False
        return x.masked_fill(drop, 0)
    raise ValueError(f"no view for modality {modality!r}")
