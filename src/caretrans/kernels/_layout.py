"""Layout helpers shared by the launchers: (batch, channel, pixel) strides of 4-D maps, output allocation."""
import torch

import triton


def pixel_strides(t: torch.Tensor):
    """(t, (stride_b, stride_c, stride_p)) with pixel p = h * W + w; copies the rare layout where that is no stride."""
    B, C, H, W = t.shape
    if W == 1:
        return t, (t.stride(0), t.stride(1), t.stride(2))
    if H == 1 or t.stride(2) == W * t.stride(3):  # NCHW, channels-last and channel slices of either
        return t, (t.stride(0), t.stride(1), t.stride(3))
    t = t.contiguous()
    return t, (t.stride(0), t.stride(1), t.stride(3))


def channel_tile(channels: int, pixels_per_tile: int = 2048, max_channels: int = 64):
    """(BLOCK_C, BLOCK_P) for a tile of about `pixels_per_tile` values spanning up to `max_channels` channels."""
    block_c = min(triton.next_power_of_2(channels), max_channels)
    return block_c, max(16, pixels_per_tile // block_c)
