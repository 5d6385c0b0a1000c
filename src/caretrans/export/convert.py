"""Export a model to ONNX, TorchScript or Core ML, then check the artefact against PyTorch."""
import os
import platform
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn

from ..models import MIN_INPUT_SIZE

FORMATS = ('onnx', 'torchscript', 'coreml')
# An export must reproduce PyTorch's eval outputs to float rounding.
RTOL, ATOL = 1e-4, 1e-4
# float16 compute (Core ML's Neural Engine) rounds every activation to 11 significant bits.
FP16_TOL = 2e-2


class ExportCheckError(ValueError):
    """An exported artefact that does not compute what the PyTorch model computes."""


def _check_close(name: str, expected: torch.Tensor, actual, batch: int, rtol: float = RTOL,
                 atol: float = ATOL) -> float:
    """Max abs difference, or an ExportCheckError naming it when beyond rtol/atol."""
    expected = expected.detach().numpy()
    actual = np.asarray(actual)
    if not np.isfinite(expected).all():
        raise ExportCheckError(f'the PyTorch model outputs NaN or inf (batch {batch}), so {name} cannot be checked '
                               'against it: are its weights finite?')
    if actual.shape != expected.shape:
        raise ExportCheckError(f'{name} output shape {actual.shape} differs from PyTorch {expected.shape} '
                               f'(batch {batch})')
    diff = float(np.abs(actual - expected).max())
    if not np.allclose(actual, expected, rtol=rtol, atol=atol):
        raise ExportCheckError(f'{name} output differs from PyTorch by up to {diff:.3g} at batch {batch} '
                               f'(tolerance rtol={rtol}, atol={atol})')
    return diff


def _inputs(batches: List[int], in_chans: int, img_size: int, seed: int = 0) -> List[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, in_chans, img_size, img_size, generator=g) for b in batches]


def onnx_session(path, threads: Optional[int] = None):
    """An onnxruntime CPU session, with `threads` intra-op threads (all cores when None)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=['CPUExecutionProvider'])


def export_onnx(model: nn.Module, x: torch.Tensor, output: Path, dynamic_batch: bool = False, opset: int = 17,
                metadata: Optional[Dict[str, str]] = None):
    """ONNX through the TorchScript-based exporter (seconds, where the dynamo exporter takes ~20 s); `metadata`
    goes to the model's metadata_props."""
    dynamic_axes = {'image': {0: 'batch'}, 'logits': {0: 'batch'}} if dynamic_batch else None
    with warnings.catch_warnings():  # the exporter's deprecation notice and tracer warnings
        warnings.simplefilter('ignore')
        torch.onnx.export(model, (x,), str(output), dynamo=False, opset_version=opset, input_names=['image'],
                          output_names=['logits'], dynamic_axes=dynamic_axes)
    if metadata:
        import onnx

        proto = onnx.load(str(output))
        onnx.helper.set_model_props(proto, metadata)
        onnx.save(proto, str(output))


def check_onnx(model: nn.Module, output: Path, inputs: List[torch.Tensor]) -> Dict[int, float]:
    import onnx

    onnx.checker.check_model(str(output))
    session = onnx_session(output)
    name = session.get_inputs()[0].name
    with torch.no_grad():
        return {len(x): _check_close('ONNX Runtime', model(x), session.run(None, {name: x.numpy()})[0], len(x))
                for x in inputs}


def export_torchscript(model: nn.Module, x: torch.Tensor, output: Path, metadata: Optional[Dict[str, str]] = None):
    """A traced TorchScript archive; `metadata` as its extra files (`torch.jit.load(path, _extra_files=...)`)."""
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', torch.jit.TracerWarning)
        traced = torch.jit.trace(model, x)
    traced.save(str(output), _extra_files=dict(metadata or {}))


def check_torchscript(model: nn.Module, output: Path, inputs: List[torch.Tensor]) -> Dict[int, float]:
    loaded = torch.jit.load(str(output), map_location='cpu')
    with torch.no_grad(), torch.jit.optimized_execution(False):  # no JIT warm-up compiles for a check
        return {len(x): _check_close('TorchScript', model(x), loaded(x), len(x)) for x in inputs}


class ImageInput(nn.Module):
    """`model` behind the image preprocessing: pixels times `scale` in [0, 1] (Core ML scales 0-255 by 1/255
    before this; an ExecuTorch program takes 0-255 with scale 1/255), normalised per channel by
    (x - mean) / std, as in training."""

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float], scale: float = 1.0):
        super().__init__()
        self.model, self.in_chans = model, len(mean)
        # (x * scale - mean) / std as (x - mean / scale) * (scale / std): one subtraction, one multiplication.
        self.register_buffer('mean', torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) / scale)
        self.register_buffer('inv_std', scale / torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self.mean) * self.inv_std)


def export_coreml(model: nn.Module, x: torch.Tensor, output: Path, fp16: bool = False,
                  image: Optional[Tuple[Sequence[float], Sequence[float]]] = None,
                  metadata: Optional[Dict[str, str]] = None):
    """An ML program (.mlpackage) converted by coremltools from the torch.export program.

    fp16: float16 compute precision (what the Neural Engine runs; weights stored in float16).
    image: (mean, std): the input is an RGB (grayscale for one channel) image of 0-255 pixels, which
    the program scales and normalises itself. metadata: the model's user_defined_metadata.
    """
    try:
        import coremltools as ct
    except ImportError as e:
        raise ValueError('Core ML export needs coremltools: pip install caretrans[coreml]') from e
    if image is None:
        inputs = [ct.TensorType(name='image', shape=tuple(x.shape))]
    else:
        model = ImageInput(model, *image).eval()
        layout = ct.colorlayout.GRAYSCALE if x.shape[1] == 1 else ct.colorlayout.RGB
        inputs = [ct.ImageType(name='image', shape=tuple(x.shape), scale=1 / 255, color_layout=layout)]
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        program = torch.export.export(model, (x,)).run_decompositions({})
        mlmodel = ct.convert(program, inputs=inputs, outputs=[ct.TensorType(name='logits')], convert_to='mlprogram',
                             compute_precision=ct.precision.FLOAT16 if fp16 else ct.precision.FLOAT32,
                             minimum_deployment_target=ct.target.macOS13)
    mlmodel.user_defined_metadata.update(metadata or {})
    mlmodel.save(str(output))


def _image_batch(x: torch.Tensor) -> Tuple[object, torch.Tensor]:
    """A PIL image of random 0-255 pixels for Core ML and the same pixels as a [0, 1] tensor for PyTorch."""
    from PIL import Image

    pixels = (torch.rand(x.shape[1:], generator=torch.Generator().manual_seed(0)) * 255).round().to(torch.uint8)
    array = pixels[0].numpy() if x.shape[1] == 1 else pixels.permute(1, 2, 0).numpy()
    return Image.fromarray(array), pixels[None].float() / 255


def check_coreml(model: nn.Module, output: Path, inputs: List[torch.Tensor], fp16: bool = False,
                 image: Optional[Tuple[Sequence[float], Sequence[float]]] = None) -> Tuple[Dict[int, float], dict]:
    """The saved package read back and its program checked against the model (`check_coreml_spec`);
    on macOS also its predictions against PyTorch (elsewhere Core ML cannot run)."""
    import coremltools as ct

    x = inputs[0]
    program = check_coreml_spec(model, ct.models.MLModel(str(output), skip_model_load=True).get_spec(), x, fp16)
    if platform.system() != 'Darwin':
        return {}, program
    mlmodel = ct.models.MLModel(str(output))
    feed, x = _image_batch(x) if image is not None else (x.numpy(), x)
    reference = ImageInput(model, *image).eval() if image is not None else model
    tol = FP16_TOL if fp16 else RTOL
    with torch.no_grad():
        diff = _check_close('Core ML', reference(x), mlmodel.predict({'image': feed})['logits'], 1, tol, tol)
    return {1: diff}, program


def check_coreml_spec(model: nn.Module, spec, x: torch.Tensor, fp16: bool = False) -> Dict[str, object]:
    """Check a Core ML ML program against the model it was converted from: input (tensor or image)
    and output shapes, one conv per Conv2d, and the compute precision of every conv."""
    from coremltools.proto import MIL_pb2

    input_type = spec.description.input[0].type
    if input_type.HasField('imageType'):
        image = input_type.imageType
        channels = 1 if image.colorSpace == image.GRAYSCALE else 3
        shape = (1, channels, image.height, image.width)
    else:
        shape = tuple(input_type.multiArrayType.shape)
    if shape != tuple(x.shape):
        raise ExportCheckError(f'Core ML input shape {shape} differs from {tuple(x.shape)}')
    function = spec.mlProgram.functions['main']
    ops = function.block_specializations[function.opset].operations
    convs = [op for op in ops if op.type == 'conv']
    expected_convs = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    if len(convs) != expected_convs:
        raise ExportCheckError(f'Core ML program has {len(convs)} conv ops, the model {expected_convs} Conv2d')
    dtype = MIL_pb2.FLOAT16 if fp16 else MIL_pb2.FLOAT32
    other = [op.outputs[0].name for op in convs if op.outputs[0].type.tensorType.dataType != dtype]
    if other:
        raise ExportCheckError(f'{len(other)} Core ML convs (first: {other[0]}) do not compute in '
                               f'{"float16" if fp16 else "float32"}')
    with torch.no_grad():
        expected = tuple(model(x).shape)
    output_shape = tuple(spec.description.output[0].type.multiArrayType.shape)
    if output_shape != expected:
        raise ExportCheckError(f'Core ML output shape {output_shape} differs from PyTorch {expected}')
    return dict(input='image' if input_type.HasField('imageType') else 'tensor', input_shape=list(shape),
                conv_ops=len(convs), precision='float16' if fp16 else 'float32', ops=len(ops))


_CHECKS = {'onnx': check_onnx, 'torchscript': check_torchscript}


def check_export_request(fmt: str, output, img_size: int, dynamic_batch: bool = False) -> Path:
    """Raise a ValueError for an export that cannot succeed, before any work: an unknown format, an
    input size CARE cannot take, or an output that is a folder, needs another name or cannot be written."""
    if fmt not in FORMATS + ('executorch', 'tflite'):  # ExecuTorch programs: export.mobile; LiteRT: export.litert
        raise ValueError(f'unknown export format {fmt!r}; choose one of {", ".join(FORMATS)}, executorch, tflite')
    if dynamic_batch and fmt not in ('onnx', 'executorch'):
        raise ValueError('--dynamic-batch is supported for ExecuTorch and ONNX only')
    if img_size < MIN_INPUT_SIZE:
        raise ValueError(f'img_size {img_size} is too small: CARE downsamples 32x and needs at least '
                         f'{MIN_INPUT_SIZE} pixels a side')
    output = Path(output)
    if fmt == 'coreml':
        if output.suffix != '.mlpackage' or output.is_file():
            raise ValueError(f'output {output}: Core ML writes a .mlpackage folder; name it e.g. '
                             f'{output.with_suffix(".mlpackage")}')
    elif output.is_dir():
        suffix = {'executorch': 'pte', 'torchscript': 'pt'}.get(fmt, fmt)
        raise ValueError(f'output {output} is a folder; give a file name, e.g. {output / ("model." + suffix)}')
    existing = output.parent
    while not existing.exists():  # export_model creates the missing folders
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f'cannot write {output}: {existing} is not a folder')
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f'cannot write {output}: {existing} is not writable')
    return output


def export_model(model: nn.Module, fmt: str, output, img_size: int = 224, dynamic_batch: bool = False,
                 in_chans: Optional[int] = None, fp16: bool = False,
                 image: Optional[Tuple[Sequence[float], Sequence[float]]] = None,
                 metadata: Optional[Dict[str, str]] = None) -> Dict[str, object]:
    """Export an eval-mode `model` and check the artefact; returns what was checked.

    The check runs the artefact on random inputs (batches 1 and 8 for a dynamic batch axis,
    else 1) and raises an ExportCheckError when it disagrees with PyTorch. The artefact is
    written beside `output` and moved there only once it passes: a failed export leaves nothing.
    Core ML only: `fp16` compute precision, `image` = (mean, std) for an image input normalised
    inside the program. `metadata` (strings, e.g. the model card's JSON under CARD_KEY) is stored where the
    format keeps it: ONNX metadata_props, TorchScript extra files, Core ML user_defined_metadata
    (`export_metadata` reads it back).
    """
    if fmt not in FORMATS:
        raise ValueError(f'unknown export format {fmt!r}; choose one of {", ".join(FORMATS)}')
    output = check_export_request(fmt, output, img_size, dynamic_batch)
    if (fp16 or image is not None) and fmt != 'coreml':
        raise ValueError('--fp16 and --image-input are Core ML options')
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in (metadata or {}).items()):
        raise ValueError('export metadata maps strings to strings')
    output.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    in_chans = in_chans if in_chans is not None else getattr(model, 'in_chans', 3)
    x = torch.zeros(1, in_chans, img_size, img_size)
    # A traced TorchScript model keeps a free batch axis: check it at another batch too.
    batches = [1, 8] if dynamic_batch else [1, 2] if fmt == 'torchscript' else [1]
    report = dict(format=fmt, output=str(output), img_size=img_size, dynamic_batch=dynamic_batch)
    staging = Path(tempfile.mkdtemp(dir=output.parent, prefix=f'.{output.name}.'))
    try:
        staged = staging / output.name
        with torch.no_grad():
            if fmt == 'onnx':
                export_onnx(model, x, staged, dynamic_batch, metadata=metadata)
            elif fmt == 'torchscript':
                export_torchscript(model, x, staged, metadata)
            else:
                export_coreml(model, x, staged, fp16, image, metadata)
        inputs = _inputs(batches, in_chans, img_size)
        if fmt == 'coreml':
            max_abs_diff, report['coreml_program'] = check_coreml(model, staged, inputs, fp16, image)
        else:
            max_abs_diff = _CHECKS[fmt](model, staged, inputs)
        if output.is_dir():  # an earlier .mlpackage: os.replace cannot replace a non-empty folder
            shutil.rmtree(output)
        os.replace(staged, output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    report.update(max_abs_diff={str(b): d for b, d in max_abs_diff.items()}, numerically_checked=bool(max_abs_diff),
                  input_shape=[-1 if dynamic_batch else 1, in_chans, img_size, img_size],
                  metadata=sorted(metadata or {}))
    return report


def export_metadata(path) -> Dict[str, str]:
    """The metadata `export_model` stored in an ONNX file, a TorchScript archive or a Core ML package."""
    path = Path(path)
    if path.suffix == '.onnx':
        import onnx

        return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    if path.suffix == '.mlpackage':
        import coremltools as ct

        return dict(ct.models.MLModel(str(path), skip_model_load=True).user_defined_metadata)
    import zipfile

    with zipfile.ZipFile(path) as archive:  # TorchScript: extra files are <archive>/extra/<name>
        return {Path(name).name: archive.read(name).decode('utf-8') for name in archive.namelist()
                if Path(name).parent.name == 'extra'}
