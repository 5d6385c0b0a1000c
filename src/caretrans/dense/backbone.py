"""A timm feature backbone under a torchvision feature pyramid, with its BatchNorm policy."""
from collections import OrderedDict
from typing import Dict, Optional, Sequence

import timm
import torch
import torch.nn as nn
from timm.layers import freeze_batch_norm_2d
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock

from ..models.checkpoint import CheckpointError, read_checkpoint

__all__ = ['NORM_MODES', 'create_backbone', 'FeaturePyramidBackbone']

# 'frozen': BatchNorm keeps the ImageNet statistics and affine (detection: 1-2 images per GPU
#   give statistics too noisy to learn from). 'sync': SyncBatchNorm across processes once
#   training runs distributed (segmentation: 4-8 crops per GPU). 'batch': plain BatchNorm.
NORM_MODES = ('frozen', 'sync', 'batch')


def create_backbone(
        name: str = 'care_s0',
        checkpoint: Optional[str] = None,
        norm: str = 'frozen',
        out_indices: Sequence[int] = (0, 1, 2, 3),
        drop_path_rate: float = 0.0,
) -> nn.Module:
    """A timm `features_only` model, initialised from a classification checkpoint if given."""
    if norm not in NORM_MODES:
        raise ValueError(f'norm must be one of {NORM_MODES}, got {norm!r}')
    pretrained = {}
    if checkpoint is not None:
        # Our safe reader, then timm's pretrained path runs the model's checkpoint filter
        # (released names, wrapped or DDP checkpoints) before the features wrapper is built.
        pretrained = dict(pretrained=True, pretrained_cfg_overlay=dict(state_dict=read_checkpoint(checkpoint)))
    try:
        body = timm.create_model(name, features_only=True, out_indices=tuple(out_indices),
                                 drop_path_rate=drop_path_rate, **pretrained)
    except CheckpointError as e:
        raise CheckpointError(f'{checkpoint}: {e}') from e
    if norm == 'frozen':
        body = freeze_batch_norm_2d(body)
    return body


class FeaturePyramidBackbone(nn.Module):
    """Multi-scale backbone features -> FPN maps '0'..'3' (strides 4-32) and the extra block's."""

    def __init__(self, body: nn.Module, out_channels: int = 256, extra_block: Optional[ExtraFPNBlock] = None):
        super().__init__()
        self.body = body
        self.fpn = FeaturePyramidNetwork(body.feature_info.channels(), out_channels, extra_blocks=extra_block)
        self.out_channels = out_channels  # what torchvision's detection heads read

    @property
    def reductions(self):
        return self.body.feature_info.reduction()

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        features = self.body(x)
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(features)))
