"""caretrans: the CARE Transformer (CVPR 2025) for timm.

Importing the package registers `care_s0`, `care_s1`, `care_s2` and the ablation rows (`care_s2_sym`, ...) with timm.
"""
from .models import CareTransformer, CheckpointError, checkpoint_filter_fn, load_checkpoint, save_atomic
from .models import reparameterize  # noqa: F401  (inference fusion, docs/performance.md)

__version__ = '0.1.0'
__all__ = ['CareTransformer', 'CheckpointError', 'checkpoint_filter_fn', 'load_checkpoint', 'save_atomic']
