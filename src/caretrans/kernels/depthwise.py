"""Triton token mixer: CARE's split, depthwise convs and concatenation in one pass over the map.

The features [a | l3 | l7] (g channels each) become [global(a) | 3x3(l3) | 7x7(l7)], where the
global part is the 11x1 + 1x11 long-range convs (stages 1-2, computed here) or the linear
attention's output (stages 3-4, copied in). One launch covers the three parts (grid axis 1),
each program a tile of pixels x channels of one image, reading the taps straight from the
input map (any layout; channels-last reads whole channel rows) with zero padding by masks.

The input gradient is the same kernel on the output gradient with the kernels flipped; the
weight and bias gradients come from a second kernel that accumulates every tap's sum over a
run of tiles in registers and adds it to fp32 buffers with one atomic add per program.
"""
import torch

import triton
import triton.language as tl

from ._layout import channel_tile

# The weight-gradient kernel aims at about this many programs: enough for every SM, few atomics.
_WGRAD_PROGRAMS = 512


@triton.jit
def _conv_taps(acc, src_ptr, w_ptr, b, h, w, pmask, c_src, c, cmask, H, W, ssb, ssc, ssh, ssw,
               KH: tl.constexpr, KW: tl.constexpr):
    """acc + a KHxKW depthwise conv ('same' zero padding) of source channels c_src, weights of channels c."""
    for i in range(KH):
        hh = h + (i - KH // 2)
        for j in range(KW):
            ww = w + (j - KW // 2)
            inside = pmask & (hh >= 0) & (hh < H) & (ww >= 0) & (ww < W)
            x = tl.load(src_ptr + b * ssb + c_src[None, :] * ssc + (hh * ssh + ww * ssw)[:, None],
                        mask=inside[:, None] & cmask[None, :], other=0.0)
            weight = tl.load(w_ptr + c * (KH * KW) + (i * KW + j), mask=cmask, other=0.0)
            acc += x.to(tl.float32) * weight.to(tl.float32)[None, :]
    return acc


@triton.jit
def _add_bias(acc, bias_ptr, c, cmask, HAS_BIAS: tl.constexpr):
    if HAS_BIAS:
        acc += tl.load(bias_ptr + c, mask=cmask, other=0.0).to(tl.float32)[None, :]
    return acc


@triton.jit
def _mix_kernel(src_ptr, glob_ptr, dst_ptr, w3_ptr, b3_ptr, w7_ptr, b7_ptr, wv_ptr, bv_ptr, wh_ptr, bh_ptr,
                G, H, W, tiles_per_image, src_shift, dst_shift,
                ssb, ssc, ssh, ssw, sgb, sgc, sgh, sgw, sdb, sdc, sdh, sdw,
                FIRST_PART: tl.constexpr, GLOB: tl.constexpr, HAS_BIAS: tl.constexpr,
                K3: tl.constexpr, K7: tl.constexpr, KL: tl.constexpr,
                BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """dst[part g + c] = part's conv of src[part g - src_shift + c] (part 0: long-range or a copy of glob)."""
    pid = tl.program_id(0)
    b = pid // tiles_per_image
    p = (pid % tiles_per_image) * BLOCK_P + tl.arange(0, BLOCK_P)
    pmask = p < H * W
    h, w = p // W, p % W
    part = tl.program_id(1) + FIRST_PART
    c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = c < G
    c_src = part * G - src_shift + c
    acc = tl.zeros((BLOCK_P, BLOCK_C), tl.float32)
    if part == 0:
        if GLOB:
            acc = tl.load(glob_ptr + b * sgb + c[None, :] * sgc + (h * sgh + w * sgw)[:, None],
                          mask=pmask[:, None] & cmask[None, :], other=0.0).to(tl.float32)
        else:
            acc = _conv_taps(acc, src_ptr, wv_ptr, b, h, w, pmask, c_src, c, cmask, H, W, ssb, ssc, ssh, ssw, KL, 1)
            acc = _conv_taps(acc, src_ptr, wh_ptr, b, h, w, pmask, c_src, c, cmask, H, W, ssb, ssc, ssh, ssw, 1, KL)
            acc = _add_bias(_add_bias(acc, bv_ptr, c, cmask, HAS_BIAS), bh_ptr, c, cmask, HAS_BIAS)
    elif part == 1:
        acc = _conv_taps(acc, src_ptr, w3_ptr, b, h, w, pmask, c_src, c, cmask, H, W, ssb, ssc, ssh, ssw, K3, K3)
        acc = _add_bias(acc, b3_ptr, c, cmask, HAS_BIAS)
    else:
        acc = _conv_taps(acc, src_ptr, w7_ptr, b, h, w, pmask, c_src, c, cmask, H, W, ssb, ssc, ssh, ssw, K7, K7)
        acc = _add_bias(acc, b7_ptr, c, cmask, HAS_BIAS)
    c_dst = part * G - dst_shift + c
    tl.store(dst_ptr + b * sdb + c_dst[None, :] * sdc + (h * sdh + w * sdw)[:, None],
             acc.to(dst_ptr.dtype.element_ty), mask=pmask[:, None] & cmask[None, :])


@triton.jit
def _tap_sums(acc, g, src_ptr, b, h, w, pmask, c_src, cmask, H, W, ssb, ssc, ssh, ssw,
              KH: tl.constexpr, KW: tl.constexpr, BLOCK_T: tl.constexpr):
    """acc[tap, c] + sum over the tile's pixels of g * (src shifted by tap): the weight gradient's terms."""
    taps = tl.arange(0, BLOCK_T)
    for i in range(KH):
        hh = h + (i - KH // 2)
        for j in range(KW):
            ww = w + (j - KW // 2)
            inside = pmask & (hh >= 0) & (hh < H) & (ww >= 0) & (ww < W)
            x = tl.load(src_ptr + b * ssb + c_src[None, :] * ssc + (hh * ssh + ww * ssw)[:, None],
                        mask=inside[:, None] & cmask[None, :], other=0.0)
            term = tl.sum(g * x.to(tl.float32), axis=0)
            acc = tl.where(taps[:, None] == i * KW + j, acc + term[None, :], acc)
    return acc


@triton.jit
def _flush(dw_ptr, db_ptr, acc, bias_acc, c, cmask, NTAPS: tl.constexpr, BLOCK_T: tl.constexpr):
    taps = tl.arange(0, BLOCK_T)
    tl.atomic_add(dw_ptr + c[None, :] * NTAPS + taps[:, None], acc, mask=(taps < NTAPS)[:, None] & cmask[None, :])
    tl.atomic_add(db_ptr + c, bias_acc, mask=cmask)


@triton.jit
def _weight_grad_kernel(grad_ptr, src_ptr, dw3_ptr, db3_ptr, dw7_ptr, db7_ptr, dwv_ptr, dbv_ptr, dwh_ptr, dbh_ptr,
                        G, H, W, tiles_per_image, tiles_per_program, src_shift,
                        sgb, sgc, sgh, sgw, ssb, ssc, ssh, ssw,
                        FIRST_PART: tl.constexpr, K3: tl.constexpr, K7: tl.constexpr, KL: tl.constexpr,
                        TAPS_A: tl.constexpr, TAPS_B: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    pid = tl.program_id(0)
    programs_per_image = tl.cdiv(tiles_per_image, tiles_per_program)
    b = pid // programs_per_image
    first_tile = (pid % programs_per_image) * tiles_per_program
    part = tl.program_id(1) + FIRST_PART
    c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = c < G
    c_src = part * G - src_shift + c
    c_grad = part * G + c
    acc_a = tl.zeros((TAPS_A, BLOCK_C), tl.float32)  # 3x3 taps, or the 11x1 ones
    acc_b = tl.zeros((TAPS_B, BLOCK_C), tl.float32)  # 7x7 taps, or the 1x11 ones
    bias_acc = tl.zeros((BLOCK_C,), tl.float32)
    for t in range(first_tile, tl.minimum(first_tile + tiles_per_program, tiles_per_image)):
        p = t * BLOCK_P + tl.arange(0, BLOCK_P)
        pmask = p < H * W
        h, w = p // W, p % W
        g = tl.load(grad_ptr + b * sgb + c_grad[None, :] * sgc + (h * sgh + w * sgw)[:, None],
                    mask=pmask[:, None] & cmask[None, :], other=0.0).to(tl.float32)
        bias_acc += tl.sum(g, axis=0)
        if part == 0:
            acc_a = _tap_sums(acc_a, g, src_ptr, b, h, w, pmask, c_src, cmask, H, W, ssb, ssc, ssh, ssw, KL, 1, TAPS_A)
            acc_b = _tap_sums(acc_b, g, src_ptr, b, h, w, pmask, c_src, cmask, H, W, ssb, ssc, ssh, ssw, 1, KL, TAPS_B)
        elif part == 1:
            acc_a = _tap_sums(acc_a, g, src_ptr, b, h, w, pmask, c_src, cmask, H, W, ssb, ssc, ssh, ssw, K3, K3, TAPS_A)
        else:
            acc_b = _tap_sums(acc_b, g, src_ptr, b, h, w, pmask, c_src, cmask, H, W, ssb, ssc, ssh, ssw, K7, K7, TAPS_B)
    if part == 0:
        _flush(dwv_ptr, dbv_ptr, acc_a, bias_acc, c, cmask, KL, TAPS_A)
        _flush(dwh_ptr, dbh_ptr, acc_b, bias_acc, c, cmask, KL, TAPS_B)
    elif part == 1:
        _flush(dw3_ptr, db3_ptr, acc_a, bias_acc, c, cmask, K3 * K3, TAPS_A)
    else:
        _flush(dw7_ptr, db7_ptr, acc_b, bias_acc, c, cmask, K7 * K7, TAPS_B)


def _spatial_strides(t: torch.Tensor):
    return t.stride(0), t.stride(1), t.stride(2), t.stride(3)


def _tiles(G: int, H: int, W: int):
    block_c, block_p = channel_tile(G, pixels_per_tile=1024)
    return block_c, block_p, triton.cdiv(H * W, block_p)


def _kernel_sizes(w3, w7, wv):
    # 11 by default; the long-range kernel size is a constructor argument of LongRangeConv.
    return dict(K3=w3.shape[-1], K7=w7.shape[-1], KL=wv.shape[-2] if wv is not None else 1)


def mix(x, glob, w3, b3, w7, b7, wv, bv, wh, bh, out, has_bias: bool = True):
    """out = [glob or long-range(a) | 3x3(l3) | 7x7(l7)] for x = [l3 | l7] or [a | l3 | l7] (see module docstring)."""
    B, _, H, W = x.shape
    G = w3.shape[0]
    block_c, block_p, tiles_per_image = _tiles(G, H, W)
    grid = (B * tiles_per_image, 3, triton.cdiv(G, block_c))
    dummy = w3
    _mix_kernel[grid](x, glob if glob is not None else x, out, w3, b3 if has_bias else dummy, w7,
                      b7 if has_bias else dummy, wv if wv is not None else dummy,
                      bv if has_bias and bv is not None else dummy, wh if wh is not None else dummy,
                      bh if has_bias and bh is not None else dummy,
                      G, H, W, tiles_per_image, G if glob is not None else 0, 0,
                      *_spatial_strides(x), *_spatial_strides(glob if glob is not None else x), *_spatial_strides(out),
                      FIRST_PART=0, GLOB=glob is not None, HAS_BIAS=has_bias, **_kernel_sizes(w3, w7, wv),
                      BLOCK_P=block_p, BLOCK_C=block_c)
    return out


def input_grad(grad, w3, w7, wv, wh, glob_mode: bool, dx):
    """d x of mix: the same convs, kernels flipped, on the output gradient (without the global part's channels
    in glob mode: that gradient is grad[:, :g] itself)."""
    B, _, H, W = grad.shape
    G = w3.shape[0]
    block_c, block_p, tiles_per_image = _tiles(G, H, W)
    first = 1 if glob_mode else 0
    grid = (B * tiles_per_image, 3 - first, triton.cdiv(G, block_c))
    flip = [t.flip((-2, -1)).contiguous() if t is not None else w3 for t in (w3, w7, wv, wh)]
    _mix_kernel[grid](grad, grad, dx, flip[0], w3, flip[1], w3, flip[2], w3, flip[3], w3,
                      G, H, W, tiles_per_image, 0, G if glob_mode else 0,
                      *_spatial_strides(grad), *_spatial_strides(grad), *_spatial_strides(dx),
                      FIRST_PART=first, GLOB=False, HAS_BIAS=False, **_kernel_sizes(w3, w7, wv),
                      BLOCK_P=block_p, BLOCK_C=block_c)
    return dx


def weight_grads(grad, x, w3, w7, wv, wh, glob_mode: bool):
    """fp32 (dw3, db3, dw7, db7, dwv, dbv, dwh, dbh) of mix (the long-range four None in glob mode)."""
    B, _, H, W = grad.shape
    G = w3.shape[0]
    block_c, block_p, tiles_per_image = _tiles(G, H, W)
    first = 1 if glob_mode else 0
    parts, channel_tiles = 3 - first, triton.cdiv(G, block_c)
    per_program = max(1, min(tiles_per_image, B * tiles_per_image * parts * channel_tiles // _WGRAD_PROGRAMS))
    grid = (B * triton.cdiv(tiles_per_image, per_program), parts, channel_tiles)
    zeros = [torch.zeros(t.shape, dtype=torch.float32, device=grad.device) if t is not None else None
             for t in (w3, w3[:, 0, 0, 0], w7, w7[:, 0, 0, 0], wv, wv[:, 0, 0, 0] if wv is not None else None,
                       wh, wh[:, 0, 0, 0] if wh is not None else None)]
    ptrs = [t if t is not None else zeros[0] for t in zeros]
    sizes = _kernel_sizes(w3, w7, wv)
    taps_a = triton.next_power_of_2(max(sizes['K3'] ** 2, sizes['KL']))
    taps_b = triton.next_power_of_2(max(sizes['K7'] ** 2, sizes['KL']))
    _weight_grad_kernel[grid](grad, x, *ptrs, G, H, W, tiles_per_image, per_program, G if glob_mode else 0,
                              *_spatial_strides(grad), *_spatial_strides(x), FIRST_PART=first, **sizes,
                              TAPS_A=taps_a, TAPS_B=taps_b, BLOCK_P=block_p, BLOCK_C=block_c)
    return zeros
