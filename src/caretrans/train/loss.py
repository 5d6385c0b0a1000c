"""Classification loss with DeiT hard distillation, as the CARE release trains its two heads."""
from typing import Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

__all__ = ['DistillationLoss', 'base_criterion']


def base_criterion(mixup_active: bool, smoothing: float) -> nn.Module:
    """Soft-target CE under mixup/cutmix (the smoothing is in the mixed targets), else smoothed CE."""
    if mixup_active:
        return SoftTargetCrossEntropy()
    if smoothing > 0:
        return LabelSmoothingCrossEntropy(smoothing)
    return nn.CrossEntropyLoss()


class DistillationLoss(nn.Module):
    """0.5 x criterion(head, targets) + 0.5 x CE(head_dist, teacher's argmax) with a teacher;
    without one both heads learn the targets (their mean loss). A single-head output is plain."""

    def __init__(self, criterion: nn.Module, teacher: Optional[nn.Module] = None, alpha: float = 0.5):
        super().__init__()
        self.criterion = criterion
        self.teacher = teacher
        self.alpha = alpha
        if teacher is not None:
            teacher.requires_grad_(False).eval()

    def train(self, mode: bool = True):
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # the teacher never leaves eval mode
        return self

    def forward(self, images: torch.Tensor, outputs: Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]],
                targets: torch.Tensor) -> torch.Tensor:
        if not isinstance(outputs, tuple):
            if self.teacher is not None:
                raise ValueError('a teacher needs a student with a distillation head (e.g. care_s0 with distillation=True)')
            return self.criterion(outputs, targets)
        head, head_dist = outputs
        if self.teacher is None:
            return (self.criterion(head, targets) + self.criterion(head_dist, targets)) / 2
        with torch.no_grad():
            teacher_labels = self.teacher(images).argmax(dim=1)
        return (1 - self.alpha) * self.criterion(head, targets) + self.alpha * F.cross_entropy(head_dist, teacher_labels)
