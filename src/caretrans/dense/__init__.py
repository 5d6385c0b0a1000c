"""Dense prediction with CARE backbones: Mask R-CNN (COCO) and Semantic FPN (ADE20K)."""
import importlib

# Public names and their modules, imported on first use (PEP 562): the CLI's parser reads
# dense.recipe without loading torch and torchvision.
_EXPORTS = {
    'NORM_MODES': 'backbone', 'FeaturePyramidBackbone': 'backbone', 'create_backbone': 'backbone',
    'maskrcnn': 'detection', 'SemanticFPN': 'segmentation', 'semantic_fpn': 'segmentation',
}
__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f'.{_EXPORTS[name]}', __name__), name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
