"""Parameters and MACs (fvcore) of CARE models beside the paper's Table 5 / Table 2 figures."""
import warnings
from typing import Dict, Optional

import timm
import torch
import torch.nn as nn

# Paper figures: Table 5 (params incl. distillation head, GMACs at 224) and Table 2
# (backbone GMACs at 512x512, forward_features only).
PAPER_FIGURES = {
    'care_s0': dict(params_m=7.34, gmacs=0.72, backbone_gmacs_512=3.8),
    'care_s1': dict(params_m=9.60, gmacs=1.03, backbone_gmacs_512=5.4),
    'care_s2': dict(params_m=19.48, gmacs=1.93, backbone_gmacs_512=10.1),
}


class _Features(nn.Module):
    """Wraps a timm model so that tracing counts forward_features only."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model.forward_features(x)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, img_size: int = 224, in_chans: int = 3, features_only: bool = False) -> int:
    """Multiply-accumulates of one image, counted by fvcore (its 'flops' are MACs)."""
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


def profile_model(name: str, img_size: int = 224, backbone_img_size: int = 512,
                  model: Optional[nn.Module] = None) -> Dict[str, object]:
    """Params and GMACs of `name` (classifier at `img_size`, backbone at `backbone_img_size`)."""
    model = model if model is not None else timm.create_model(name)
    row = dict(
        model=name,
        params_m=count_params(model) / 1e6,
        img_size=img_size,
        gmacs=count_macs(model, img_size) / 1e9,
        backbone_img_size=backbone_img_size,
        backbone_gmacs=count_macs(model, backbone_img_size, features_only=True) / 1e9,
    )
    paper = PAPER_FIGURES.get(name)
    if paper is not None:
        row['paper'] = dict(paper)
    return row
