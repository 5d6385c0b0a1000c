"""int8 post-training static quantisation of an ONNX model with ONNX Runtime, and the calibration and
evaluation images of every int8 export (ONNX, ExecuTorch)."""
import tempfile
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np

from ..models.card import ModelCard
from .quiet import progress_bar


def dataset_batches(data: str, split: str, count: int, img_size: int, in_chans: int,
                    batch_size: int = 32, crop_pct: float = 0.875, card: Optional[ModelCard] = None
                    ) -> Iterator[tuple]:
    """(images, labels) numpy batches of the first `count` images of a caretrans dataset, through the
    evaluation transform (resize, centre crop, normalisation). With the model's `card`, labels are its
    classes matched by name and the normalisation and interpolation are the recorded ones; else the
    data's own."""
    from timm.data import create_transform

    from ..data import NAMED_DATASETS, create_dataset, dataset_info
    from ..data.loader import collate_readable

    classes = list(card.label_names) if card is not None and data not in NAMED_DATASETS else None
    dataset = create_dataset(data, split, classes=classes, in_chans=None if data in NAMED_DATASETS else in_chans)
    info = dataset_info(dataset)
    if info['in_chans'] != in_chans:
        raise ValueError(f'{data} has {info["in_chans"]}-channel images but the model takes {in_chans}; '
                         f'build it with in_chans={info["in_chans"]}')
    mean, std = (card.mean, card.std) if card is not None else (tuple(info['mean']), tuple(info['std']))
    dataset.transform = create_transform(img_size, is_training=False, crop_pct=crop_pct, mean=mean, std=std,
                                         interpolation=card.interpolation if card is not None else 'bicubic')
    count = min(count, len(dataset))
    for start in range(0, count, batch_size):
        batch = collate_readable([dataset[i] for i in range(start, min(start + batch_size, count))])
        if batch is not None:
            yield batch[0].numpy(), batch[1].numpy()


def calibration_images(data: str, count: int, img_size: int, in_chans: int, split: str = 'train',
                       crop_pct: float = 0.875, card: Optional[ModelCard] = None) -> Iterator[np.ndarray]:
    """The first `count` images of `split`, one (1, C, H, W) batch each: exported graphs may have a fixed batch of 1."""
    return (x[None] for batch, _ in dataset_batches(data, split, count, img_size, in_chans, crop_pct=crop_pct,
                                                    card=card)
            for x in batch)


def quantize_onnx(float_path, output, data: str, count: int = 256, img_size: int = 224, in_chans: int = 3,
                  split: str = 'train', crop_pct: float = 0.875, card: Optional[ModelCard] = None,
                  progress: bool = False) -> Path:
    """Write an int8 (QDQ, per-channel weights) copy of `float_path`, calibrated with min/max
    statistics on `count` images of `data` ('fashion-mnist', 'synthetic' or an image folder);
    `progress`: a bar over the calibration images."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from .convert import onnx_session

    input_name = onnx_session(float_path, threads=1).get_inputs()[0].name

    bar = progress_bar(count, 'int8 ONNX calibration', unit='image') if progress else None

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.images = calibration_images(data, count, img_size, in_chans, split, crop_pct, card)

        def get_next(self) -> Optional[dict]:
            x = next(self.images, None)
            if bar is not None:
                bar.update(0 if x is None else 1)
            return None if x is None else {input_name: x}

    output = Path(output)
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / 'prepared.onnx'
        quant_pre_process(str(float_path), str(prepared), skip_symbolic_shape=True)
        quantize_static(str(prepared), str(output), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        op_types_to_quantize=['Conv', 'Gemm'])  # attention MatMuls stay float: both sides vary
    if bar is not None:
        bar.close()
    return output


def top1(predict: Callable[[np.ndarray], np.ndarray], data: str, count: int, img_size: int, in_chans: int,
         batch_size: int = 32, split: str = 'val', crop_pct: float = 0.875, card: Optional[ModelCard] = None,
         progress: Optional[str] = None) -> float:
    """Top-1 accuracy (%) of a classifier (`predict`: images -> logits) on the first `count` images of `split`
    (labelled by the `card`'s classes, by name, when given); `progress`: a bar of that name over the images."""
    correct = total = 0
    bar = progress_bar(count, progress, unit='image') if progress else None
    for images, labels in dataset_batches(data, split, count, img_size, in_chans, batch_size, crop_pct, card):
        correct += int((np.asarray(predict(images)).argmax(1) == labels).sum())
        total += len(labels)
        if bar is not None:
            bar.update(len(labels))
    if bar is not None:
        bar.close()
    return 100.0 * correct / total


def onnx_top1(path, data: str, count: int, img_size: int, in_chans: int, split: str = 'val',
              crop_pct: float = 0.875, card: Optional[ModelCard] = None, progress: Optional[str] = None) -> float:
    """Top-1 accuracy (%) of an ONNX classifier on the first `count` images of `split`."""
    from .convert import onnx_session

    session = onnx_session(path)
    name = session.get_inputs()[0].name
    batch_size = 1 if session.get_inputs()[0].shape[0] == 1 else 32
    return top1(lambda images: session.run(None, {name: images})[0], data, count, img_size, in_chans, batch_size,
                split, crop_pct, card, progress)
