"""int8 static quantisation with ONNX Runtime, calibrated on a small synthetic set."""
import numpy as np
import onnx
import pytest
import timm
import torch

import caretrans
from caretrans.export import export_model, onnx_session, quantize_onnx
from caretrans.export.quantize import dataset_batches


def test_int8_model_is_quantised_and_close_to_float(tmp_path):
    torch.manual_seed(0)
    model = caretrans.reparameterize(timm.create_model('care_s0', num_classes=10))
    export_model(model, 'onnx', tmp_path / 'f.onnx', img_size=64)
    quantize_onnx(tmp_path / 'f.onnx', tmp_path / 'q.onnx', 'synthetic', count=8, img_size=64)
    ops = [n.op_type for n in onnx.load(str(tmp_path / 'q.onnx')).graph.node]
    assert ops.count('DequantizeLinear') > 50 and ops.count('QuantizeLinear') > 20
    images, labels = next(dataset_batches('synthetic', 'val', 8, 64, 3))
    assert images.shape == (8, 3, 64, 64) and labels.shape == (8,)
    f, q = (onnx_session(tmp_path / p, threads=1) for p in ('f.onnx', 'q.onnx'))
    a = np.concatenate([f.run(None, {'image': x[None]})[0] for x in images])
    b = np.concatenate([q.run(None, {'image': x[None]})[0] for x in images])
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cosine.min() > 0.95, cosine  # int8 follows the float model, to quantisation error


def test_calibration_data_must_fit_the_model():
    with pytest.raises(ValueError, match='3-channel images but the model takes 1'):
        next(dataset_batches('synthetic', 'train', 4, 64, in_chans=1))
