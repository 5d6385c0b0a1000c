"""Mask R-CNN (torchvision) on a CARE + FPN backbone."""
from typing import Optional, Sequence

from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from .backbone import FeaturePyramidBackbone, create_backbone

__all__ = ['maskrcnn']


def maskrcnn(
        backbone: str = 'care_s0',
        num_classes: int = 81,
        backbone_checkpoint: Optional[str] = None,
        norm: str = 'frozen',
        fpn_channels: int = 256,
        box_head_dim: int = 1024,
        mask_head_dims: Sequence[int] = (256, 256, 256, 256),
        drop_path_rate: float = 0.0,
        min_size: int = 800,
        max_size: int = 1333,
        **maskrcnn_kwargs,
) -> MaskRCNN:
    """torchvision's Mask R-CNN with a timm backbone and an FPN (P2-P5 + max-pooled P6).

    `num_classes` counts the background (COCO: 80 + 1). The defaults are the standard heads
    (torchvision's and mmdetection's); smaller `fpn_channels`, `box_head_dim` and
    `mask_head_dims` make a compact detector for small data. Other keyword arguments go to
    `MaskRCNN` (sampling sizes, thresholds). Images are normalised with the backbone's
    ImageNet mean and std and resized to `min_size` (shorter side) / `max_size` (longer).
    """
    if num_classes < 2:
        raise ValueError(f'num_classes counts the background and must be at least 2, got {num_classes}')
    body = create_backbone(backbone, backbone_checkpoint, norm=norm, drop_path_rate=drop_path_rate)
    features = FeaturePyramidBackbone(body, fpn_channels, LastLevelMaxPool())
    box_head = TwoMLPHead(fpn_channels * 7 * 7, box_head_dim)  # MaskRCNN's box RoIAlign gives 7x7
    mask_head = MaskRCNNHeads(fpn_channels, list(mask_head_dims), dilation=1)
    cfg = body.pretrained_cfg
    return MaskRCNN(
        features,
        min_size=min_size,
        max_size=max_size,
        image_mean=list(cfg['mean']),
        image_std=list(cfg['std']),
        box_head=box_head,
        box_predictor=FastRCNNPredictor(box_head_dim, num_classes),
        mask_head=mask_head,
        mask_predictor=MaskRCNNPredictor(mask_head_dims[-1], mask_head_dims[-1], num_classes),
        **maskrcnn_kwargs,
    )

