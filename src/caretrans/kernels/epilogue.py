"""Triton epilogues of the interaction units' 1x1 convs: what follows the matrix product, in one pass.

bias_gelu: GELU(y + bias) after the expansion. residual: x + s * (scale * u + scale' * (y + bias))
after the projection (the block's residual, layer scale and drop-path factor s; or Inter1's
residual). Each program takes a (pixels x channels) tile of one image; the backward kernels
sum their channel gradients over several tiles before one fp32 atomic add per channel.
"""
import torch

import triton
import triton.language as tl

from ._layout import channel_tile, pixel_strides

_SQRT1_2 = tl.constexpr(0.7071067811865476)
_INV_SQRT_2PI = tl.constexpr(0.3989422804014327)
# The backward kernels aim at about this many programs: enough for every SM, few atomics.
_BACKWARD_PROGRAMS = 1024


@triton.jit
def _tile(pid_bp, pid_c, C, P, tiles_per_image, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """Image, pixels, channels and mask of a tile."""
    b = pid_bp // tiles_per_image
    p = (pid_bp % tiles_per_image) * BLOCK_P + tl.arange(0, BLOCK_P)
    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    return b, p, c, (p < P)[:, None] & (c < C)[None, :]


@triton.jit
def _offsets(b, p, c, sb, sc, sp):
    return b * sb + c[None, :] * sc + p[:, None] * sp


@triton.jit
def _gelu_input(y_ptr, bias_ptr, b, p, c, mask, syb, syc, syp, C):
    """y + bias in fp32, the bias rounded to y's dtype first (as F.linear adds it)."""
    y = tl.load(y_ptr + _offsets(b, p, c, syb, syc, syp), mask=mask, other=0.0).to(tl.float32)
    bias = tl.load(bias_ptr + c, mask=c < C, other=0.0).to(y_ptr.dtype.element_ty).to(tl.float32)
    return y + bias[None, :]


@triton.jit
def _bias_gelu_forward_kernel(y_ptr, bias_ptr, out_ptr, C, P, tiles_per_image,
                              syb, syc, syp, sob, soc, sop, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    b, p, c, mask = _tile(tl.program_id(0), tl.program_id(1), C, P, tiles_per_image, BLOCK_P, BLOCK_C)
    x = _gelu_input(y_ptr, bias_ptr, b, p, c, mask, syb, syc, syp, C)
    out = 0.5 * x * (1.0 + tl.math.erf(x * _SQRT1_2))
    tl.store(out_ptr + _offsets(b, p, c, sob, soc, sop), out.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _bias_gelu_backward_kernel(grad_ptr, y_ptr, bias_ptr, dy_ptr, dbias_ptr, C, P, tiles_per_image, num_tiles,
                               tiles_per_program, sgb, sgc, sgp, syb, syc, syp, sdb, sdc, sdp,
                               BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    dbias = tl.zeros((BLOCK_C,), tl.float32)
    for i in range(tiles_per_program):
        tile = tl.program_id(0) * tiles_per_program + i
        b, p, c, mask = _tile(tile, tl.program_id(1), C, P, tiles_per_image, BLOCK_P, BLOCK_C)
        mask = mask & (tile < num_tiles)
        x = _gelu_input(y_ptr, bias_ptr, b, p, c, mask, syb, syc, syp, C)
        g = tl.load(grad_ptr + _offsets(b, p, c, sgb, sgc, sgp), mask=mask, other=0.0).to(tl.float32)
        dgelu = 0.5 * (1.0 + tl.math.erf(x * _SQRT1_2)) + x * tl.exp(-0.5 * x * x) * _INV_SQRT_2PI
        dy = tl.where(mask, g * dgelu, 0.0)
        tl.store(dy_ptr + _offsets(b, p, c, sdb, sdc, sdp), dy.to(dy_ptr.dtype.element_ty), mask=mask)
        dbias += tl.sum(dy, axis=0)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    tl.atomic_add(dbias_ptr + c, dbias, mask=c < C)


@triton.jit
def _residual_branch(y_ptr, bias_ptr, u_ptr, scale_ptr, b, p, c, mask, C, syb, syc, syp, sub, suc, sup,
                     HAS_U: tl.constexpr, HAS_SCALE: tl.constexpr, SCALE_Y: tl.constexpr):
    """(branch before the drop-path factor, y + bias, u, scale) of a tile, in fp32."""
    cmask = c < C
    bias = tl.load(bias_ptr + c, mask=cmask, other=0.0).to(y_ptr.dtype.element_ty).to(tl.float32)
    yb = tl.load(y_ptr + _offsets(b, p, c, syb, syc, syp), mask=mask, other=0.0).to(tl.float32) + bias[None, :]
    u = tl.zeros(yb.shape, tl.float32)
    scale = tl.full((yb.shape[1],), 1.0, tl.float32)
    if HAS_U:
        u = tl.load(u_ptr + _offsets(b, p, c, sub, suc, sup), mask=mask, other=0.0).to(tl.float32)
    if HAS_SCALE:
        scale = tl.load(scale_ptr + c, mask=cmask, other=0.0).to(tl.float32)
    if SCALE_Y:
        branch = scale[None, :] * (u + yb)
    else:
        branch = u * scale[None, :] + yb
    return branch, yb, u, scale


@triton.jit
def _residual_forward_kernel(x_ptr, y_ptr, bias_ptr, u_ptr, scale_ptr, sample_ptr, out_ptr, C, P, tiles_per_image,
                             sxb, sxc, sxp, syb, syc, syp, sub, suc, sup, sob, soc, sop,
                             HAS_U: tl.constexpr, HAS_SCALE: tl.constexpr, SCALE_Y: tl.constexpr,
                             HAS_SAMPLE: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    b, p, c, mask = _tile(tl.program_id(0), tl.program_id(1), C, P, tiles_per_image, BLOCK_P, BLOCK_C)
    branch, _, _, _ = _residual_branch(y_ptr, bias_ptr, u_ptr, scale_ptr, b, p, c, mask, C, syb, syc, syp,
                                       sub, suc, sup, HAS_U, HAS_SCALE, SCALE_Y)
    if HAS_SAMPLE:
        branch = branch * tl.load(sample_ptr + b).to(tl.float32)
    x = tl.load(x_ptr + _offsets(b, p, c, sxb, sxc, sxp), mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + _offsets(b, p, c, sob, soc, sop), (x + branch).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _residual_backward_kernel(grad_ptr, y_ptr, bias_ptr, u_ptr, scale_ptr, sample_ptr, dy_ptr, du_ptr,
                              dbias_ptr, dscale_ptr, C, P, tiles_per_image, num_tiles, tiles_per_program,
                              sgb, sgc, sgp, syb, syc, syp, sub, suc, sup, sdyb, sdyc, sdyp, sdub, sduc, sdup,
                              HAS_U: tl.constexpr, HAS_SCALE: tl.constexpr, SCALE_Y: tl.constexpr,
                              HAS_SAMPLE: tl.constexpr, WRITE_DU: tl.constexpr,
                              BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    dbias = tl.zeros((BLOCK_C,), tl.float32)
    dscale = tl.zeros((BLOCK_C,), tl.float32)
    for i in range(tiles_per_program):
        tile = tl.program_id(0) * tiles_per_program + i
        b, p, c, mask = _tile(tile, tl.program_id(1), C, P, tiles_per_image, BLOCK_P, BLOCK_C)
        mask = mask & (tile < num_tiles)
        _, yb, u, scale = _residual_branch(y_ptr, bias_ptr, u_ptr, scale_ptr, b, p, c, mask, C, syb, syc, syp,
                                           sub, suc, sup, HAS_U, HAS_SCALE, SCALE_Y)
        g = tl.load(grad_ptr + _offsets(b, p, c, sgb, sgc, sgp), mask=mask, other=0.0).to(tl.float32)
        if HAS_SAMPLE:
            g = g * tl.load(sample_ptr + b, mask=tile < num_tiles, other=0.0).to(tl.float32)
        g = tl.where(mask, g, 0.0)
        dy = g * scale[None, :] if SCALE_Y else g
        tl.store(dy_ptr + _offsets(b, p, c, sdyb, sdyc, sdyp), dy.to(dy_ptr.dtype.element_ty), mask=mask)
        if WRITE_DU:
            du = g * scale[None, :]
            tl.store(du_ptr + _offsets(b, p, c, sdub, sduc, sdup), du.to(du_ptr.dtype.element_ty), mask=mask)
        dbias += tl.sum(dy, axis=0)
        if SCALE_Y:
            dscale += tl.sum(g * (u + yb), axis=0)
        else:
            dscale += tl.sum(g * u, axis=0)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    tl.atomic_add(dbias_ptr + c, dbias, mask=c < C)
    if HAS_SCALE:
        tl.atomic_add(dscale_ptr + c, dscale, mask=c < C)


def _grid(t: torch.Tensor, backward: bool = False):
    """(grid, tiles_per_image, num_tiles, tiles_per_program, meta) of the tiles covering map t."""
    B, C, H, W = t.shape
    block_c, block_p = channel_tile(C)
    tiles_per_image = triton.cdiv(H * W, block_p)
    num_tiles, channel_tiles = B * tiles_per_image, triton.cdiv(C, block_c)
    per_program = max(1, num_tiles * channel_tiles // _BACKWARD_PROGRAMS) if backward else 1
    grid = (triton.cdiv(num_tiles, per_program), channel_tiles)
    return grid, tiles_per_image, num_tiles, per_program, dict(BLOCK_P=block_p, BLOCK_C=block_c)


def bias_gelu_forward(y: torch.Tensor, bias: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    B, C, H, W = y.shape
    y, sy = pixel_strides(y)
    grid, tiles_per_image, _, _, meta = _grid(y)
    _bias_gelu_forward_kernel[grid](y, bias, out, C, H * W, tiles_per_image, *sy, *pixel_strides(out)[1], **meta)
    return out


def bias_gelu_backward(grad: torch.Tensor, y: torch.Tensor, bias: torch.Tensor, dy: torch.Tensor):
    """(d y, d bias) of bias_gelu."""
    B, C, H, W = y.shape
    grad, sg = pixel_strides(grad)
    y, sy = pixel_strides(y)
    dbias = torch.zeros(C, dtype=torch.float32, device=y.device)
    grid, tiles_per_image, num_tiles, per_program, meta = _grid(y, backward=True)
    _bias_gelu_backward_kernel[grid](grad, y, bias, dy, dbias, C, H * W, tiles_per_image, num_tiles, per_program,
                                     *sg, *sy, *pixel_strides(dy)[1], **meta)
    return dy, dbias.to(bias.dtype)


def _flags(u, scale, sample, scale_y):
    return dict(HAS_U=u is not None, HAS_SCALE=scale is not None, SCALE_Y=scale is not None and scale_y,
                HAS_SAMPLE=sample is not None)


def residual_forward(x, y, bias, u, scale, sample, scale_y: bool, out):
    B, C, H, W = y.shape
    flags = _flags(u, scale, sample, scale_y)
    x, sx = pixel_strides(x)
    y, sy = pixel_strides(y)
    u, su = pixel_strides(u) if u is not None else (y, sy)  # absent operands: any pointer, never read
    grid, tiles_per_image, _, _, meta = _grid(y)
    _residual_forward_kernel[grid](x, y, bias, u, bias if scale is None else scale, bias if sample is None else sample,
                                   out, C, H * W, tiles_per_image, *sx, *sy, *su, *pixel_strides(out)[1],
                                   **flags, **meta)
    return out


def residual_backward(grad, y, bias, u, scale, sample, scale_y: bool, dy, du):
    """(d y, d u or None where it equals d y, d bias, d scale or None) of residual."""
    B, C, H, W = y.shape
    grad, sg = pixel_strides(grad)
    y, sy = pixel_strides(y)
    flags = _flags(u, scale, sample, scale_y)
    write_du = u is not None and not flags['SCALE_Y'] and scale is not None
    u, su = pixel_strides(u) if u is not None else (y, sy)
    dbias = torch.zeros(C, dtype=torch.float32, device=y.device)
    dscale = torch.zeros(C, dtype=torch.float32, device=y.device)
    du_strides = pixel_strides(du)[1] if write_du else sy
    grid, tiles_per_image, num_tiles, per_program, meta = _grid(y, backward=True)
    _residual_backward_kernel[grid](grad, y, bias, u, bias if scale is None else scale,
                                    bias if sample is None else sample, dy, du if write_du else dy, dbias, dscale,
                                    C, H * W, tiles_per_image, num_tiles, per_program, *sg, *sy, *su,
                                    *pixel_strides(dy)[1], *du_strides, WRITE_DU=write_du, **flags, **meta)
    return (dy, du if write_du else None, dbias.to(bias.dtype),
            dscale.to(scale.dtype) if scale is not None else None)
