"""What every training run shares, whatever its task: processes, checkpoints, signals, metrics, precision."""
from ..lazy import lazy_exports

# Public names and their modules, imported on first use (PEP 562): the CLI's parsers import this
# package without loading torch.
_EXPORTS = {
    'DistributedContext': 'distributed', 'setup_distributed': 'distributed', 'cleanup_distributed': 'distributed',
    'distribute': 'distributed', 'is_primary_process': 'distributed',
    'LoopState': 'loop', 'Updater': 'loop', 'train_epoch': 'loop', 'TrainingDiverged': 'loop',
    'save_training_state': 'loop', 'restore_training_state': 'loop',
    'load_training_state': 'state', 'read_resume_state': 'state', 'seed_everything': 'state',
    'GracefulStop': 'signals', 'stop_notice': 'signals', 'run_exit_code': 'signals',
    'RecipeFields': 'recipe', 'MetricsLogger': 'metrics', 'autocast_factory': 'precision',
}
__all__ = list(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
