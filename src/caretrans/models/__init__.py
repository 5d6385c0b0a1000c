"""CARE models, registered with timm on import."""
from .care import CareTransformer, checkpoint_filter_fn, MIN_INPUT_SIZE
from .card import ModelCard
from .checkpoint import CheckpointError, load_checkpoint, read_card, read_checkpoint, save_atomic
from .checkpoint_info import CheckpointInfo, describe
from .complexity import count_macs, count_params
from .fusion import reparameterize

__all__ = ['CareTransformer', 'checkpoint_filter_fn', 'reparameterize', 'MIN_INPUT_SIZE',
           'CheckpointError', 'CheckpointInfo', 'ModelCard', 'read_card', 'describe', 'load_checkpoint', 'read_checkpoint', 'save_atomic',
           'count_macs', 'count_params']
