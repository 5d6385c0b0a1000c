"""Parameter and multiply-accumulate counts of a model (fvcore), as the paper's tables report them."""
import warnings

import torch
import torch.nn as nn

__all__ = ['count_macs', 'count_params']


class _Features(nn.Module):
    """Wraps a timm model so that tracing counts forward_features only."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model.forward_features(x)


def count_params(model: nn.Module) -> int:
    """All parameters, the distillation head's included (as the paper counts them)."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, img_size: int = 224, in_chans: int = 3, features_only: bool = False) -> int:
    """Multiply-accumulates of one image, counted by fvcore (its 'flops' are MACs); puts the model in eval mode."""
    with warnings.catch_warnings():  # fvcore scripts a loss at import, which torch deprecates
        warnings.simplefilter('ignore', FutureWarning)
        from fvcore.nn import FlopCountAnalysis  # the 'profile' extra: the core install does without it

    model = model.eval()
    target = _Features(model) if features_only else model
    with torch.no_grad():
        analysis = FlopCountAnalysis(target, torch.zeros(1, in_chans, img_size, img_size))
        analysis.unsupported_ops_warnings(False)
        analysis.uncalled_modules_warnings(False)
        return int(analysis.total())
