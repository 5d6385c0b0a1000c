"""Where CARE-S0 and FastViT-T8 spend their time on the phone runtimes (docs/performance.md, "Where
CARE-S0's time goes"): each network cut into stem, four stages and head (with FastViT's final conv),
every piece converted on its own at its real input shape for LiteRT and lowered for ExecuTorch (both
XNNPACK), and all pieces and both whole models timed interleaved in one process.

    .venv/bin/python benchmarks/phone_stage_profile.py --threads 1 --rounds 20 --iters 5

--token-major-attention adds whole CARE-S0 with its linear attention computed token-major, an exact
rewrite tried against the layout transposes: (N, C) tokens, the per-head matmuls as full C x C
products masked block-diagonal (twice the attention's tiny MACs, no (head_dim, N) reshapes of NCHW
maps, which NHWC runtimes turn into transposes: 73 -> 1 in LiteRT's CARE-S0).
"""
import argparse
import contextlib
import json
import types
import warnings

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import caretrans  # noqa: F401  (registers the CARE models)
from caretrans.bench.latency import create_model, output_error, time_interleaved
from caretrans.export import litert, mobile
from caretrans.models.care import LinearAttention

MODELS = ('care_s0', 'fastvit_t8')


class Remainder(nn.Module):
    """What follows the last stage: FastViT's final conv (if any) and the classifier head."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        if hasattr(self.model, 'final_conv'):
            x = self.model.final_conv(x)
        return self.model.forward_head(x)


def token_major_attention(self, x):
    """LinearAttention.forward with tokens as rows: out = q (kv * M) / (q (mean_n(k)^T * M) + eps), M the
    block-diagonal mask of the heads; the same sums per head as the shipped (head_dim, N) form."""
    B, C, H, W = x.shape
    N = H * W
    qk = self.qk(x).permute(0, 2, 3, 1).reshape(B, N, 2 * C)
    v = x.permute(0, 2, 3, 1).reshape(B, N, C)
    q, k = qk[..., :C], qk[..., C:]
    if self.kernel == 'elu':
        q, k = F.elu(q) + 1.0, F.elu(k) + 1.0
    heads = torch.arange(C) // self.head_dim
    mask = (heads[:, None] == heads[None, :]).to(x.dtype)
    kv = torch.bmm(k.transpose(1, 2), v) * (mask * (1.0 / N))
    k_mean = k.mean(dim=1).reshape(B, C, 1) * mask
    out = torch.bmm(q, kv) / (torch.bmm(q, k_mean) + 1e-6)
    return out.reshape(B, H, W, C).permute(0, 3, 1, 2)


@contextlib.contextmanager
def attention_rewritten(model):
    """`model` with every LinearAttention computing token_major_attention, until the block ends."""
    modules = [m for m in model.modules() if isinstance(m, LinearAttention)]
    for m in modules:
        m.forward = types.MethodType(token_major_attention, m)
    try:
        yield model
    finally:
        for m in modules:
            del m.forward


def pieces(model, x):
    """[(name, module, its input)] in the order the network runs them."""
    out = [('stem', model.stem, x)]
    with torch.no_grad():
        h = model.stem(x)
        for i, stage in enumerate(model.stages):
            out.append((f'stage {i + 1}', stage, h))
            h = stage(h)
    out.append(('head', Remainder(model), h))
    return out


def runner(module, x, runtime: str, threads: int):
    """A no-argument callable running `module` on `x` converted for `runtime`, checked against eager."""
    with torch.no_grad():
        expected = module(x)
        if runtime == 'litert':
            run = litert.LoadedModel(litert.convert(litert.export_graph(module, x), x), threads)
        else:
            run = mobile.LoadedProgram(mobile.program_buffer(module, x))
    error = output_error(run(x), expected)
    if error > 1e-4:
        raise AssertionError(f'{runtime} output differs from eager: {error:.1e}')
    return lambda: run(x)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--rounds', type=int, default=20)
    parser.add_argument('--iters', type=int, default=5)
    parser.add_argument('--img-size', type=int, default=224)
    parser.add_argument('--runtimes', nargs='+', default=['litert', 'executorch'])
    parser.add_argument('--token-major-attention', action='store_true')
    parser.add_argument('--json')
    args = parser.parse_args()
    warnings.simplefilter('ignore')
    torch.set_num_threads(args.threads)
    mobile.set_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(1, 3, args.img_size, args.img_size)
    runners = {}
    for name in MODELS:
        model = create_model(name, fused=True)
        for runtime in args.runtimes:
            runners[(name, runtime, 'whole')] = runner(model, x, runtime, args.threads)
            for piece, module, inp in pieces(model, x):
                runners[(name, runtime, piece)] = runner(module, inp, runtime, args.threads)
            print(f'{name} {runtime}: converted', flush=True)
            if name == 'care_s0' and args.token_major_attention:
                with attention_rewritten(model):
                    runners[(name, runtime, 'token-major')] = runner(model, x, runtime, args.threads)
    times = time_interleaved(runners, args.rounds, args.iters)
    parts = ['stem', 'stage 1', 'stage 2', 'stage 3', 'stage 4', 'head', 'whole']
    result = {}
    for runtime in args.runtimes:
        print(f'\n{runtime}, {args.threads} thread(s), {args.rounds} rounds x {args.iters} calls: median ms '
              f'(CARE-S0 / FastViT-T8: median of the per-round ratios)')
        print('| | ' + ' | '.join(parts) + ' |')
        for name in MODELS:
            print(f'| {name} | ' + ' | '.join(f'{np.median(times[(name, runtime, p)]):.2f}' for p in parts) + ' |')
        ratios = [np.median(np.array(times[('care_s0', runtime, p)]) / np.array(times[('fastvit_t8', runtime, p)]))
                  for p in parts]
        print('| ratio | ' + ' | '.join(f'{r:.2f}' for r in ratios) + ' |')
        if args.token_major_attention:
            rewritten = np.array(times[('care_s0', runtime, 'token-major')])
            print(f'CARE-S0 with token-major attention: {np.median(rewritten):.2f} ms, '
                  f'{np.median(rewritten / np.array(times[("care_s0", runtime, "whole")])):.2f}x as shipped, '
                  f'{np.median(rewritten / np.array(times[("fastvit_t8", runtime, "whole")])):.2f}x FastViT-T8')
        result[runtime] = {name: {p: float(np.median(times[(name, runtime, p)])) for p in parts} for name in MODELS}
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(dict(threads=args.threads, rounds=args.rounds, iters=args.iters, ms=result), f, indent=1)


if __name__ == '__main__':
    main()
