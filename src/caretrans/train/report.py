"""The closing summary of a run: params, GMACs, test accuracy and a confusion-matrix PNG."""
from pathlib import Path
from typing import Dict, Sequence

import torch

__all__ = ['plot_confusion', 'summarize']


def plot_confusion(confusion: torch.Tensor, classes: Sequence[str], path) -> Path:
    """Row-normalised confusion matrix (true class down, predicted across) with counts in the cells."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    counts = confusion.numpy()
    rates = counts / counts.sum(axis=1, keepdims=True).clip(min=1)
    n = len(classes)
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * n, 0.8 + 0.6 * n))
    ax.imshow(rates, cmap='Blues', vmin=0, vmax=1)
    ax.set_xticks(range(n), classes, rotation=45, ha='right', fontsize=8)
    ax.set_yticks(range(n), classes, fontsize=8)
    ax.set_xlabel('predicted')
    ax.set_ylabel('true')
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(counts[i, j]), ha='center', va='center', fontsize=6,
                    color='white' if rates[i, j] > 0.5 else 'black')
    accuracy = 100 * counts.trace() / max(counts.sum(), 1)
    ax.set_title(f'top-1 {accuracy:.2f}% on {counts.sum()} images')
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def summarize(model: torch.nn.Module, img_size: int, in_chans: int, evaluation: Dict, classes: Sequence[str],
              run_dir: Path, train_minutes: float) -> Dict:
    """Count params and MACs, draw the confusion matrix (up to 50 classes) and return the figures."""
    from ..models.complexity import count_macs, count_params

    figures = dict(params_m=count_params(model) / 1e6,
                   gmacs=count_macs(model, img_size, in_chans=in_chans) / 1e9,
                   img_size=img_size, top1=evaluation['top1'], top5=evaluation['top5'],
                   test_images=evaluation['count'], train_minutes=train_minutes)
    if 'confusion' in evaluation and len(classes) <= 50:
        figures['confusion_png'] = str(plot_confusion(evaluation['confusion'], classes, run_dir / 'confusion.png'))
    return figures
