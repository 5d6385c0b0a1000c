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

CARE_MODELS = ('care_s0', 'care_s1', 'care_s2')
# The peers of the paper's Table 1 that timm has.
PEERS = ('mobilenetv2_100', 'mobilenetv2_140', 'mobileone_s0', 'mobileone_s1', 'mobileone_s2', 'mobileone_s3',
         'mobileone_s4', 'fastvit_t8', 'fastvit_t12', 'fastvit_s12', 'fastvit_sa12', 'efficientformer_l1',
         'deit_tiny_patch16_224', 'pvt_v2_b0', 'resnet18')
# ImageNet-1k top-1 (%) from the paper's Table 1.
PAPER_TOP1 = {
    'care_s0': 78.4, 'care_s1': 80.1, 'care_s2': 82.1, 'mobilenetv2_100': 71.8, 'mobilenetv2_140': 74.7,
    'mobileone_s0': 71.4, 'mobileone_s1': 75.9, 'mobileone_s2': 77.4, 'mobileone_s3': 78.1, 'mobileone_s4': 79.4,
    'fastvit_t8': 76.7, 'fastvit_t12': 80.3, 'fastvit_s12': 80.9, 'fastvit_sa12': 81.9,
    'deit_tiny_patch16_224': 72.2, 'pvt_v2_b0': 70.5,
}
RUNTIMES = ('eager', 'onnxruntime', 'openvino', 'executorch')
DEFAULT_RUNTIMES = RUNTIMES[:3]  # ExecuTorch is an optional extra and lowers each model for tens of seconds
REFERENCE = ('care_s0', 'fused')
# Before timing, each entry's logits must match eager's to this fraction of the largest eager logit
# (relative to the scale: untrained peers reach logits of 1e14, where float rounding alone is 1e7).
OUTPUT_RTOL = 1e-4


@dataclass
class Entry:
    """One timed configuration: a model, fused or not, on one runtime."""
    model: str
    variant: str  # 'fused' (re-parameterised), 'unfused' (CARE as trained), 'reparam' (a timm peer)
    runtime: str
    times_ms: List[float] = field(default_factory=list)
    output_error: float = 0.0  # max |logits - eager logits| / max |eager logits|

    @property
    def valid(self) -> bool:
        return self.output_error <= OUTPUT_RTOL


def create_model(name: str, fused: bool, num_classes: int = 1000) -> nn.Module:
    """An eval-mode timm model; fused: CARE's or timm's inference re-parameterisation."""
    from ..models import reparameterize

    model = timm.create_model(name, num_classes=num_classes).eval()
    return reparameterize(model) if fused else model


def make_runner(model: nn.Module, runtime: str, x: torch.Tensor, threads: int, onnx_path: Path) -> Callable[[], object]:
    """A no-argument callable running `model` once on `x` with `runtime` and `threads` threads and
    returning its logits (ONNX-based runtimes read the model exported to `onnx_path`; ExecuTorch runs it
    lowered to XNNPACK, on its thread pool, which `benchmark` sizes)."""
    if runtime == 'eager':
        def run():
            with torch.inference_mode():
                return model(x)
        return run
    if runtime == 'executorch':
        from ..export.mobile import LoadedProgram, program_buffer, require_executorch

        require_executorch()
        program = LoadedProgram(program_buffer(model, x))
        return lambda: program(x)
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
            raise ValueError('the openvino runtime needs the openvino package: pip install caretrans[openvino]') from e
        # float32 as the other runtimes: on CPUs with bf16 units OpenVINO would otherwise compute in bfloat16.
        compiled = ov.Core().compile_model(str(onnx_path), 'CPU', {'INFERENCE_NUM_THREADS': threads,
                                                              'PERFORMANCE_HINT': 'LATENCY',
                                                              'INFERENCE_PRECISION_HINT': 'f32'})
        request = compiled.create_infer_request()
        return lambda: request.infer({0: feed})[0]
    raise ValueError(f'unknown runtime {runtime!r}; choose from {", ".join(RUNTIMES)}')


def output_error(logits, expected: torch.Tensor) -> float:
    """max |logits - expected| / max |expected|: how far a runtime's output is from eager's."""
    diff = np.abs(np.asarray(logits, dtype=np.float64) - expected.numpy()).max()
    return float(diff / max(float(expected.abs().max()), np.finfo(np.float32).tiny))


def time_interleaved(runners: Dict[int, Callable[[], object]], rounds: int, iters: int = 1,
                     warmup: int = 3, seed: int = 0) -> Dict[int, List[float]]:
    """Milliseconds per call of each runner, per round. Every round runs every runner (`iters`
    calls, averaged) in a fresh random order, so machine noise hits all of them alike."""
    for run in runners.values():
        for _ in range(warmup):
            run()
    order, rng = list(runners), random.Random(seed)
    times = {key: [] for key in runners}
    for _ in range(rounds):
        rng.shuffle(order)
        for key in order:
            start = time.perf_counter()
            for _ in range(iters):
                runners[key]()
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
              threads: int = 2, rounds: int = 20, iters: int = 1, num_classes: int = 1000) -> List[dict]:
    """Latency rows for every model (CARE: un-fused and fused; peers: re-parameterised) on every
    runtime. Each entry's logits are checked against eager's first; one that differs is reported
    (`outputs_match` False, with its `output_error`) and not timed."""
    from .profile import count_macs, count_params

    torch.set_num_threads(threads)
    if 'executorch' in runtimes:
        from ..export.mobile import require_executorch, set_threads

        require_executorch()
        set_threads(threads)
    x = torch.randn(batch_size, 3, img_size, img_size, generator=torch.Generator().manual_seed(0))
    entries, runners, stats = [], {}, {}
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter('ignore')
        for name in models:
            variants = ('unfused', 'fused') if name in CARE_MODELS else ('reparam',)
            for variant in variants:
                model = create_model(name, variant != 'unfused', num_classes)
                if name not in stats:  # CARE's figures as published: the un-fused model
                    stats[name] = dict(params_m=count_params(model) / 1e6,
                                       gmacs=count_macs(model, img_size) / 1e9, top1=PAPER_TOP1.get(name))
                with torch.inference_mode():
                    expected = model(x)
                for runtime in runtimes:
                    run = make_runner(model, runtime, x, threads, Path(tmp) / f'{len(entries)}.onnx')
                    entry = Entry(name, variant, runtime, output_error=output_error(run(), expected))
                    if entry.valid:
                        runners[len(entries)] = run
                    entries.append(entry)
        for key, times in time_interleaved(runners, rounds, iters).items():
            entries[key].times_ms = times
    rows = summarise(entries)
    for row in rows:
        row.update(stats[row['model']], batch_size=batch_size, img_size=img_size, threads=threads)
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
