"""Datasets for training and evaluation: Fashion-MNIST, ImageNet-style folders, synthetic images."""
from .datasets import (
    CLASS_MAP_FILE, FASHION_MNIST_CLASSES, NAMED_DATASETS, FashionMNIST, ImageFolderSafe, SyntheticImages,
    create_dataset, dataset_info, find_images, folder_classes, image_files, read_class_map, recorded_classes, save_class_map,
)
from .images import (
    MAX_ASPECT_RATIO, MAX_IMAGE_PIXELS, UnreadableImageError, convert_image, image_header, image_size, read_image,
)

__all__ = [
    'CLASS_MAP_FILE', 'FASHION_MNIST_CLASSES', 'NAMED_DATASETS', 'FashionMNIST', 'ImageFolderSafe', 'SyntheticImages',
    'create_dataset', 'dataset_info', 'find_images', 'folder_classes', 'image_files', 'read_class_map', 'recorded_classes',
    'save_class_map', 'MAX_ASPECT_RATIO', 'MAX_IMAGE_PIXELS', 'UnreadableImageError', 'convert_image', 'image_header', 'image_size',
    'read_image',
]
