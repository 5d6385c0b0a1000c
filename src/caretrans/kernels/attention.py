"""Triton kernels of CARE's linear attention (stages 3-4): one program per (image, head), forward and backward.

Per head, with q, k the (N, D) feature-mapped queries and keys and v the (N, D) values:

    kv = k^T v / N,   kmean = sum_n k / N,   z = 1 / (q kmean + eps),   out = (q kv) * z

The forward reads k and v once (kv, kmean) and q once (out); the backward recomputes kv and
kmean, then reads q (dq, and the sums dkv, dkmean) and k, v (dk, dv). All arithmetic is fp32 and
the products are IEEE fp32 (no TF32): at N <= 196 and D <= 32 they are a sliver of the time.
"""
import torch

import triton
import triton.language as tl

from ._layout import pixel_strides

EPS = 1e-6
BLOCK_N = 64


@triton.jit
def _feature(x, ELU: tl.constexpr):
    """elu(x) + 1 (a positive kernel), or x itself."""
    if ELU:
        return tl.where(x > 0, x + 1.0, tl.exp(x))
    return x


@triton.jit
def _feature_grad(x, ELU: tl.constexpr):
    """Derivative of _feature at x."""
    if ELU:
        return tl.where(x > 0, 1.0, tl.exp(x))
    return tl.full(x.shape, 1.0, tl.float32)


@triton.jit
def _kv_and_kmean(qk_ptr, v_ptr, b, head, C, N, sqb, sqc, sqp, svb, svc, svp,
                  ELU: tl.constexpr, D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
    """kv = k^T v / N (BLOCK_D x BLOCK_D) and kmean = sum_n k / N (BLOCK_D) of one head."""
    d = tl.arange(0, BLOCK_D)
    dmask = d < D
    kv = tl.zeros((BLOCK_D, BLOCK_D), tl.float32)
    ksum = tl.zeros((BLOCK_D,), tl.float32)
    for start in range(0, N, BLOCK_N):
        n = start + tl.arange(0, BLOCK_N)
        mask = (n < N)[:, None] & dmask[None, :]
        k = tl.load(qk_ptr + b * sqb + (C + head * D + d)[None, :] * sqc + n[:, None] * sqp, mask=mask, other=0.0)
        k = tl.where(mask, _feature(k.to(tl.float32), ELU), 0.0)  # padding must not add elu(0) + 1
        v = tl.load(v_ptr + b * svb + (head * D + d)[None, :] * svc + n[:, None] * svp, mask=mask, other=0.0)
        kv += tl.dot(tl.trans(k), v.to(tl.float32), input_precision='ieee')
        ksum += tl.sum(k, axis=0)
    return kv / N, ksum / N


@triton.jit
def _forward_kernel(qk_ptr, v_ptr, out_ptr, C, N, num_heads, eps,
                    sqb, sqc, sqp, svb, svc, svp, sob, soc, sop,
                    ELU: tl.constexpr, D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
    pid = tl.program_id(0)
    b, head = pid // num_heads, pid % num_heads
    kv, kmean = _kv_and_kmean(qk_ptr, v_ptr, b, head, C, N, sqb, sqc, sqp, svb, svc, svp,
                              ELU, D, BLOCK_D, BLOCK_N)
    d = tl.arange(0, BLOCK_D)
    dmask = d < D
    for start in range(0, N, BLOCK_N):
        n = start + tl.arange(0, BLOCK_N)
        mask = (n < N)[:, None] & dmask[None, :]
        q = tl.load(qk_ptr + b * sqb + (head * D + d)[None, :] * sqc + n[:, None] * sqp, mask=mask, other=0.0)
        q = tl.where(mask, _feature(q.to(tl.float32), ELU), 0.0)
        z = 1.0 / (tl.sum(q * kmean[None, :], axis=1) + eps)
        out = tl.dot(q, kv, input_precision='ieee') * z[:, None]
        tl.store(out_ptr + b * sob + (head * D + d)[None, :] * soc + n[:, None] * sop,
                 out.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _backward_kernel(grad_ptr, qk_ptr, v_ptr, dqk_ptr, dv_ptr, C, N, num_heads, eps,
                     sgb, sgc, sgp, sqb, sqc, sqp, svb, svc, svp, sdqb, sdqc, sdqp, sdvb, sdvc, sdvp,
                     ELU: tl.constexpr, D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
    pid = tl.program_id(0)
    b, head = pid // num_heads, pid % num_heads
    kv, kmean = _kv_and_kmean(qk_ptr, v_ptr, b, head, C, N, sqb, sqc, sqp, svb, svc, svp,
                              ELU, D, BLOCK_D, BLOCK_N)
    d = tl.arange(0, BLOCK_D)
    dmask = d < D
    q_chan = (head * D + d)[None, :]
    k_chan = (C + head * D + d)[None, :]
    dkv = tl.zeros((BLOCK_D, BLOCK_D), tl.float32)
    dkmean = tl.zeros((BLOCK_D,), tl.float32)
    # Pass over q: out = (q kv) z with z = 1 / s, s = q kmean + eps.
    for start in range(0, N, BLOCK_N):
        n = start + tl.arange(0, BLOCK_N)
        mask = (n < N)[:, None] & dmask[None, :]
        q_raw = tl.load(qk_ptr + b * sqb + q_chan * sqc + n[:, None] * sqp, mask=mask, other=0.0).to(tl.float32)
        q = tl.where(mask, _feature(q_raw, ELU), 0.0)
        g = tl.load(grad_ptr + b * sgb + q_chan * sgc + n[:, None] * sgp, mask=mask, other=0.0).to(tl.float32)
        z = 1.0 / (tl.sum(q * kmean[None, :], axis=1) + eps)
        numerator = tl.dot(q, kv, input_precision='ieee')
        d_numerator = g * z[:, None]
        ds = -tl.sum(g * numerator, axis=1) * z * z
        dq = tl.dot(d_numerator, tl.trans(kv), input_precision='ieee') + ds[:, None] * kmean[None, :]
        tl.store(dqk_ptr + b * sdqb + q_chan * sdqc + n[:, None] * sdqp,
                 (dq * _feature_grad(q_raw, ELU)).to(dqk_ptr.dtype.element_ty), mask=mask)
        dkv += tl.dot(tl.trans(q), d_numerator, input_precision='ieee')
        dkmean += tl.sum(q * ds[:, None], axis=0)
    # Pass over k and v: kv = k^T v / N and kmean = sum_n k / N.
    for start in range(0, N, BLOCK_N):
        n = start + tl.arange(0, BLOCK_N)
        mask = (n < N)[:, None] & dmask[None, :]
        k_raw = tl.load(qk_ptr + b * sqb + k_chan * sqc + n[:, None] * sqp, mask=mask, other=0.0).to(tl.float32)
        k = tl.where(mask, _feature(k_raw, ELU), 0.0)
        v = tl.load(v_ptr + b * svb + q_chan * svc + n[:, None] * svp, mask=mask, other=0.0).to(tl.float32)
        dk = (tl.dot(v, tl.trans(dkv), input_precision='ieee') + dkmean[None, :]) / N
        tl.store(dqk_ptr + b * sdqb + k_chan * sdqc + n[:, None] * sdqp,
                 (dk * _feature_grad(k_raw, ELU)).to(dqk_ptr.dtype.element_ty), mask=mask)
        dv = tl.dot(k, dkv, input_precision='ieee') / N
        tl.store(dv_ptr + b * sdvb + q_chan * sdvc + n[:, None] * sdvp, dv.to(dv_ptr.dtype.element_ty), mask=mask)


def _meta(v: torch.Tensor, num_heads: int, elu: bool):
    head_dim = v.shape[1] // num_heads
    # tl.dot needs every tile side >= 16.
    return dict(ELU=elu, D=head_dim, BLOCK_D=max(16, triton.next_power_of_2(head_dim)), BLOCK_N=BLOCK_N)


def forward(qk: torch.Tensor, v: torch.Tensor, num_heads: int, elu: bool, out: torch.Tensor) -> torch.Tensor:
    """Write the attention of (qk, v) into `out` (same shape as v)."""
    B, C, H, W = v.shape
    qk, sq = pixel_strides(qk)
    v, sv = pixel_strides(v)
    _, so = pixel_strides(out)
    _forward_kernel[(B * num_heads,)](qk, v, out, C, H * W, num_heads, EPS, *sq, *sv, *so,
                                      **_meta(v, num_heads, elu))
    return out


def backward(grad: torch.Tensor, qk: torch.Tensor, v: torch.Tensor, num_heads: int, elu: bool,
             dqk: torch.Tensor, dv: torch.Tensor):
    """Write the gradients of the attention's output `grad` w.r.t. qk and v into dqk and dv."""
    B, C, H, W = v.shape
    grad, sg = pixel_strides(grad)
    qk, sq = pixel_strides(qk)
    v, sv = pixel_strides(v)
    _, sdq = pixel_strides(dqk)
    _, sdv = pixel_strides(dv)
    _backward_kernel[(B * num_heads,)](grad, qk, v, dqk, dv, C, H * W, num_heads, EPS, *sg, *sq, *sv, *sdq, *sdv,
                                       **_meta(v, num_heads, elu))
    return dqk, dv
