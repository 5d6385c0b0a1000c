"""Latency side by side: models x runtimes timed round by round in one process, with ratios to CARE-S0."""
import random
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import timm
import torch
import torch.nn as nn

from .catalog import RUNTIMES

# ImageNet-1k top-1 (%) from the paper's Table 1.
PAPER_TOP1 = {
    'care_s0': 78.4, 'care_s1': 80.1, 'care_s2': 82.1, 'mobilenetv2_100': 71.8, 'mobilenetv2_140': 74.7,
    'mobileone_s0': 71.4, 'mobileone_s1': 75.9, 'mobileone_s2': 77.4, 'mobileone_s3': 78.1, 'mobileone_s4': 79.4,
    'fastvit_t8': 76.7, 'fastvit_t12': 80.3, 'fastvit_s12': 80.9, 'fastvit_sa12': 81.9,
    'deit_tiny_patch16_224': 72.2, 'pvt_v2_b0': 70.5,
    # the ablation rows (Tables 3-5)
    'care_s2_sym': 82.1, 'care_s2_stacked': 81.4, 'care_s2_no_local': 77.3, 'care_s0_no_inter1': 76.2,
    'care_s0_no_inter2': 70.9, 'care_s0_no_memory': 76.5, 'care_s0_early_attn': 78.3, 'care_s1_early_attn': 79.9,
    'care_s2_early_attn': 82.0, 'care_s0_single_local': 78.1, 'care_s1_single_local': 79.8,
    'care_s2_single_local': 81.8,
}
REFERENCE = ('care_s0', 'fused')
# Before timing, each entry's logits must match eager's to this fraction of the largest eager logit
# (relative to the scale: untrained peers reach logits of 1e14, where float rounding alone is 1e7),
# by the PyTorch runtime's dtype: half precision (and torch.compile in it) rounds differently.
OUTPUT_RTOL = {'float32': 1e-4, 'float16': 1e-2, 'bfloat16': 5e-2}


def is_care_model(name: str) -> bool:
    """A CARE model (released or an ablation row): timed un-fused and fused."""
    return name.startswith('care_')


@dataclass
class Entry:
    """One timed configuration: a model, fused or not, on one runtime."""
    model: str
    variant: str  # 'fused' (re-parameterised), 'unfused' (CARE as trained), 'reparam' (a timm peer)
    runtime: str
    times_ms: List[float] = field(default_factory=list)
    output_error: float = 0.0  # max |logits - eager logits| / max |eager logits|
    tolerance: float = OUTPUT_RTOL['float32']

    @property
    def valid(self) -> bool:
        return self.output_error <= self.tolerance


def create_model(name: str, fused: bool, num_classes: int = 1000, in_chans: int = 3) -> nn.Module:
    """An eval-mode timm model; fused: CARE's or timm's inference re-parameterisation."""
    from ..models import reparameterize

    model = timm.create_model(name, num_classes=num_classes, in_chans=in_chans).eval()
    return reparameterize(model) if fused else model


def make_runner(model: nn.Module, runtime: str, x: torch.Tensor, threads: int, onnx_path: Path,
                compile: bool = False, cuda_graphs: bool = False) -> Callable[[], object]:
    """A no-argument callable running `model` once on `x` with `runtime` and `threads` threads and
    returning its logits (ONNX-based runtimes read the model exported to `onnx_path`; ExecuTorch runs it
    lowered to XNNPACK, on its thread pool, which `benchmark` sizes; LiteRT runs it converted to .tflite,
    with the XNNPACK delegate; 'eager' may be torch.compile'd and replayed from CUDA graphs:
    caretrans.bench.gpu)."""
    if runtime == 'eager' and (compile or cuda_graphs):
        from .gpu import inference_runner
        return inference_runner(model, x, compile, cuda_graphs)
    if runtime == 'eager':
        def run():
            with torch.inference_mode():
                return model(x)
        return run
    if x.device.type != 'cpu':
        raise ValueError(f'the {runtime} runtime runs on the CPU; on {x.device.type} use --runtimes eager')
    if runtime == 'executorch':
        from ..export.mobile import LoadedProgram, program_buffer, require_executorch

        require_executorch()
        program = LoadedProgram(program_buffer(model, x))
        return lambda: program(x)
    if runtime == 'litert':
        from ..export.litert import LoadedModel, convert, export_graph, require_litert

        require_litert()
        with torch.no_grad():
            loaded = LoadedModel(convert(export_graph(model, x), x), threads)
        return lambda: loaded(x)
    from ..export.convert import export_onnx, onnx_session

    with torch.no_grad():
        export_onnx(model, x, onnx_path)
    feed = x.numpy()
    if runtime == 'onnxruntime':
        session = onnx_session(onnx_path, threads)
        name = session.get_inputs()[0].name
        return lambda: session.run(None, {name: feed})[0]
    if runtime == 'openvino':
        try:
            import openvino as ov
        except ImportError as e:
            raise ValueError('the openvino runtime needs the openvino package: pip install caretrans[export]') from e
        # float32 as the other runtimes: on CPUs with bf16 units OpenVINO would otherwise compute in bfloat16.
        compiled = ov.Core().compile_model(str(onnx_path), 'CPU', {'INFERENCE_NUM_THREADS': threads,
                                                              'PERFORMANCE_HINT': 'LATENCY',
                                                              'INFERENCE_PRECISION_HINT': 'f32'})
        request = compiled.create_infer_request()
        return lambda: request.infer({0: feed})[0]
    raise ValueError(f'unknown runtime {runtime!r}; choose from {", ".join(RUNTIMES)}')


def output_error(logits, expected: torch.Tensor) -> float:
    """max |logits - expected| / max |expected|: how far a runtime's output is from eager's."""
    expected = expected.detach().float().cpu().numpy().astype(np.float64)
    if isinstance(logits, torch.Tensor):
        logits = logits.detach().float().cpu().numpy()
    diff = np.abs(np.asarray(logits, dtype=np.float64) - expected).max()
    return float(diff / max(float(np.abs(expected).max()), np.finfo(np.float32).tiny))


def time_interleaved(runners: Dict[int, Callable[[], object]], rounds: int, iters: int = 1,
                     warmup: int = 3, seed: int = 0, sync: Callable[[], None] = lambda: None) -> Dict[int, List[float]]:
    """Milliseconds per call of each runner, per round. Every round runs every runner (`iters`
    calls, averaged) in a fresh random order, so machine noise hits all of them alike. `sync` waits
    for queued device work (torch.cuda.synchronize on a GPU) before each clock reading."""
    for run in runners.values():
        for _ in range(warmup):
            run()
    order, rng = list(runners), random.Random(seed)
    times = {key: [] for key in runners}
    for _ in range(rounds):
        rng.shuffle(order)
        for key in order:
            sync()
            start = time.perf_counter()
            for _ in range(iters):
                runners[key]()
            sync()
            times[key].append((time.perf_counter() - start) / iters * 1e3)
    return times


def summarise(entries: Sequence[Entry]) -> List[dict]:
    """Median and spread (25th-75th percentile) per entry, and the median over rounds of its time
    divided by the reference's (fused CARE-S0 on the same runtime) in the same round. An entry whose
    outputs did not match eager's was not timed: its times are None."""
    refs = {e.runtime: np.array(e.times_ms) for e in entries if (e.model, e.variant) == REFERENCE and e.valid}
    rows = []
    for e in entries:
        row = dict(model=e.model, variant=e.variant, runtime=e.runtime, outputs_match=e.valid,
                   output_error=e.output_error, median_ms=None, p25_ms=None, p75_ms=None, rounds=len(e.times_ms),
                   ratio_to_care_s0=None)
        if e.valid and e.times_ms:
            t, ref = np.array(e.times_ms), refs.get(e.runtime)
            row.update(median_ms=float(np.median(t)), p25_ms=float(np.percentile(t, 25)),
                       p75_ms=float(np.percentile(t, 75)),
                       ratio_to_care_s0=None if ref is None else float(np.median(t / ref)))
        rows.append(row)
    return rows


def benchmark(models: Sequence[str], runtimes: Sequence[str], batch_size: int = 1, img_size: int = 224,
              threads: int = 2, rounds: int = 20, iters: int = 1, num_classes: int = 1000, device: str = 'cpu',
              dtype: str = 'float32', channels_last: bool = False, compile: bool = False,
              cuda_graphs: bool = False, in_chans: int = 3) -> List[dict]:
    """Latency rows for every model (CARE: un-fused and fused; peers: re-parameterised) on every runtime
    (the PyTorch one on `device` in `dtype`, optionally channels-last, compiled, from CUDA graphs).
    Each entry's logits are checked against eager's first; one that differs is reported
    (`outputs_match` False, with its `output_error`) and not timed."""
    from .gpu import DTYPES, example_input, prepare, sync
    from ..models.complexity import count_macs, count_params

    torch.set_num_threads(threads)
    if 'executorch' in runtimes:
        from ..export.mobile import require_executorch, set_threads

        require_executorch()
        set_threads(threads)
    device = torch.device(device)
    x = example_input(batch_size, img_size, device, DTYPES[dtype], channels_last, in_chans)
    entries, runners, stats = [], {}, {}
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter('ignore')
        for name in models:
            variants = ('unfused', 'fused') if is_care_model(name) else ('reparam',)
            for variant in variants:
                model = create_model(name, variant != 'unfused', num_classes, in_chans)
                if name not in stats:  # CARE's figures as published: the un-fused model
                    stats[name] = dict(params_m=count_params(model) / 1e6,
                                       gmacs=count_macs(model, img_size, in_chans) / 1e9,
                                       top1=PAPER_TOP1.get(name) if num_classes == 1000 else None)
                if device.type != 'cpu' or dtype != 'float32' or channels_last:
                    model = prepare(model, device, DTYPES[dtype], channels_last)
                with torch.inference_mode():
                    expected = model(x)
                for runtime in runtimes:
                    run = make_runner(model, runtime, x, threads, Path(tmp) / f'{len(entries)}.onnx',
                                      compile, cuda_graphs)
                    logits = run()  # a CUDA graph's replay returns nothing: its capture ran the checked model
                    entry = Entry(name, variant, runtime, tolerance=OUTPUT_RTOL[dtype],
                                  output_error=0.0 if logits is None else output_error(logits, expected))
                    if entry.valid:
                        runners[len(entries)] = run
                    entries.append(entry)
        for key, times in time_interleaved(runners, rounds, iters, sync=sync(device)).items():
            entries[key].times_ms = times
    rows = summarise(entries)
    for row in rows:
        row.update(stats[row['model']], batch_size=batch_size, img_size=img_size, in_chans=in_chans,
                   num_classes=num_classes, threads=threads, device=device.type,
                   dtype=dtype, channels_last=channels_last, compile=compile, cuda_graphs=cuda_graphs)
    return rows


def throughput(name: str, batch_size: int = 64, img_size: int = 224, steps: int = 5,
               device: Optional[str] = None) -> dict:
    """Images per second of the fused model at `batch_size` (the paper's GPU setting) on CUDA when
    present, else the CPU."""
    device = device or ('cuda' if torch.cuda.is_available() else 'cpu')
    model = create_model(name, fused=True).to(device)
    x = torch.randn(batch_size, 3, img_size, img_size, device=device)
    with torch.inference_mode():
        model(x)
        if device == 'cuda':
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(steps):
            model(x)
        if device == 'cuda':
            torch.cuda.synchronize()
    return dict(model=name, device=device, batch_size=batch_size,
                images_per_s=batch_size * steps / (time.perf_counter() - start))


def plot(rows: Sequence[dict], path, runtime: str):
    """Figure-1-style scatter: latency against the paper's top-1 for the models that have one (all
    against GMACs when none has); marker area by GMACs."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r['runtime'] == runtime and r['variant'] != 'unfused' and r['median_ms'] is not None]
    if not rows:
        raise ValueError(f'no {runtime} rows to plot')
    by_accuracy = any(r['top1'] is not None for r in rows)
    if by_accuracy:
        rows = [r for r in rows if r['top1'] is not None]
    fig, ax = plt.subplots(figsize=(7, 5))
    for r in rows:
        y = r['top1'] if by_accuracy else r['gmacs']
        care = r['model'].startswith('care_')
        ax.scatter(r['median_ms'], y, s=300 * r['gmacs'], alpha=0.6, color='tab:red' if care else 'tab:blue')
        ax.annotate(r['model'], (r['median_ms'], y), fontsize=8, xytext=(4, 4), textcoords='offset points')
    ax.set_xlabel(f'latency (ms), {runtime}, batch {rows[0]["batch_size"]}, {rows[0]["threads"]} thread(s)')
    ax.set_ylabel('ImageNet top-1 (%, paper)' if by_accuracy else 'GMACs')
    ax.set_title('Latency vs ' + ('accuracy' if by_accuracy else 'GMACs') + ' (marker area: GMACs)')
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(str(path), dpi=120)
    plt.close(fig)
    return Path(path)
