"""CARE modules' forwards on the fused ops: what caretrans.models.care dispatches to under kernels='auto'/'triton'.

Each function takes the module and computes what the module's PyTorch forward computes, with
the parts the compiler leaves apart done by one op each: the linear attention, the token mixer,
and the epilogues of the interaction units' 1x1 convs (whose products stay cuBLAS GEMMs).
"""
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import ops


def pointwise(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """A 1x1 conv without bias; on channels-last maps one matrix product over the NHWC view."""
    if x.stride(1) == 1:
        return F.linear(x.permute(0, 2, 3, 1), weight.flatten(1)).permute(0, 3, 1, 2)
    return F.conv2d(x, weight)


def linear_attention(m, x: torch.Tensor) -> torch.Tensor:
    """LinearAttention: the q/k 1x1 conv, then one op."""
    return ops.linear_attention(m.qk(x), x, m.num_heads, m.kernel == 'elu')


def token_mixer(m, x: torch.Tensor) -> torch.Tensor:
    """TokenMixer: one op for the split, the depthwise convs and the concatenation (after the attention, if any)."""
    mixer, g = m.global_mixer, x.shape[1] // 3
    local = (m.local3.weight, m.local3.bias, m.local7.weight, m.local7.bias)
    if hasattr(mixer, 'conv_v'):  # the long-range convs of stages 1-2 run inside the op
        return ops.token_mix(x, None, *local, mixer.conv_v.weight, mixer.conv_v.bias,
                             mixer.conv_h.weight, mixer.conv_h.bias)
    return ops.token_mix(x[:, g:], mixer(x[:, :g]), *local, None, None, None, None)


def _exact_gelu(act: nn.Module) -> bool:
    return isinstance(act, nn.GELU) and act.approximate == 'none'


def _hidden(m, x: torch.Tensor) -> torch.Tensor:
    """Interaction up to its projection: norm, 1x1 expansion, bias + GELU in one op, 3x3 depthwise, dropout."""
    h = m.norm(x)
    if _exact_gelu(m.act):
        h = ops.bias_gelu(pointwise(h, m.fc1.weight), m.fc1.bias)
    else:
        h = m.act(m.fc1(h))
    return m.drop(m.dwconv(h))


def interaction(m, x: torch.Tensor) -> torch.Tensor:
    """Interaction (on its own it ends in the plain projection; CareBlock fuses its residuals)."""
    return m.fc2(_hidden(m, x))


def _drop_path_factors(drop_path: nn.Module, x: torch.Tensor) -> Optional[torch.Tensor]:
    """Per-image factors of timm's DropPath in training (its draws), None where it is an identity."""
    drop_prob = getattr(drop_path, 'drop_prob', 0.0)
    if not drop_path.training or drop_prob == 0.0:
        return None
    keep = 1.0 - drop_prob
    factors = x.new_empty(x.shape[0]).bernoulli_(keep)
    if keep > 0.0 and drop_path.scale_by_keep:
        factors.div_(keep)
    return factors


def care_block(m, x: torch.Tensor) -> torch.Tensor:
    """CareBlock: both interaction units' projections end in the residual op (Inter1: features + fc2(h);
    Inter2: x + drop_path(layer_scale * (u + fc2(h))), or its re-parameterised form)."""
    memory, features = x[:, :m.mem_dim], x[:, m.mem_dim:]
    features = m.token_mixer(features)
    inter1, inter2 = m.inter1, m.inter2
    features = ops.residual(features, pointwise(_hidden(inter1, features), inter1.fc2.weight), inter1.fc2.bias,
                            None, None, None, True)
    u = torch.cat([memory, features], dim=1)
    if m.layer_scale is None:
        return inter2(u)
    if m.reparameterized and m.training:
        raise RuntimeError('this block is re-parameterised for inference and cannot be trained')
    y = pointwise(_hidden(inter2, u), inter2.fc2.weight)
    return ops.residual(x, y, inter2.fc2.bias, u, m.layer_scale, _drop_path_factors(m.drop_path, x),
                        not m.reparameterized)
