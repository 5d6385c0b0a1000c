"""Inference re-parameterisation: one entry point, and the BatchNorm fold that CARE's modules share.

Each fusion is exact in eval mode: BatchNorm uses its running statistics, dropout and drop-path are
identities, so the fused model computes the same function with fewer ops. As timm's FastViT and
MobileOne, the modules fold the running statistics in either mode (timm.utils.reparameterize_model
leaves the mode as it is, and timm.create_model returns a model in training mode); the fused
blocks refuse to run in training mode.
"""
import copy

import torch
import torch.nn as nn
from timm.models import reparameterize_model
from torch.nn.utils.fusion import fuse_conv_bn_weights

__all__ = ['reparameterize', 'fold_batchnorm', 'conv_with_weights']


def reparameterize(model: nn.Module) -> nn.Module:
    """Fuse a model for inference, in place, and put it in eval mode; it computes what it computed before
    and cannot be trained afterwards.

    Every module with a `reparameterize()` fuses what it owns (the timm / FastViT convention): timm's
    walker visits the children, the model itself is visited first (a CARE model merges its two heads).
    """
    model.eval()
    if hasattr(model, 'reparameterize'):
        model.reparameterize()
    return reparameterize_model(model, inplace=True)


def conv_with_weights(conv: nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor) -> nn.Conv2d:
    """A copy of `conv` (its class, stride and padding) holding the given weight and bias."""
    fused = copy.deepcopy(conv)
    fused.weight = nn.Parameter(weight.detach().clone())
    fused.bias = nn.Parameter(bias.detach().clone())
    return fused


def _fold_into_next_conv(bn: nn.BatchNorm2d, conv: nn.Conv2d) -> nn.Conv2d:
    """conv(bn(x)) as one conv: exact because the conv is dense and pads nothing (padding would see
    zeros where the un-fused conv sees bn's shift)."""
    if conv.groups != 1 or any(conv.padding):
        raise ValueError('a BatchNorm folds into the following conv only if that conv is dense and unpadded')
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    shift = bn.bias - bn.running_mean * scale
    bias = conv.bias if conv.bias is not None else shift.new_zeros(conv.out_channels)
    return conv_with_weights(conv, conv.weight * scale.view(1, -1, 1, 1),
                             bias + (conv.weight * shift.view(1, -1, 1, 1)).sum(dim=(1, 2, 3)))


def fold_batchnorm(module: nn.Module, conv: str, norm: str = 'norm', norm_first: bool = False):
    """Fold the BatchNorm `module.<norm>` (its running statistics) into the conv `module.<conv>` that it follows
    (or, with `norm_first`, precedes), in place; the norm becomes an Identity. A folded module is left as it is."""
    bn, layer = getattr(module, norm), getattr(module, conv)
    if not isinstance(bn, nn.BatchNorm2d):
        return
    if norm_first:
        fused = _fold_into_next_conv(bn, layer)
    else:
        fused = conv_with_weights(layer, *fuse_conv_bn_weights(
            layer.weight, layer.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias))
    setattr(module, conv, fused)
    setattr(module, norm, nn.Identity())
