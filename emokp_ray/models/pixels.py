"""What every network does first: check raw pixels against its input shape and normalize them."""

from __future__ import annotations

import torch


def normalized_pixels(
    x: torch.Tensor, in_chans: int, input_size: int, mean: torch.Tensor, std: torch.Tensor
) -> torch.Tensor:
    """Raw pixels [B, C, S, S] or [B, S, S] (grey; 0..255, any dtype) -> (x - mean) / std, float32 [B, C, S, S].
    A ValueError naming the expected shape for anything else."""
    if x.ndim == 3 and in_chans == 1:
        x = x.unsqueeze(1)
    if x.ndim != 4 or x.shape[1] != in_chans or x.shape[2] != input_size or x.shape[3] != input_size:
        raise ValueError(f"expected input [B, {in_chans}, {input_size}, {input_size}] raw pixels, got {list(x.shape)}")
    # float32 arithmetic whatever comes in (uint8 has no subtraction below 0)
    return (x.float() - mean.float()) / std.float()
