"""The steps of CARE's modules that the fused ops replace on the TRITON path (caretrans.kernels.paths).

The modules' forwards (caretrans.models.care) hold the dataflow, once; on the TRITON path they
call these for the steps one op computes: the token mixer, the 1x1 expansion's bias + GELU,
and a projection's bias, layer scale, drop path and residual add. The linear attention is
`ops.linear_attention` itself. The 1x1 products stay GEMMs (cuBLAS on the GPU).
"""
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import ops


def pointwise(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """A 1x1 conv without bias; on channels-last maps one matrix product over the NHWC view.

    The TRITON path is never captured for export, so the layout may choose here.
    """
    if x.stride(1) == 1:
        return F.linear(x.permute(0, 2, 3, 1), weight.flatten(1)).permute(0, 3, 1, 2)
    return F.conv2d(x, weight)


def token_mix(mixer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """TokenMixer: one op for the split, the depthwise convs and the concatenation (after the attention, if any)."""
    glob, g = mixer.global_mixer, x.shape[1] // 3
    local = (mixer.local3.weight, mixer.local3.bias, mixer.local7.weight, mixer.local7.bias)
    if hasattr(glob, 'conv_v'):  # the long-range convs of stages 1-2 run inside the op
        long_range = (glob.conv_v.weight, glob.conv_v.bias, glob.conv_h.weight, glob.conv_h.bias)
        return ops.token_mix(x, None, *local, *long_range)
    return ops.token_mix(x[:, g:], glob(x[:, :g]), *local, None, None, None, None)


def expand(unit: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """act(fc1(h)) of an interaction unit: the 1x1 product, then bias + exact GELU in one op."""
    act = unit.act
    if not (isinstance(act, nn.GELU) and act.approximate == 'none'):
        return act(unit.fc1(h))
    return ops.bias_gelu(pointwise(h, unit.fc1.weight), unit.fc1.bias)


def drop_path_factors(drop_path: nn.Module, x: torch.Tensor) -> Optional[torch.Tensor]:
    """Per-image factors of timm's DropPath in training (its draws), None where it is an identity."""
    drop_prob = getattr(drop_path, 'drop_prob', 0.0)
    if not drop_path.training or drop_prob == 0.0:
        return None
    keep = 1.0 - drop_prob
    factors = x.new_empty(x.shape[0]).bernoulli_(keep)
    if keep > 0.0 and drop_path.scale_by_keep:
        factors.div_(keep)
    return factors


def project(unit: nn.Module, h: torch.Tensor, x: torch.Tensor, u: Optional[torch.Tensor] = None,
            scale: Optional[torch.Tensor] = None, sample_scale: Optional[torch.Tensor] = None,
            scale_y: bool = True) -> torch.Tensor:
    """x + s * (scale * u + scale' * fc2(h)) (ops.residual) of an interaction unit's hidden map h."""
    fc2 = unit.fc2
    return ops.residual(x, pointwise(h, fc2.weight), fc2.bias, u, scale, sample_scale, scale_y)
