"""LiteRT (TensorFlow Lite) models for Android: the model converted by litert-torch (float32, float16
weights or int8 through PT2E; NCHW or NHWC input), run by LiteRT's interpreter with its XNNPACK
delegate and checked against PyTorch before anything is written."""
import contextlib
import os
import time
from collections import Counter
from pathlib import Path
from typing import Dict, Iterable, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn

from .convert import ATOL, FP16_TOL, RTOL, ExportCheckError, _check_close, _inputs
from .mobile import INT8_TOL, _split_as_slices, calibrate
from .quiet import progress_bar, stage

aten = torch.ops.aten


def require_litert():
    try:
        import ai_edge_litert  # noqa: F401
        import litert_torch  # noqa: F401
    except ImportError as e:
        raise ValueError('LiteRT export needs litert-torch and ai-edge-litert: pip install caretrans[litert]') from e


# ------------------------------------------------------------- exact rewrites for LiteRT
def _elu_without_select(x, alpha=1.0, scale=1.0, input_scale=1.0):
    """aten.elu as relu(x) + alpha (exp(x - relu(x)) - 1), scaled: x - relu(x) is min(x, 0) exactly.

    litert-torch lowers elu to a SELECT on x >= 0, which XNNPACK does not take (the model then runs in
    one delegate segment per attention block); relu, sub, exp and add it takes, in float and (but exp)
    in int8, where a MINIMUM would not be."""
    positive = torch.relu(x)
    negative = torch.exp((x - positive) * input_scale if input_scale != 1 else x - positive) - 1.0
    out = positive + (negative * alpha if alpha != 1 else negative)
    return out * scale if scale != 1 else out


LITERT_DECOMPOSITIONS = {
    aten.elu.default: _elu_without_select,
    # slices share their input's int8 scale (below); a split's outputs would not
    aten.split.Tensor: _split_as_slices,
    aten.split_with_sizes.default: _split_as_slices,
}


def channels_last_input(model: nn.Module) -> nn.Module:
    """`model` taking (N, H, W, C) images, as Android camera pipelines hand them over (litert-torch's
    wrapper: the model becomes its submodule `wrapped`)."""
    import litert_torch

    return litert_torch.to_channel_last_io(model, args=[0]).eval()


def _in_classifier(node) -> bool:
    """Whether a graph node belongs to a classifier head (a top-level module named head*, as timm names
    them, or one of the model inside the NHWC wrapper)."""
    paths = (path.removeprefix('wrapped.') for path, _ in node.meta.get('nn_module_stack', {}).values())
    return any(path.split('.')[0].startswith('head') for path in paths)


def export_graph(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """torch.export of `model` at x's shape with the exact rewrites above, as a module litert-torch converts."""
    graph = torch.export.export(model, (x,)).run_decompositions(LITERT_DECOMPOSITIONS).module()
    # Traced from the eval-mode model; say so (the exported module refuses .eval()), or litert-torch warns.
    return nn.Module.train(graph, False)


@contextlib.contextmanager
def _quiet_converter():
    """litert-torch without its progress log (the caller reports what happened)."""
    name = 'LITERT_TORCH_SHOW_PROGRESS'
    before = os.environ.get(name)
    os.environ[name] = 'n'
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def convert(graph: nn.Module, x: torch.Tensor, quantizer=None) -> bytes:
    """The .tflite flatbuffer of `graph` at x's shape (`quantizer`: the PT2E quantiser of an int8 graph)."""
    import litert_torch
    from litert_torch.quantize.quant_config import QuantConfig

    config = QuantConfig(pt2e_quantizer=quantizer) if quantizer is not None else None
    with _quiet_converter():
        return bytes(litert_torch.convert(graph, (x,), quant_config=config).model_content())


# ------------------------------------------------------------- int8 and float16
def _share_scale_through_slices(graph_module):
    """Give every channel slice the int8 scale of its input, as LiteRT's SLICE requires; litert-torch's
    quantiser does so for slice_copy only, not for the aten.slice that torch.export records."""
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation, SharedQuantizationSpec

    for node in graph_module.graph.nodes:
        if node.op != 'call_function' or node.target is not aten.slice.Tensor:
            continue
        source = node.args[0]
        annotation = source.meta.get('quantization_annotation')
        if 'quantization_annotation' in node.meta or annotation is None or annotation.output_qspec is None:
            continue
        shared = SharedQuantizationSpec(source)
        node.meta['quantization_annotation'] = QuantizationAnnotation(
            input_qspec_map={source: shared}, output_qspec=shared, _annotated=True)


def int8_quantizer():
    """litert-torch's PT2E quantiser (static, symmetric, per-channel weights) with slices sharing their
    input's scale and the classifier head left float, as for ExecuTorch (export.mobile.quantize_int8)."""
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config

    class BodyQuantizer(PT2EQuantizer):
        def annotate(self, graph_module):
            graph_module = super().annotate(graph_module)
            _share_scale_through_slices(graph_module)
            for node in graph_module.graph.nodes:
                if _in_classifier(node):
                    node.meta.pop('quantization_annotation', None)
            return graph_module

    return BodyQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))


def quantize_int8(graph: nn.Module, calibration: Iterable[torch.Tensor], quantizer, progress=None) -> nn.Module:
    """PyTorch's simulation of the int8 `graph`, its activation ranges observed on the `calibration`
    images (`progress`: a bar advanced per image)."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    return convert_pt2e(calibrate(prepare_pt2e(graph, quantizer), calibration, progress), fold_quantize=False)


def float16_weights(buffer: bytes) -> bytes:
    """The model with its float weights stored as float16, dequantised to float32 when loaded (half the
    file; the arithmetic stays float32), through ai-edge-quantizer's float casting."""
    from ai_edge_quantizer import qtyping, quantizer, recipe_manager
    from ai_edge_quantizer.algorithm_manager import AlgorithmName

    weights = qtyping.TensorQuantizationConfig(num_bits=16, symmetric=True, dtype=qtyping.TensorDataType.FLOAT,
                                               granularity=qtyping.QuantGranularity.TENSORWISE)
    recipe = recipe_manager.RecipeManager()
    recipe.add_quantization_config(
        regex='.*', operation_name=qtyping.TFLOperationName.ALL_SUPPORTED, algorithm_key=AlgorithmName.FLOAT_CASTING,
        op_config=qtyping.OpQuantizationConfig(weight_tensor_config=weights, explicit_dequantize=True,
                                               compute_precision=qtyping.ComputePrecision.FLOAT))
    result = quantizer.Quantizer(buffer, recipe.get_quantization_recipe()).quantize(
        enable_progress_bar=False, enable_progress_report=False)
    return bytes(result.quantized_model)


# ------------------------------------------------------------- the flatbuffer: metadata and operators
def add_metadata(buffer: bytes, metadata: Mapping[str, str]) -> bytes:
    """The model with `metadata` (name -> text, UTF-8) added to the flatbuffer's named metadata buffers,
    where on-device code reads them (e.g. a model card: architecture, labels, preprocessing)."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    if not metadata:
        return buffer
    model = schema.ModelT.InitFromPackedBuf(buffer, 0)
    model.metadata = model.metadata or []
    taken = {m.name.decode() for m in model.metadata}
    for name, text in metadata.items():
        if name in taken:
            raise ValueError(f'metadata {name!r}: the converter already wrote an entry of that name')
        data = schema.BufferT()
        data.data = np.frombuffer(str(text).encode(), dtype=np.uint8)
        model.buffers.append(data)
        entry = schema.MetadataT()
        entry.name, entry.buffer = name, len(model.buffers) - 1
        model.metadata.append(entry)
    builder = flatbuffers.Builder(len(buffer) + 1024)
    builder.Finish(model.Pack(builder), file_identifier=b'TFL3')
    return bytes(builder.Output())


def read_metadata(buffer: bytes) -> Dict[str, str]:
    """The flatbuffer's named metadata buffers as text (the converter's own entries included)."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAs(buffer, 0)
    entries = (model.Metadata(i) for i in range(model.MetadataLength()))
    return {m.Name().decode(): model.Buffers(m.Buffer()).DataAsNumpy().tobytes().decode(errors='replace').rstrip('\0')
            for m in entries}


def operators(buffer: bytes) -> Counter:
    """How often each operator occurs in the model: builtin ones by name, custom ones (TensorFlow's Flex
    ops among them, which need TensorFlow's runtime on the phone) as 'custom:NAME'."""
    from ai_edge_litert import schema_py_generated as schema

    names = {code: name for name, code in vars(schema.BuiltinOperator).items() if not name.startswith('_')}
    model = schema.Model.GetRootAs(buffer, 0)
    codes = [model.OperatorCodes(i) for i in range(model.OperatorCodesLength())]
    kinds = [f'custom:{c.CustomCode().decode()}' if c.CustomCode() else
             names[max(c.BuiltinCode(), c.DeprecatedBuiltinCode())] for c in codes]
    counts = Counter()
    for g in range(model.SubgraphsLength()):
        graph = model.Subgraphs(g)
        counts.update(kinds[graph.Operators(i).OpcodeIndex()] for i in range(graph.OperatorsLength()))
    return counts


# ------------------------------------------------------------- running it
class LoadedModel:
    """A .tflite model in LiteRT's interpreter (XNNPACK delegate, `threads` threads); calling it runs one
    float input tensor (quantised first where the model takes int8) and returns the first output in
    float (dequantised where it is int8)."""

    def __init__(self, buffer: bytes, threads: int = 1):
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_content=buffer, num_threads=threads)
        self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]

    def __call__(self, x) -> torch.Tensor:
        x = x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
        shape = tuple(int(d) for d in self.input['shape'])
        if tuple(x.shape) != shape:
            raise ValueError(f'the model takes input of shape {shape}, got {tuple(x.shape)}')
        if self.input['dtype'] != np.float32:
            scale, zero_point = self.input['quantization']
            info = np.iinfo(self.input['dtype'])
            x = np.clip(np.round(x / scale) + zero_point, info.min, info.max)
        self.interpreter.set_tensor(self.input['index'], x.astype(self.input['dtype']))
        self.interpreter.invoke()
        out = self.interpreter.get_tensor(self.output['index']).astype(np.float32)
        if self.output['dtype'] != np.float32:
            scale, zero_point = self.output['quantization']
            out = (out - zero_point) * scale
        return torch.from_numpy(out)


def delegation_report(buffer: bytes) -> Dict[str, object]:
    """How LiteRT runs the model: the XNNPACK delegate segments, the operators inside them, and the
    operators left outside, which LiteRT runs with its own (builtin) kernels."""
    interpreter = LoadedModel(buffer).interpreter
    nodes = interpreter._get_ops_details()  # the model's operators, then one node per delegate segment
    segments = [n for n in nodes if n['op_name'] == 'DELEGATE']
    producer = {t: n['index'] for n in nodes if n['op_name'] != 'DELEGATE' for t in n['outputs']}
    delegated = set()
    for segment in segments:  # a segment holds what lies between its inputs and its outputs
        boundary, pending = set(segment['inputs']), list(segment['outputs'])
        while pending:
            tensor = pending.pop()
            if tensor in boundary or tensor not in producer or producer[tensor] in delegated:
                continue
            delegated.add(producer[tensor])
            pending.extend(nodes[producer[tensor]]['inputs'])
    count = lambda inside: dict(Counter(n['op_name'] for n in nodes if n['op_name'] != 'DELEGATE'
                                        and (n['index'] in delegated) == inside).most_common())
    return dict(segments=len(segments), delegated=count(True), outside=count(False))


def check_litert(model: nn.Module, reference: nn.Module, buffer: bytes, inputs: Sequence[torch.Tensor],
                 tolerance: Optional[float] = None, quantized: bool = False) -> Dict[str, object]:
    """Run the model on `inputs` in LiteRT's interpreter against `reference` (the model, or for int8
    PyTorch's simulation of the quantised model, to INT8_TOL of the logits' scale; `tolerance`: rtol and
    atol for float16 weights); an ExportCheckError when it differs or does not run. Returns the max
    |diff| per batch size (int8: and to the float model)."""
    try:
        loaded = LoadedModel(buffer)
        actual = [loaded(x) for x in inputs]
    except (RuntimeError, ValueError) as e:  # e.g. an operator this runtime does not have
        raise ExportCheckError(f'LiteRT cannot run the converted model: {e}') from e
    with torch.no_grad():
        expected = [reference(x) for x in inputs]
        scale = max(float(e.abs().max()) for e in expected)
        rtol, atol = ((0.0, max(ATOL, INT8_TOL * scale)) if quantized else
                      (tolerance, tolerance) if tolerance else (RTOL, ATOL))
        report = dict(max_abs_diff={str(len(x)): _check_close('LiteRT', e, a, len(x), rtol, atol)
                                    for x, e, a in zip(inputs, expected, actual)})
        if quantized:
            report['max_abs_diff_to_float'] = max(float((a - model(x)).abs().max()) for x, a in zip(inputs, actual))
    return report


def export_tflite(model: nn.Module, output, img_size: int = 224, in_chans: Optional[int] = None, nhwc: bool = False,
                  fp16: bool = False, calibration: Optional[Iterable[torch.Tensor]] = None,
                  metadata: Optional[Mapping[str, str]] = None, progress: Optional[int] = None) -> Dict[str, object]:
    """Convert an eval-mode `model` to a LiteRT model, check it, and only then write `output`.

    The model (batch 1; `nhwc`: channels-last input) runs in LiteRT's interpreter with the XNNPACK
    delegate on random inputs and must match PyTorch (`fp16`: float16 weights, to FP16_TOL; with
    `calibration` images (NCHW), int8: PyTorch's simulation of the quantised model, and the report adds
    the difference to the float model). `metadata` is stored in the file (`add_metadata`). `progress`:
    the number of calibration images, for a progress bar over calibration and conversion. A failed
    check raises ExportCheckError and writes nothing.
    """
    from ..models.checkpoint import atomic_file

    require_litert()
    if fp16 and calibration is not None:
        raise ValueError('float16 weights and int8 exclude each other: an int8 model has int8 weights')
    model = model.eval()
    in_chans = in_chans or getattr(model, 'in_chans', 3)
    layout = (lambda x: x.permute(0, 2, 3, 1).contiguous()) if nhwc else (lambda x: x)
    module = channels_last_input(model) if nhwc else model
    x = layout(torch.zeros(1, in_chans, img_size, img_size))
    bar = progress_bar(progress + 2, 'int8 LiteRT') if progress is not None else None
    start = time.perf_counter()
    with torch.no_grad():
        graph = export_graph(module, x)
        reference, quantizer = module, None
        if calibration is not None:
            quantizer = int8_quantizer()
            reference = graph = quantize_int8(graph, (layout(c) for c in calibration), quantizer, bar)
        with stage(bar, 'converting'):
            buffer = convert(graph, x, quantizer)
        if fp16:
            buffer = float16_weights(buffer)
    buffer = add_metadata(buffer, metadata or {})
    loaded = LoadedModel(buffer)
    report = dict(format='tflite', output=str(output), img_size=img_size, layout='NHWC' if nhwc else 'NCHW',
                  input_shape=[int(d) for d in loaded.input['shape']], input_dtype=np.dtype(loaded.input['dtype']).name,
                  precision='int8' if calibration is not None else 'fp16 weights' if fp16 else 'fp32',
                  conversion_s=round(time.perf_counter() - start, 1), operators=dict(operators(buffer).most_common()),
                  metadata=sorted(metadata or {}), **delegation_report(buffer))
    inputs = [layout(t) for t in _inputs([1], in_chans, img_size)]
    with stage(bar, 'checking'):
        report.update(check_litert(module, reference, buffer, inputs, tolerance=FP16_TOL if fp16 else None,
                                   quantized=calibration is not None))
    if bar is not None:
        bar.close()
    report['numerically_checked'] = True
    with atomic_file(output) as tmp:
        Path(tmp).write_bytes(buffer)
    return report
