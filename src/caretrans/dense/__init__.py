"""Dense prediction with CARE backbones: Mask R-CNN (COCO) and Semantic FPN (ADE20K)."""
from ..lazy import lazy_exports

# Public names and their modules, imported on first use (PEP 562): the CLI's parser reads
# dense.recipe without loading torch and torchvision.
_EXPORTS = {
    'NORM_MODES': 'backbone', 'FeaturePyramidBackbone': 'backbone', 'create_backbone': 'backbone',
    'maskrcnn': 'detection', 'SemanticFPN': 'segmentation', 'semantic_fpn': 'segmentation',
    'DenseRun': 'run', 'load_dense_run': 'run', 'evaluate_checkpoint': 'run',
    'detect': 'predict', 'segment': 'predict', 'draw_detections': 'predict', 'draw_class_map': 'predict',
}
__all__ = list(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
