"""The fused kernels as PyTorch custom ops (torch.library): autograd, torch.compile (fake tensors) and any device.

Each op runs its Triton kernel on CUDA tensors, and on CPU tensors when the process runs Triton's
interpreter (TRITON_INTERPRET=1 before triton is imported: the tests' way to check the kernels
without a GPU); elsewhere it runs the PyTorch reference (caretrans.kernels.reference). Triton is
imported on the first kernel launch only. Backward passes are ops of their own, so compiled
training graphs hold them as single nodes too. Channel gradients (biases, scales, depthwise
weights) are summed with fp32 atomics: fast, but not bitwise reproducible from run to run.
"""
from typing import List, Optional

import torch
from torch import Tensor

from . import reference
from .paths import runs_kernels


def memory_format(t: Tensor) -> torch.memory_format:
    """channels_last for channels-last maps and channel slices of them, else contiguous."""
    channels_last = t.dim() == 4 and t.stride(1) == 1 and t.shape[1] > 1
    return torch.channels_last if channels_last else torch.contiguous_format


def _absent(t: Optional[Tensor], device: torch.device) -> Tensor:
    """t, or for None an empty tensor: what a backward op returns for a gradient it does not produce (custom ops
    cannot return None; the autograd formulas turn it back into None)."""
    return torch.empty(0, device=device) if t is None else t


def _empty(t: Tensor, channels: Optional[int] = None, dtype: Optional[torch.dtype] = None) -> Tensor:
    """A new map with t's batch, size, device and layout; `channels` and `dtype` default to t's."""
    B, C, H, W = t.shape
    return torch.empty((B, C if channels is None else channels, H, W), dtype=dtype or t.dtype, device=t.device,
                       memory_format=memory_format(t))


def _as(result: Tensor, like: Tensor) -> Tensor:
    """The reference's result in the layout the Triton kernel (and the fake op) produces."""
    return result.contiguous(memory_format=memory_format(like))


def _vjp(fn, grad: Tensor, inputs: List[Optional[Tensor]], *args) -> List[Tensor]:
    """Gradients of fn(*inputs, *args) w.r.t. each input (empty for None): the reference backward.

    torch.func, because an op's implementation runs below the autograd dispatch key."""
    present = [i for i, t in enumerate(inputs) if t is not None]

    def of_present(*tensors):
        full = list(inputs)
        for i, t in zip(present, tensors):
            full[i] = t
        return fn(*full, *args)

    _, pullback = torch.func.vjp(of_present, *[inputs[i] for i in present])
    grads = dict(zip(present, pullback(grad)))
    # A clone: pullbacks may return `grad` itself, and an op's outputs must not alias its inputs.
    return [grads[i].clone(memory_format=memory_format(t)) if i in grads else _absent(None, grad.device)
            for i, t in enumerate(inputs)]


# ---------------------------------------------------------------------------------------- linear attention

@torch.library.custom_op('caretrans::linear_attention', mutates_args=())
def linear_attention(qk: Tensor, v: Tensor, num_heads: int, elu: bool) -> Tensor:
    """Multi-head linear attention of v (B, C, H, W) with q, k = qk (B, 2C, H, W) split in two."""
    if not runs_kernels(v):
        return _as(reference.linear_attention_fp32(qk, v, num_heads, elu), v)
    from . import attention
    return attention.forward(qk, v, num_heads, elu, _empty(v))


@linear_attention.register_fake
def _(qk, v, num_heads, elu):
    return _empty(v)


@torch.library.custom_op('caretrans::linear_attention_backward', mutates_args=())
def linear_attention_backward(grad: Tensor, qk: Tensor, v: Tensor, num_heads: int, elu: bool) -> List[Tensor]:
    """[d qk, d v] of linear_attention."""
    if not runs_kernels(v):
        return _vjp(reference.linear_attention_fp32, grad, [qk, v], num_heads, elu)
    from . import attention
    return list(attention.backward(grad, qk, v, num_heads, elu, _empty(qk), _empty(v)))


@linear_attention_backward.register_fake
def _(grad, qk, v, num_heads, elu):
    return [_empty(qk), _empty(v)]


def _attention_setup(ctx, inputs, output):
    qk, v, ctx.num_heads, ctx.elu = inputs
    ctx.save_for_backward(qk, v)


def _attention_backward(ctx, grad):
    qk, v = ctx.saved_tensors
    dqk, dv = linear_attention_backward(grad, qk, v, ctx.num_heads, ctx.elu)
    return dqk, dv, None, None


linear_attention.register_autograd(_attention_backward, setup_context=_attention_setup)


# ---------------------------------------------------------------------------------------- 1x1 conv epilogues

@torch.library.custom_op('caretrans::bias_gelu', mutates_args=())
def bias_gelu(y: Tensor, bias: Tensor) -> Tensor:
    """GELU(y + bias) over channels (dim 1) of a map: the epilogue of a 1x1 expansion computed without bias."""
    if not runs_kernels(y):
        return _as(reference.bias_gelu(y, bias), y)
    from . import epilogue
    return epilogue.bias_gelu_forward(y, bias, _empty(y))


@bias_gelu.register_fake
def _(y, bias):
    return _empty(y)


@torch.library.custom_op('caretrans::bias_gelu_backward', mutates_args=())
def bias_gelu_backward(grad: Tensor, y: Tensor, bias: Tensor) -> List[Tensor]:
    """[d y, d bias] of bias_gelu."""
    if not runs_kernels(y):
        return _vjp(reference.bias_gelu, grad, [y, bias])
    from . import epilogue
    return list(epilogue.bias_gelu_backward(grad, y, bias, _empty(y)))


@bias_gelu_backward.register_fake
def _(grad, y, bias):
    return [_empty(y), torch.empty_like(bias)]


def _bias_gelu_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _bias_gelu_backward(ctx, grad):
    return tuple(bias_gelu_backward(grad, *ctx.saved_tensors))


bias_gelu.register_autograd(_bias_gelu_backward, setup_context=_bias_gelu_setup)


def _residual_dtype(x: Tensor, y: Tensor, u: Optional[Tensor], scale: Optional[Tensor]) -> torch.dtype:
    dtype = torch.promote_types(x.dtype, y.dtype)
    for t in (u, scale):
        if t is not None:
            dtype = torch.promote_types(dtype, t.dtype)
    return dtype


@torch.library.custom_op('caretrans::residual', mutates_args=())
def residual(x: Tensor, y: Tensor, bias: Tensor, u: Optional[Tensor], scale: Optional[Tensor],
             sample_scale: Optional[Tensor], scale_y: bool) -> Tensor:
    """x + s * (scale * u + scale' * (y + bias)) (reference.residual): a 1x1 projection's epilogue."""
    if not runs_kernels(y):
        return _as(reference.residual(x, y, bias, u, scale, sample_scale, scale_y), x)
    from . import epilogue
    out = _empty(x, dtype=_residual_dtype(x, y, u, scale))
    return epilogue.residual_forward(x, y, bias, u, scale, sample_scale, scale_y, out)


@residual.register_fake
def _(x, y, bias, u, scale, sample_scale, scale_y):
    return _empty(x, dtype=_residual_dtype(x, y, u, scale))


@torch.library.custom_op('caretrans::residual_backward', mutates_args=())
def residual_backward(grad: Tensor, y: Tensor, bias: Tensor, u: Optional[Tensor], scale: Optional[Tensor],
                      sample_scale: Optional[Tensor], scale_y: bool) -> List[Tensor]:
    """[d y, d u, d bias, d scale] of residual; d u is empty where it equals d y (or u is None), d scale where
    scale is None. The gradient w.r.t. x is `grad` itself."""
    if not runs_kernels(y):
        def branch(y, bias, u, scale):
            return reference.residual(torch.zeros((), dtype=grad.dtype), y, bias, u, scale, sample_scale, scale_y)
        dy, dbias, du, dscale = _vjp(branch, grad, [y, bias, u, scale])
        return [dy, du if _du_differs(u, scale, scale_y) else _absent(None, y.device), dbias, dscale]
    from . import epilogue
    dy, du, dbias, dscale = epilogue.residual_backward(
        grad, y, bias, u, scale, sample_scale, scale_y, _empty(y),
        _empty(u) if _du_differs(u, scale, scale_y) else None)
    return [dy, _absent(du, y.device), dbias, _absent(dscale, y.device)]


def _du_differs(u: Optional[Tensor], scale: Optional[Tensor], scale_y: bool) -> bool:
    """Whether residual's d u differs from its d y (only the re-parameterised form scales u alone)."""
    return u is not None and scale is not None and not scale_y


@residual_backward.register_fake
def _(grad, y, bias, u, scale, sample_scale, scale_y):
    du = _empty(u) if _du_differs(u, scale, scale_y) else _absent(None, y.device)
    dscale = _absent(None, y.device) if scale is None else torch.empty_like(scale)
    return [_empty(y), du, torch.empty_like(bias), dscale]


def _residual_setup(ctx, inputs, output):
    x, y, bias, u, scale, sample_scale, ctx.scale_y = inputs
    ctx.x_dtype = x.dtype
    ctx.save_for_backward(y, bias, u, scale, sample_scale)


def _residual_backward(ctx, grad):
    y, bias, u, scale, sample_scale = ctx.saved_tensors
    dy, du, dbias, dscale = residual_backward(grad, y, bias, u, scale, sample_scale, ctx.scale_y)
    if u is not None and du.numel() == 0:
        du = dy
    return (grad.to(ctx.x_dtype), dy, dbias, du if u is not None else None,
            dscale if scale is not None else None, None, None)


residual.register_autograd(_residual_backward, setup_context=_residual_setup)


# ---------------------------------------------------------------------------------------- token mixer

@torch.library.custom_op('caretrans::token_mix', mutates_args=())
def token_mix(x: Tensor, glob: Optional[Tensor], w3: Tensor, b3: Tensor, w7: Tensor, b7: Tensor,
              wv: Optional[Tensor], bv: Optional[Tensor], wh: Optional[Tensor], bh: Optional[Tensor]) -> Tensor:
    """CARE's token mixer (reference.token_mix): [glob | 3x3 | 7x7] of x = [l3 | l7], or
    [11x1 + 1x11 | 3x3 | 7x7] of x = [a | l3 | l7] without glob."""
    if not runs_kernels(x):
        return _as(reference.token_mix(x, glob, w3, b3, w7, b7, wv, bv, wh, bh), x)
    from . import depthwise
    return depthwise.mix(x, glob, w3, b3, w7, b7, wv, bv, wh, bh, _empty(x, channels=3 * w3.shape[0]))


@token_mix.register_fake
def _(x, glob, w3, b3, w7, b7, wv, bv, wh, bh):
    return _empty(x, channels=3 * w3.shape[0])


@torch.library.custom_op('caretrans::token_mix_backward', mutates_args=())
def token_mix_backward(grad: Tensor, x: Tensor, glob_mode: bool, w3: Tensor, w7: Tensor, wv: Optional[Tensor],
                       wh: Optional[Tensor]) -> List[Tensor]:
    """[d x, d w3, d b3, d w7, d b7, d wv, d bv, d wh, d bh] of token_mix (the long-range four empty in glob
    mode); d glob is grad[:, :g] itself."""
    if not runs_kernels(x):
        g = w3.shape[0]
        glob = grad[:, :g] if glob_mode else None
        biases = [torch.zeros(g, dtype=w3.dtype, device=w3.device) if w is not None else None
                  for w in (w3, w7, wv, wh)]
        grads = _vjp(reference.token_mix, grad, [x, glob, w3, biases[0], w7, biases[1], wv, biases[2], wh, biases[3]])
        return grads[:1] + grads[2:]
    from . import depthwise
    dx = depthwise.input_grad(grad, w3, w7, wv, wh, glob_mode, _empty(x))
    weight_grads = depthwise.weight_grads(grad, x, w3, w7, wv, wh, glob_mode)
    params = (w3, w3, w7, w7, wv, wv, wh, wh)
    return [dx] + [_absent(None if t is None else t.to(p.dtype), x.device) for t, p in zip(weight_grads, params)]


@token_mix_backward.register_fake
def _(grad, x, glob_mode, w3, w7, wv, wh):
    shapes = [w3, w3[:, 0, 0, 0], w7, w7[:, 0, 0, 0]] + [
        t if t is None or i % 2 == 0 else t[:, 0, 0, 0] for i, t in enumerate((wv, wv, wh, wh))]
    return [_empty(x)] + [_absent(None if t is None else torch.empty_like(t, memory_format=torch.contiguous_format),
                                  x.device) for t in shapes]


def _token_mix_setup(ctx, inputs, output):
    x, glob, w3, b3, w7, b7, wv, bv, wh, bh = inputs
    ctx.glob_mode = glob is not None
    ctx.save_for_backward(x, w3, w7, wv, wh)


def _token_mix_backward(ctx, grad):
    x, w3, w7, wv, wh = ctx.saved_tensors
    dx, dw3, db3, dw7, db7, dwv, dbv, dwh, dbh = token_mix_backward(grad, x, ctx.glob_mode, w3, w7, wv, wh)
    dglob = grad[:, :w3.shape[0]] if ctx.glob_mode else None
    if ctx.glob_mode:
        dwv = dbv = dwh = dbh = None
    return dx, dglob, dw3, db3, dw7, db7, dwv, dbv, dwh, dbh


token_mix.register_autograd(_token_mix_backward, setup_context=_token_mix_setup)
