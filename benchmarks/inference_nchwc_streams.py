"""Does an ONNX Runtime-friendly layout of the fused CARE graph pay off? (docs/performance.md)

ONNX Runtime's CPU provider runs convs in a blocked layout (NCHWc, 16 channels per block on
AVX-512) and has to reorder to plain NCHW around every op it cannot run blocked: the channel
Splits of CARE's decoupling, Concats with unaligned inputs and the Adds fed by them. In the
fused CARE-S0 graph that is 171 reorder nodes, 48 Splits and 36 Concats out of 723 nodes.

This script builds, from a fused model, the same function written so that the whole body
stays blocked ("streams"): memory and features travel as two tensors padded to 16-channel
multiples (zero channels, so nothing changes), the three token-mixer convs become depthwise
convs over all feature channels (zero kernels where a part does not use them), Inter2's 1x1
expansion becomes two convs summed, the layer scale a 1x1 depthwise conv, and the linear
attention reads q, k and v (with a ones row per head for its normaliser) from one 1x1 conv.
It checks the streams model against the fused one, then times un-fused, fused, streams and
re-parameterised FastViT-T8 in ONNX Runtime, interleaved round by round.

    .venv/bin/python benchmarks/inference_nchwc_streams.py [--threads 1 --rounds 30]
"""
import argparse
import collections
import copy
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn as nn
import torch.nn.functional as F

from caretrans.bench.latency import create_model, time_interleaved
from caretrans.export.convert import export_onnx, onnx_session
from caretrans.models import reparameterize
from caretrans.models.care import LongRangeConv

BLOCK = 16  # ONNX Runtime's NCHWc block on AVX-512


def _up(n: int) -> int:
    return -(-n // BLOCK) * BLOCK


def _conv(weight, bias, groups=1, padding=0, stride=1) -> nn.Conv2d:
    conv = nn.Conv2d(weight.shape[1] * groups, weight.shape[0], tuple(weight.shape[2:]), stride=stride,
                     padding=padding, groups=groups)
    conv.weight, conv.bias = nn.Parameter(weight.detach().clone()), nn.Parameter(bias.detach().clone())
    return conv


def _widen(t: torch.Tensor, index, size: int, dim: int) -> torch.Tensor:
    """t with its `dim` axis spread to `size` entries, original entries at `index`, zeros elsewhere."""
    shape = list(t.shape)
    shape[dim] = size
    out = t.new_zeros(shape)
    out.index_copy_(dim, torch.as_tensor(list(index)), t.detach())
    return out


class StreamAttention(nn.Module):
    """CARE's linear attention with q, k and [v | 1] per head from one 1x1 conv over the features:
    out = (q k^T v) / (q k^T 1 + N eps), the fused form of (q (k^T v / N)) / (q mean(k) + eps)."""

    def __init__(self, attn, features: int):
        super().__init__()
        g, self.heads, self.head_dim = attn.qk.weight.shape[1], attn.num_heads, attn.head_dim
        v_rows = [h * (self.head_dim + 1) + j for h in range(self.heads) for j in range(self.head_dim)]
        v_weight = _widen(torch.eye(g).view(g, g, 1, 1), v_rows, self.heads * (self.head_dim + 1), 0)
        v_bias = torch.zeros(self.heads, self.head_dim + 1)
        v_bias[:, -1] = 1.0
        weight = torch.cat([attn.qk.weight.detach(), v_weight])
        self.qkv = _conv(_widen(weight, range(g), features, 1), torch.cat([attn.qk.bias.detach(), v_bias.flatten()]))
        self.g = g

    def forward(self, f):
        B, _, H, W = f.shape
        qk, v = self.qkv(f).split([2 * self.g, self.heads * (self.head_dim + 1)], dim=1)
        q, k = (F.elu(qk) + 1.0).reshape(B, 2, self.heads, self.head_dim, H * W).unbind(1)
        kv = k @ v.reshape(B, self.heads, self.head_dim + 1, H * W).transpose(-1, -2)
        num, den = (kv.transpose(-1, -2) @ q).split([self.head_dim, 1], dim=2)
        return (num / (den + H * W * 1e-6)).reshape(B, self.g, H, W)


class StreamBlock(nn.Module):
    """A fused CareBlock on (memory, features) tensors of mem_width and feat_width channels."""

    def __init__(self, block, mem_width: int, feat_width: int):
        super().__init__()
        g, tm, i1, i2 = block.mem_dim, block.token_mixer, block.inter1, block.inter2
        d, fw, mw = 3 * g, feat_width, mem_width
        a, l3, l7 = range(g), range(g, 2 * g), range(2 * g, 3 * g)
        local_w, local_b = torch.zeros(fw, 1, 7, 7), torch.zeros(fw)
        local_w[list(l3)] = F.pad(tm.local3.weight.detach(), (2, 2, 2, 2))
        local_w[list(l7)] = tm.local7.weight.detach()
        local_b[list(l3)], local_b[list(l7)] = tm.local3.bias.detach(), tm.local7.bias.detach()
        self.attention = None
        if isinstance(tm.global_mixer, LongRangeConv):
            cv, ch = tm.global_mixer.conv_v, tm.global_mixer.conv_h
            local_b[list(a)] = cv.bias.detach() + ch.bias.detach()
            self.long_v = _conv(_widen(cv.weight, a, fw, 0), torch.zeros(fw), groups=fw, padding=(5, 0))
            self.long_h = _conv(_widen(ch.weight, a, fw, 0), torch.zeros(fw), groups=fw, padding=(0, 5))
        else:
            self.attention = StreamAttention(tm.global_mixer, fw)
            self.scatter = _conv(_widen(torch.eye(g).view(g, g, 1, 1), a, fw, 0), torch.zeros(fw))
        self.local = _conv(local_w, local_b, groups=fw, padding=3)
        self.i1_fc1 = _conv(_widen(i1.fc1.weight, range(d), fw, 1), i1.fc1.bias)
        self.i1_dw = _conv(i1.dwconv.weight, i1.dwconv.bias, groups=i1.dwconv.groups, padding=1)
        self.i1_fc2 = _conv(_widen(i1.fc2.weight, range(d), fw, 0), _widen(i1.fc2.bias, range(d), fw, 0))
        w = i2.fc1.weight.detach()
        self.i2_fc1_m = _conv(_widen(w[:, :g], range(g), mw, 1), torch.zeros(w.shape[0]))
        self.i2_fc1_f = _conv(_widen(w[:, g:], range(d), fw, 1), i2.fc1.bias)
        self.i2_dw = _conv(i2.dwconv.weight, i2.dwconv.bias, groups=i2.dwconv.groups, padding=1)
        self.last = block.last
        if not self.last:
            w, b, s = i2.fc2.weight.detach(), i2.fc2.bias.detach(), block.layer_scale.detach()
            self.i2_fc2_m = _conv(_widen(w[:g], range(g), mw, 0), _widen(b[:g], range(g), mw, 0))
            self.i2_fc2_f = _conv(_widen(w[g:], range(d), fw, 0), _widen(b[g:], range(d), fw, 0))
            self.scale_m = _conv(_widen(1.0 + s[:g], range(g), mw, 0).view(mw, 1, 1, 1), torch.zeros(mw), groups=mw)
            self.scale_f = _conv(_widen(s[g:], range(d), fw, 0).view(fw, 1, 1, 1), torch.zeros(fw), groups=fw)

    def forward(self, m, f):
        mixed = self.local(f)
        if self.attention is None:
            mixed = self.long_h(f) + (self.long_v(f) + mixed)
        else:
            mixed = self.scatter(self.attention(f)) + mixed
        features = self.i1_fc2(self.i1_dw(F.gelu(self.i1_fc1(mixed)))) + mixed
        h = self.i2_dw(F.gelu(self.i2_fc1_f(features) + self.i2_fc1_m(m)))
        if self.last:
            return None, h
        return self.i2_fc2_m(h) + self.scale_m(m), self.i2_fc2_f(h) + (self.scale_f(features) + f)


class StreamModel(nn.Module):
    """Fused CARE classifier whose stem / downsample convs write memory and features separately."""

    def __init__(self, fused):
        super().__init__()
        self.entries, self.stages, self.head = nn.ModuleList(), nn.ModuleList(), fused.head
        previous = None  # input channel positions of the previous stage's (memory, features)
        for i, stage in enumerate(fused.stages):
            g = stage.blocks[0].mem_dim
            mw, fw = _up(g), _up(3 * g)
            conv = fused.stem.conv if i == 0 else stage.downsample.conv
            w, b = conv.weight.detach(), conv.bias.detach()
            if previous is not None:
                w = _widen(w, previous[0], previous[1], 1)
            self.entries.append(nn.ModuleList([
                _conv(_widen(w[:g], range(g), mw, 0), _widen(b[:g], range(g), mw, 0), stride=conv.stride),
                _conv(_widen(w[g:], range(3 * g), fw, 0), _widen(b[g:], range(3 * g), fw, 0), stride=conv.stride),
            ]))
            self.stages.append(nn.ModuleList(StreamBlock(block, mw, fw) for block in stage.blocks))
            previous = (list(range(g)) + [mw + j for j in range(3 * g)], mw + fw)

    def forward(self, x):
        m = f = None
        for entry, blocks in zip(self.entries, self.stages):
            if m is not None:  # a later stage starts from both streams of the one before
                x = torch.cat([m, f], dim=1)
            m, f = entry[0](x), entry[1](x)
            for block in blocks:
                m, f = block(m, f)
        return self.head(f)


def optimized_graph(path: Path, threads: int) -> collections.Counter:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.optimized_model_filepath = str(path.with_suffix('.opt.onnx'))
    options.log_severity_level = 3
    ort.InferenceSession(str(path), options, providers=['CPUExecutionProvider'])
    return collections.Counter(n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--rounds', type=int, default=30)
    parser.add_argument('--iters', type=int, default=5)
    args = parser.parse_args()
    warnings.simplefilter('ignore')
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    unfused = create_model('care_s0', fused=False)
    with torch.no_grad():  # randomise the BatchNorm statistics and layer scales so that every fold matters
        for module in unfused.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.2), module.running_var.uniform_(0.5, 2.0)
                module.weight.normal_(1, 0.2), module.bias.normal_(0, 0.2)
            elif getattr(module, 'layer_scale', None) is not None:
                module.layer_scale.normal_(0, 0.3)
    fused = reparameterize(copy.deepcopy(unfused))
    models = {'care_s0 unfused': unfused, 'care_s0 fused': fused, 'care_s0 streams': StreamModel(fused).eval(),
              'fastvit_t8 reparam': create_model('fastvit_t8', fused=True)}
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        diff = (models['care_s0 streams'](x) - unfused(x)).abs().max().item()
    print(f'streams vs un-fused: max |diff| {diff:.2g}')
    runners, graphs = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, model in models.items():
            path = Path(tmp) / f'{name.replace(" ", "_")}.onnx'
            with torch.no_grad():
                export_onnx(model, x, path)
            graphs[name] = optimized_graph(path, args.threads)
            session, feed = onnx_session(path, args.threads), x.numpy()
            runners[name] = lambda s=session: s.run(None, {'image': feed})
        times = {k: np.array(t) for k, t in time_interleaved(runners, args.rounds, iters=args.iters).items()}
    ref = times['care_s0 fused']
    print(f'ONNX Runtime, batch 1, 224x224, {args.threads} thread(s), {args.rounds} interleaved rounds')
    print(f'{"model":<20}{"nodes":>7}{"reorders":>9}{"split+concat":>13}{"median ms":>11}{"x fused":>9}')
    for name, t in times.items():
        g = graphs[name]
        print(f'{name:<20}{sum(g.values()):>7}{g["ReorderInput"] + g["ReorderOutput"]:>9}'
              f'{g["Split"] + g["Concat"]:>13}{np.median(t):>11.2f}{np.median(t / ref):>9.3f}')
    return 0


if __name__ == '__main__':
    main()
