"""What full XNNPACK delegation buys CARE-S0 in ExecuTorch (docs/performance.md, "ExecuTorch").

Lowers fused CARE-S0 three ways and FastViT-T8 (re-parameterised) once, prints each program's delegate
segments and the operators left to ExecuTorch's portable kernels, then times them through ExecuTorch's
runtime, interleaved round by round in one process, with ratios to FastViT-T8:

  stock      torch.export + ExecuTorch's stock XnnpackPartitioner, with the linear attention as first
             written (four-dim matmuls, 1 / x, a mean over tokens): what the export did before
  attention  the attention as shipped (three bmm in the NCHW head layout), stock partitioner
  full       as `caretrans export --format executorch` lowers it: also splits as slices, LayerNorm
             with spatial means, XNNPACK's ELU - one delegate, nothing portable

    .venv/bin/python benchmarks/executorch_delegation.py [--threads 2 --rounds 20 --iters 5 --img-size 224]
"""
import argparse
import time
import warnings

import numpy as np
import timm
import torch

import caretrans
from caretrans.bench.latency import output_error, time_interleaved
from caretrans.export import mobile
from caretrans.models.care import LinearAttention


def first_attention(self, x):
    """The linear attention as first written: the same function, in (B, heads, N, head_dim) layout."""
    B, C, H, W = x.shape
    N = H * W
    q, k = self.qk(x).chunk(2, dim=1)
    q = self._feature_map(q).reshape(B, self.num_heads, self.head_dim, N).transpose(-1, -2)
    k = self._feature_map(k).reshape(B, self.num_heads, self.head_dim, N).transpose(-1, -2)
    v = x.reshape(B, self.num_heads, self.head_dim, N).transpose(-1, -2)
    z = 1.0 / (q @ k.mean(dim=2, keepdim=True).transpose(-1, -2) + 1e-6)
    kv = (k.transpose(-1, -2) @ v) / N
    return ((q @ kv) * z).transpose(-1, -2).reshape(B, C, H, W)


def stock(model, x):
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    return to_edge_transform_and_lower(torch.export.export(model, (x,)), partitioner=[XnnpackPartitioner()])


def lowered(name, build):
    start = time.perf_counter()
    with torch.no_grad():
        edge = build()
        report = mobile.delegation_report(edge)
        program = mobile.LoadedProgram(edge.to_executorch().buffer)
    portable = ', '.join(f'{op} {n}' for op, n in report['portable'].items()) or '-'
    print(f'{name:<10} segments {report["segments"]:>3}, portable ops {sum(report["portable"].values()):>3} '
          f'({portable}); export + lowering {time.perf_counter() - start:.0f} s', flush=True)
    return program


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--rounds', type=int, default=20)
    parser.add_argument('--iters', type=int, default=5)
    parser.add_argument('--img-size', type=int, default=224)
    args = parser.parse_args()
    warnings.simplefilter('ignore')
    torch.set_num_threads(args.threads)
    mobile.set_threads(args.threads)
    x = torch.randn(1, 3, args.img_size, args.img_size, generator=torch.Generator().manual_seed(0))
    care = caretrans.reparameterize(timm.create_model('care_s0'))
    fastvit = caretrans.reparameterize(timm.create_model('fastvit_t8'))
    with torch.no_grad():
        expected = {m: m(x) for m in (care, fastvit)}
    shipped = LinearAttention.forward
    LinearAttention.forward = first_attention
    try:
        runners = {'stock': (lowered('stock', lambda: stock(care, x)), care)}
    finally:
        LinearAttention.forward = shipped
    runners['attention'] = (lowered('attention', lambda: stock(care, x)), care)
    runners['full'] = (lowered('full', lambda: mobile.lower(mobile.export_program(care, x))), care)
    runners['fastvit_t8'] = (lowered('fastvit_t8', lambda: stock(fastvit, x)), fastvit)
    for name, (program, model) in runners.items():
        error = output_error(program(x), expected[model])
        assert error < 1e-4, f'{name}: outputs differ from eager by {error:.1e} of their scale'
    times = time_interleaved({k: (lambda p=p: p(x)) for k, (p, _) in runners.items()}, args.rounds, args.iters)
    ref = np.array(times['fastvit_t8'])
    print(f'ExecuTorch XNNPACK, batch 1, {args.img_size}x{args.img_size}, {args.threads} thread(s), {args.rounds} '
          f'interleaved rounds of {args.iters} calls; ratio = median over rounds of latency / FastViT-T8 latency')
    for name, t in times.items():
        t = np.array(t)
        print(f'{name:<10} {np.median(t):7.2f} ms ({np.percentile(t, 25):.2f}-{np.percentile(t, 75):.2f})  '
              f'x FastViT-T8 {np.median(t / ref):.3f}')


if __name__ == '__main__':
    main()
