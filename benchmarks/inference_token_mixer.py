"""Does merging the conv stages' token-mixer convs pay off in ONNX Runtime? (docs/performance.md)

Times one CARE block's token mixer + Inter1 at the sizes of CARE-S0's stages 1 and 2, written
several ways that compute the same function, interleaved round by round in one process:

  separate   as trained: split, 11x1 + 1x11 on the attention part, 3x3 and 7x7 local, concat
  locals7    the 3x3 zero-padded into the 7x7: one local conv on 2g channels
  one11      the whole mixer as one 11x11 depthwise conv over the 3g feature channels
  one11mem   one 11x11 depthwise conv over all 4g channels (a unit kernel passes the memory
             through) and Inter1 widened with zero weights: no split, no concat at all
  two-conv   like one11mem, but 11x7 + 1x11 depthwise convs summed (88 taps instead of 121)

    .venv/bin/python benchmarks/inference_token_mixer.py [--threads 1 --rounds 30]
"""
import argparse
import io
import warnings

import numpy as np
import onnxruntime as ort
import torch
import torch.nn as nn

from caretrans.bench.latency import time_interleaved


def dw(c, kh, kw):
    return nn.Conv2d(c, c, (kh, kw), padding=(kh // 2, kw // 2), groups=c)


class Inter(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1, self.act, self.dw, self.fc2 = nn.Conv2d(dim, hidden, 1), nn.GELU(), dw(hidden, 3, 3), \
            nn.Conv2d(hidden, dim, 1)

    def forward(self, x):
        return self.fc2(self.dw(self.act(self.fc1(x))))


class Separate(nn.Module):
    def __init__(self, g, r):
        super().__init__()
        self.g, self.v, self.h, self.l3, self.l7 = g, dw(g, 11, 1), dw(g, 1, 11), dw(g, 3, 3), dw(g, 7, 7)
        self.inter = Inter(3 * g, 3 * g * r)

    def forward(self, x):
        m, f = x.split([self.g, 3 * self.g], 1)
        a, l3, l7 = f.split(self.g, 1)
        f = torch.cat([self.v(a) + self.h(a), self.l3(l3), self.l7(l7)], 1)
        return torch.cat([m, f + self.inter(f)], 1)


class Locals7(nn.Module):
    def __init__(self, g, r):
        super().__init__()
        self.g, self.v, self.h, self.local = g, dw(g, 11, 1), dw(g, 1, 11), dw(2 * g, 7, 7)
        self.inter = Inter(3 * g, 3 * g * r)

    def forward(self, x):
        m, a, l = x.split([self.g, self.g, 2 * self.g], 1)
        f = torch.cat([self.v(a) + self.h(a), self.local(l)], 1)
        return torch.cat([m, f + self.inter(f)], 1)


class One11(nn.Module):
    def __init__(self, g, r):
        super().__init__()
        self.g, self.mixer, self.inter = g, dw(3 * g, 11, 11), Inter(3 * g, 3 * g * r)

    def forward(self, x):
        m, f = x.split([self.g, 3 * self.g], 1)
        f = self.mixer(f)
        return torch.cat([m, f + self.inter(f)], 1)


class One11Mem(nn.Module):
    def __init__(self, g, r):
        super().__init__()
        self.mixer, self.inter = dw(4 * g, 11, 11), Inter(4 * g, 3 * g * r)

    def forward(self, x):
        u = self.mixer(x)
        return u + self.inter(u)


class TwoConv(nn.Module):
    def __init__(self, g, r):
        super().__init__()
        self.v, self.h, self.inter = dw(4 * g, 11, 7), dw(4 * g, 1, 11), Inter(4 * g, 3 * g * r)

    def forward(self, x):
        u = self.v(x) + self.h(x)
        return u + self.inter(u)


VARIANTS = {'separate': Separate, 'locals7': Locals7, 'one11': One11, 'one11mem': One11Mem, 'two-conv': TwoConv}


def session(module, shape, threads):
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        torch.onnx.export(module.eval(), (torch.randn(*shape),), buffer, dynamo=False, opset_version=17)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(buffer.getvalue(), options, providers=['CPUExecutionProvider'])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--rounds', type=int, default=30)
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f'{"stage (g, r1, size)":<22}' + ''.join(f'{v:>11}' for v in VARIANTS) + '   (median us; ratio to separate)')
    for stage, (g, r, size) in enumerate([(8, 2, 56), (16, 2, 28)], start=1):
        shape = (1, 4 * g, size, size)
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        sessions = {k: session(cls(g, r), shape, args.threads) for k, cls in VARIANTS.items()}
        runners = {k: (lambda s=s: s.run(None, {s.get_inputs()[0].name: x})) for k, s in sessions.items()}
        times = {k: np.array(t) for k, t in time_interleaved(runners, args.rounds, iters=10).items()}
        ratio = {k: np.median(t / times['separate']) for k, t in times.items()}
        print(f'{f"{stage} ({g}, {r}, {size}x{size})":<22}'
              + ''.join(f'{np.median(t) * 1e3:>6.0f} {ratio[k]:.2f}' for k, t in times.items()))
    return 0


if __name__ == '__main__':
    main()
