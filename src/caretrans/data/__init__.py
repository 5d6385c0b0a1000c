"""Datasets for training and evaluation: Fashion-MNIST, ImageNet-style folders, synthetic images."""
from .datasets import (
    FASHION_MNIST_CLASSES, FashionMNIST, ImageFolderSafe, SyntheticImages, create_dataset, dataset_info,
)

__all__ = [
    'FASHION_MNIST_CLASSES', 'FashionMNIST', 'ImageFolderSafe', 'SyntheticImages', 'create_dataset', 'dataset_info',
]
