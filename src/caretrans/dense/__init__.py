"""Dense prediction with CARE backbones: Mask R-CNN (COCO) and Semantic FPN (ADE20K)."""
from .backbone import NORM_MODES, FeaturePyramidBackbone, create_backbone
from .detection import maskrcnn
from .segmentation import SemanticFPN, semantic_fpn

__all__ = ['NORM_MODES', 'FeaturePyramidBackbone', 'create_backbone', 'maskrcnn', 'SemanticFPN', 'semantic_fpn']
