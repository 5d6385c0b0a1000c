"""ExecuTorch programs (.pte) for phones: the model lowered to XNNPACK (CPU) or Core ML, float or int8,
checked against PyTorch before anything is written."""
import itertools
import operator
import time
from collections import Counter
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Union

import torch
import torch.nn as nn

from .convert import ATOL, RTOL, ExportCheckError, _check_close, _inputs, check_coreml_spec
from .quiet import progress_bar, stage

BACKENDS = ('xnnpack', 'coreml')
# An int8 program must match PyTorch's simulation of it to this fraction of the largest |logit|. XNNPACK's
# fixed-point kernels round differently from the simulation: measured 1-3 % of the logits' scale on a
# trained CARE-S0, up to 8 % on random weights; a broken lowering is off by the logits' own size.
INT8_TOL = 0.15
aten = torch.ops.aten


def require_executorch():
    try:
        import executorch  # noqa: F401
    except ImportError as e:
        raise ValueError('ExecuTorch export needs executorch: pip install caretrans[mobile]') from e


# ------------------------------------------------------------- exact rewrites for XNNPACK
# XNNPACK has no split and no LayerNorm; ExecuTorch runs such ops with its portable kernels, between
# delegate segments. These decompositions express them with ops XNNPACK has, computing the same values.

def _split_as_slices(x: torch.Tensor, split: Union[int, Sequence[int]], dim: int = 0) -> List[torch.Tensor]:
    """aten.split / split_with_sizes as channel slices (XNNPACK copies slices; it has no split)."""
    size = x.shape[dim]
    sizes = list(split) if isinstance(split, (list, tuple)) else [min(split, size - s) for s in range(0, size, split)]
    ends = list(itertools.accumulate(sizes))
    return [aten.slice.Tensor(x, dim, end - s, end) for s, end in zip(sizes, ends)]


def _normalise_as_spatial_means(x, normalized_shape, weight, bias, eps):
    """(LayerNorm(x), mean, rstd) over the last dims, the statistics taken as 4-D spatial means
    (x viewed as (M, 1, C, 1)), which XNNPACK runs as global average pooling."""
    lead = x.shape[:x.dim() - len(normalized_shape)]
    rows = x.reshape(-1, 1, x.shape[len(lead):].numel(), 1)
    mean = rows.mean(dim=(2, 3), keepdim=True)
    centred = rows - mean
    rstd = torch.rsqrt((centred * centred).mean(dim=(2, 3), keepdim=True) + eps)
    out = (centred * rstd).reshape(x.shape)
    if weight is not None:
        out = out * weight
    if bias is not None:
        out = out + bias
    stats = list(lead) + [1] * len(normalized_shape)
    return out, mean.reshape(stats), rstd.reshape(stats)


def _layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5, cudnn_enable=True):
    return _normalise_as_spatial_means(x, normalized_shape, weight, bias, eps)[0]


XNNPACK_DECOMPOSITIONS = {
    aten.split.Tensor: _split_as_slices,  # torch.chunk lands here
    aten.split_with_sizes.default: _split_as_slices,
    aten.layer_norm.default: _layer_norm,
    aten.native_layer_norm.default: _normalise_as_spatial_means,
}


def _batch_axis(x: torch.Tensor, max_batch: int):
    """(example input, dynamic shapes) for torch.export: x's shape, or with max_batch > 1 its batch free
    from 1 to max_batch (traced at batch 2: an example batch of 1 would fix it at 1)."""
    if max_batch <= 1:
        return x, None
    return torch.cat([x[:1]] * 2), ({0: torch.export.Dim('batch', min=1, max=max_batch)},)


def export_program(model: nn.Module, x: torch.Tensor, backend: str = 'xnnpack', max_batch: int = 1):
    """torch.export of `model` at x's shape (max_batch > 1: any batch up to it); for XNNPACK with the
    exact rewrites above."""
    example, dynamic_shapes = _batch_axis(x, max_batch)
    program = torch.export.export(model, (example,), dynamic_shapes=dynamic_shapes)
    return program.run_decompositions(XNNPACK_DECOMPOSITIONS) if backend == 'xnnpack' else program


def _outside_classifier(node) -> bool:
    """Whether a graph node belongs to no classifier head (a top-level module named head*, as timm names them)."""
    return not any(path.split('.')[0].startswith('head') for path, _ in node.meta.get('nn_module_stack', {}).values())


def quantize_int8(program, calibration: Iterable[torch.Tensor], progress=None) -> nn.Module:
    """PT2E static int8 with XNNPACK's quantiser (symmetric, per-channel weights), its activation
    ranges observed on the `calibration` images (`progress`: a bar advanced per image); returns
    PyTorch's simulation of the int8 model.

    The classifier head stays float: its LayerNorm, decomposed, would square and average int8
    activations (on a Fashion-MNIST CARE-S0: top-1 -6.7 points with it quantised, -0.4 without),
    for a few thousand of the model's multiply-adds."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer, get_symmetric_quantization_config)
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    quantizer.set_filter_function(_outside_classifier)
    return convert_pt2e(calibrate(prepare_pt2e(program.module(), quantizer), calibration, progress))


def calibrate(prepared: nn.Module, calibration: Iterable[torch.Tensor], progress=None) -> nn.Module:
    """Run the `calibration` images through a PT2E-prepared model, whose observers record activation ranges."""
    seen = 0
    with torch.no_grad():
        for x in calibration:
            prepared(x)
            seen += 1
            if progress is not None:
                progress.update()
    if not seen:
        raise ValueError('int8 calibration needs at least one image')
    return prepared


def _xnnpack_partitioner():
    from executorch.backends.xnnpack.partition.config import ALL_PARTITIONER_CONFIGS
    from executorch.backends.xnnpack.partition.config.generic_node_configs import EluConfig
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

    class UnitEluConfig(EluConfig):
        """XNNPACK's ELU, which ExecuTorch leaves out of its defaults: its serialiser keeps alpha only,
        so it takes the ELUs whose scale and input_scale are 1 (torch.nn.functional.elu's)."""

        def check_constraints(self, node, ep) -> bool:
            return super().check_constraints(node, ep) and all(float(a) == 1.0 for a in node.args[2:4])

    return XnnpackPartitioner(configs=list(ALL_PARTITIONER_CONFIGS) + [UnitEluConfig])


def _coreml_partitioner(fp16: bool):
    import coremltools as ct
    from executorch.backends.apple.coreml.compiler import CoreMLBackend
    from executorch.backends.apple.coreml.partition import CoreMLPartitioner

    specs = CoreMLBackend.generate_compile_specs(
        compute_precision=ct.precision.FLOAT16 if fp16 else ct.precision.FLOAT32,
        minimum_deployment_target=ct.target.iOS16)
    return CoreMLPartitioner(compile_specs=specs)


def lower(program, backend: str = 'xnnpack', fp16: bool = False):
    """The edge program with every part the backend takes delegated to it."""
    from executorch.exir import to_edge_transform_and_lower

    if backend not in BACKENDS:
        raise ValueError(f'unknown ExecuTorch backend {backend!r}; choose one of {", ".join(BACKENDS)}')
    if fp16 and backend != 'coreml':
        raise ValueError('fp16 compute precision is a Core ML option (XNNPACK programs run in float32 or int8)')
    partitioner = _xnnpack_partitioner() if backend == 'xnnpack' else _coreml_partitioner(fp16)
    return to_edge_transform_and_lower(program, partitioner=[partitioner])


def program_buffer(model: nn.Module, x: torch.Tensor, backend: str = 'xnnpack') -> bytes:
    """The serialised ExecuTorch program (.pte contents) of a float `model` lowered at x's shape."""
    with torch.no_grad():
        return lower(export_program(model, x, backend), backend).to_executorch().buffer


def _op_name(target) -> str:
    name = getattr(target, '__name__', str(target))
    return name.removeprefix('aten.').removesuffix('.default')


def _call_counts(graph_module) -> Counter:
    return Counter(_op_name(n.target) for n in graph_module.graph.nodes
                   if n.op == 'call_function' and n.target is not operator.getitem)


def delegated_modules(edge) -> list:
    """The lowered backend modules of an edge program, in graph order."""
    from executorch.exir.delegate import executorch_call_delegate

    graph_module = edge.exported_program().graph_module
    return [getattr(graph_module, n.args[0].target) for n in graph_module.graph.nodes
            if n.op == 'call_function' and n.target is executorch_call_delegate]


def delegation_report(edge) -> Dict[str, object]:
    """How the program runs: the number of delegate segments, the operators inside them, and the
    operators left outside, which ExecuTorch runs with its portable (reference) kernels. Call it
    before `to_executorch()`, which turns the graph into out-variants and memory allocations."""
    from executorch.exir.delegate import executorch_call_delegate

    lowered = delegated_modules(edge)
    delegated = Counter()
    for module in lowered:
        delegated.update(_call_counts(module.original_module.graph_module))
    portable = _call_counts(edge.exported_program().graph_module)
    portable.pop(_op_name(executorch_call_delegate), None)
    return dict(backends=sorted({m.backend_id for m in lowered}), segments=len(lowered),
                delegated=dict(delegated.most_common()), portable=dict(portable.most_common()))


class LoadedProgram:
    """A serialised program loaded by ExecuTorch's runtime; calling it runs `forward` on one tensor."""

    def __init__(self, buffer: bytes):
        from executorch.runtime import Runtime

        self.program = Runtime.get().load_program(buffer)  # owns the method's memory: it must outlive it
        self.method = self.program.load_method('forward')

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.method.execute([x])[0]


def set_threads(threads: int):
    """Threads of ExecuTorch's shared thread pool (XNNPACK's kernels run on it)."""
    from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool

    _unsafe_reset_threadpool(threads)


def check_xnnpack(model: nn.Module, reference: nn.Module, buffer: bytes, inputs: Sequence[torch.Tensor],
                  quantized: bool = False) -> Dict[str, object]:
    """Run the program on `inputs` through ExecuTorch's runtime against `reference` (the model, or for
    int8 PyTorch's simulation of the quantised model, to INT8_TOL of the logits' scale); an
    ExportCheckError when it differs. Returns the max |diff| per batch size (int8: and to the float model)."""
    program = LoadedProgram(buffer)
    with torch.no_grad():
        expected = [reference(x) for x in inputs]
        scale = max(float(e.abs().max()) for e in expected)
        rtol, atol = (0.0, max(ATOL, INT8_TOL * scale)) if quantized else (RTOL, ATOL)
        report = dict(max_abs_diff={str(len(x)): _check_close('ExecuTorch', e, program(x), len(x), rtol, atol)
                                    for x, e in zip(inputs, expected)})
        if quantized:
            report['max_abs_diff_to_float'] = max(float((program(x) - model(x)).abs().max()) for x in inputs)
    return report


def check_coreml_delegates(model: nn.Module, edge, x: torch.Tensor, fp16: bool) -> dict:
    """Core ML cannot run off Apple hardware: unpack the ML program each Core ML delegate holds and
    check it against the model (input and output shapes, one conv per Conv2d, compute precision)."""
    import tempfile

    import coremltools as ct
    from executorch.backends.apple.coreml import executorchcoreml

    lowered = delegated_modules(edge)
    if len(lowered) != 1:
        raise ExportCheckError(f'the program has {len(lowered)} Core ML segments; one was expected '
                               f'(the whole model)')
    with tempfile.TemporaryDirectory() as tmp:
        if not executorchcoreml.unflatten_directory_contents(bytes(lowered[0].processed_bytes), tmp):
            raise ExportCheckError('the Core ML delegate holds no readable model package')
        package = next(Path(tmp).rglob('*.mlpackage'), None)
        if package is None:
            raise ExportCheckError('the Core ML delegate holds no .mlpackage')
        spec = ct.models.MLModel(str(package), skip_model_load=True).get_spec()
    return check_coreml_spec(model, spec, x, fp16)


def export_executorch(model: nn.Module, output, backend: str = 'xnnpack', img_size: int = 224,
                      in_chans: Optional[int] = None, fp16: bool = False,
                      calibration: Optional[Iterable[torch.Tensor]] = None, max_batch: int = 1,
                      progress: Optional[int] = None) -> Dict[str, object]:
    """Lower an eval-mode `model` to an ExecuTorch program, check it, and only then write `output`.

    XNNPACK programs run through ExecuTorch's runtime on random inputs (batch 1, and max_batch when
    the batch is free up to it) and must match PyTorch (with `calibration` images, int8: PyTorch's
    simulation of the quantised model; the report adds the difference to the float model). Core ML
    programs are checked structurally (`check_coreml_delegates`). `progress`: the number of
    calibration images, for a progress bar over calibration and lowering. A failed check raises
    ExportCheckError and writes nothing.
    """
    from ..models.checkpoint import atomic_file

    require_executorch()
    if calibration is not None and backend != 'xnnpack':
        raise ValueError('int8 programs are lowered to XNNPACK: use --backend xnnpack')
    if max_batch < 1:
        raise ValueError(f'max_batch {max_batch}: expected at least 1')
    if max_batch > 1 and backend != 'xnnpack':
        raise ValueError('a free batch is lowered to XNNPACK only: use --backend xnnpack')
    model = model.eval()
    in_chans = in_chans or getattr(model, 'in_chans', 3)
    x = torch.zeros(1, in_chans, img_size, img_size)
    bar = progress_bar(progress + 3, 'int8 ExecuTorch') if progress is not None else None
    start = time.perf_counter()
    with torch.no_grad():
        program = export_program(model, x, backend, max_batch)
        reference = model
        if calibration is not None:
            reference = quantize_int8(program, calibration, bar)
            example, dynamic_shapes = _batch_axis(x, max_batch)
            program = torch.export.export(reference, (example,), dynamic_shapes=dynamic_shapes)
        with stage(bar, 'lowering'):
            edge = lower(program, backend, fp16)
            delegation = delegation_report(edge)  # before to_executorch, which rewrites the graph into out-variants
        with stage(bar, 'serialising'):
            buffer = edge.to_executorch().buffer
    report = dict(format='executorch', backend=backend, output=str(output), img_size=img_size,
                  max_batch=max_batch, precision='int8' if calibration is not None else 'fp16' if fp16 else 'fp32',
                  lowering_s=round(time.perf_counter() - start, 1), **delegation)
    with stage(bar, 'checking'):
        if backend == 'xnnpack':
            inputs = _inputs(sorted({1, max_batch}), in_chans, img_size)
            report.update(check_xnnpack(model, reference, buffer, inputs, quantized=calibration is not None))
        else:
            report.update(max_abs_diff={}, coreml_program=check_coreml_delegates(model, edge, x, fp16))
    if bar is not None:
        bar.close()
    report['numerically_checked'] = bool(report['max_abs_diff'])
    with atomic_file(output) as tmp:
        Path(tmp).write_bytes(buffer)
    return report
