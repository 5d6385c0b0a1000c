"""Small CARE models with weights of unit scale, for the export tests (ExecuTorch, LiteRT)."""
import timm
import torch
import torch.nn as nn

import caretrans


def unit_scale(model: nn.Module) -> nn.Module:
    """Weights of variance 1 / fan-in and non-trivial norms and layer scales: logits of order one, so
    that an absolute tolerance of 1e-4 means something (timm's init gives CARE logits of ~1e-3)."""
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.normal_(m.weight, std=m.weight[0].numel() ** -0.5)
            nn.init.uniform_(m.bias, -0.1, 0.1)
        elif isinstance(m, (nn.BatchNorm2d, nn.LayerNorm)):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    for name, p in model.named_parameters():
        if name.endswith('layer_scale'):
            p.data.uniform_(0.1, 1.0)
    return model.eval()


def tiny_care(**kwargs) -> nn.Module:
    """CARE-S0 with one block per stage, fused: every kind of layer (long-range convs, linear attention,
    downsampling, the last block, the merged head) in a quarter of the graph."""
    kwargs = dict(dict(depths=(1, 1, 1, 1), num_classes=10), **kwargs)
    return caretrans.reparameterize(unit_scale(timm.create_model('care_s0', **kwargs)))
