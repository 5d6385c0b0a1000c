"""PyTorch references of the fused kernels: what each custom op computes, and its implementation on the CPU.

Each function computes exactly what the corresponding part of caretrans.models.care computes
(tests/test_kernels.py checks both), on the tensors the op receives.
"""
from typing import Optional

import torch
import torch.nn.functional as F


def linear_attention(qk: torch.Tensor, v: torch.Tensor, num_heads: int, elu: bool) -> torch.Tensor:
    """LinearAttention after its qk projection: qk holds q then k, v is the attention's input."""
    B, C, H, W = v.shape
    N, head_dim = H * W, C // num_heads
    q, k = qk.chunk(2, dim=1)
    if elu:
        q, k = F.elu(q) + 1.0, F.elu(k) + 1.0
    # Per head, in the (head_dim, N) layout that NCHW already is (channel c belongs to head
    # c // head_dim): out^T = (v k^T / N) q / (mean_n(k)^T q + eps). Three batched matmuls, one
    # transpose, a spatial mean and a division: ops that mobile runtimes (XNNPACK) run natively.
    shape = (B * num_heads, head_dim, N)
    k_mean = k.mean(dim=(2, 3), keepdim=True).reshape(B * num_heads, 1, head_dim)
    q, k, v = q.reshape(shape), k.reshape(shape), v.reshape(shape)
    kv = torch.bmm(v, k.transpose(1, 2)) * (1.0 / N)  # (B*h, hd, hd); a float scalar, as runtimes take it
    return (torch.bmm(kv, q) / (torch.bmm(k_mean, q) + 1e-6)).reshape(B, C, H, W)


def linear_attention_fp32(qk: torch.Tensor, v: torch.Tensor, num_heads: int, elu: bool) -> torch.Tensor:
    """linear_attention computed in fp32 whatever the inputs' dtype and autocast, returned in v's dtype.

    Its sums over all positions (k^T v, the k mean and the normaliser) overflow fp16 on inputs of
    large magnitude (NaN logits at 1e4 x the usual input scale) and lose most of bf16's bits; the
    Triton kernels compute in fp32 too. Not for TorchScript (the autocast context).
    """
    device = v.device.type
    if qk.dtype == v.dtype == torch.float32 and not torch.is_autocast_enabled(device):
        return linear_attention(qk, v, num_heads, elu)  # fp32 already (the autocast context costs 10 us)
    with torch.autocast(device, enabled=False):
        return linear_attention(qk.float(), v.float(), num_heads, elu).to(v.dtype)


def _depthwise(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    kh, kw = weight.shape[-2:]
    return F.conv2d(x, weight, bias, padding=(kh // 2, kw // 2), groups=x.shape[1])


def token_mix(x: torch.Tensor, glob: Optional[torch.Tensor], w3: torch.Tensor, b3: torch.Tensor,
              w7: torch.Tensor, b7: torch.Tensor, wv: Optional[torch.Tensor], bv: Optional[torch.Tensor],
              wh: Optional[torch.Tensor], bh: Optional[torch.Tensor]) -> torch.Tensor:
    """TokenMixer: [glob | 3x3(l3) | 7x7(l7)] where x = [l3 | l7], or, without glob,
    [11x1(a) + 1x11(a) | 3x3(l3) | 7x7(l7)] where x = [a | l3 | l7]."""
    if glob is None:
        a, l3, l7 = x.chunk(3, dim=1)
        glob = _depthwise(a, wv, bv) + _depthwise(a, wh, bh)
    else:
        l3, l7 = x.chunk(2, dim=1)
    return torch.cat([glob, _depthwise(l3, w3, b3), _depthwise(l7, w7, b7)], dim=1)


def _channel(v: torch.Tensor) -> torch.Tensor:
    return v.view(1, -1, 1, 1)


def bias_gelu(y: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """GELU(y + bias): the 1x1 expansion's epilogue (bias in y's dtype, as F.linear under autocast)."""
    return F.gelu(y + _channel(bias.to(y.dtype)))


def residual(x: torch.Tensor, y: torch.Tensor, bias: torch.Tensor, u: Optional[torch.Tensor],
             scale: Optional[torch.Tensor], sample_scale: Optional[torch.Tensor], scale_y: bool) -> torch.Tensor:
    """x + s * (scale * u + scale' * (y + bias)), scale' = scale if scale_y else 1, s the per-image drop-path
    factor: the 1x1 projection's epilogue (no u, no scale: Inter1's residual; all: the block's output)."""
    branch = y + _channel(bias.to(y.dtype))  # the projection's output, as the conv with bias computes it
    if u is not None:
        if scale is None:
            branch = u + branch
        elif scale_y:
            branch = _channel(scale) * (u + branch)  # CareBlock: layer_scale * (u + inter2(u))
        else:
            branch = u * _channel(scale) + branch  # re-parameterised: the scale is folded into the projection
    elif scale is not None and scale_y:
        branch = _channel(scale) * branch
    if sample_scale is not None:
        branch = branch * sample_scale.view(-1, 1, 1, 1)
    return x + branch
