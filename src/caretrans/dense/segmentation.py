"""Semantic FPN (Kirillov et al., Panoptic FPN's semantic branch) on a CARE backbone."""
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .backbone import FeaturePyramidBackbone, create_backbone

__all__ = ['SemanticFPN', 'semantic_fpn']


def _conv_gn_relu(in_chans: int, out_chans: int) -> nn.Sequential:
    # GroupNorm, as in the Panoptic FPN paper: independent of the batch size.
    return nn.Sequential(
        nn.Conv2d(in_chans, out_chans, 3, padding=1, bias=False),
        nn.GroupNorm(32 if out_chans % 32 == 0 else 1, out_chans),
        nn.ReLU(inplace=True),
    )


class ScaleBranch(nn.Module):
    """Brings one FPN level to 1/4 scale: (3x3 conv, GN, ReLU, 2x upsample) once per octave."""

    def __init__(self, in_chans: int, out_chans: int, octaves: int):
        super().__init__()
        self.octaves = octaves
        self.convs = nn.ModuleList(
            _conv_gn_relu(in_chans if i == 0 else out_chans, out_chans) for i in range(max(octaves, 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = conv(x)
            if self.octaves:
                x = F.interpolate(x, scale_factor=2.0, mode='bilinear', align_corners=False)
        return x


class SemanticFPN(nn.Module):
    """FPN features -> per-level branches to 1/4 scale, summed -> 1x1 classifier -> 4x upsampling."""

    def __init__(self, backbone: FeaturePyramidBackbone, num_classes: int, head_channels: int = 128,
                 dropout: float = 0.1):
        super().__init__()
        self.backbone = backbone
        reductions = backbone.reductions
        self.branches = nn.ModuleList(
            ScaleBranch(backbone.out_channels, head_channels, (r // reductions[0]).bit_length() - 1)
            for r in reductions)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(head_channels, num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [branch(f) for branch, f in zip(self.branches, self.backbone(x).values())]
        # Sizes that are not multiples of 32 round differently per level: align to the finest.
        fused = outs[0]
        for out in outs[1:]:
            if out.shape[-2:] != fused.shape[-2:]:
                out = F.interpolate(out, size=fused.shape[-2:], mode='bilinear', align_corners=False)
            fused = fused + out
        logits = self.classifier(self.dropout(fused))
        return F.interpolate(logits, size=x.shape[-2:], mode='bilinear', align_corners=False)


def semantic_fpn(
        backbone: str = 'care_s0',
        num_classes: int = 150,
        backbone_checkpoint: Optional[str] = None,
        norm: str = 'sync',
        fpn_channels: int = 256,
        head_channels: int = 128,
        drop_path_rate: float = 0.0,
        dropout: float = 0.1,
) -> SemanticFPN:
    """Semantic FPN: FPN of `fpn_channels`, branches of `head_channels`, logits at input size."""
    if num_classes < 1:
        raise ValueError(f'num_classes must be positive, got {num_classes}')
    body = create_backbone(backbone, backbone_checkpoint, norm=norm, drop_path_rate=drop_path_rate)
    return SemanticFPN(FeaturePyramidBackbone(body, fpn_channels), num_classes, head_channels, dropout)
