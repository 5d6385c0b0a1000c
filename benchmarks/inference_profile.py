"""Where CARE-S0's inference time goes: ONNX Runtime's profiler grouped by stage and block part
(un-fused and fused side by side), and torch.profiler's top operators for eager PyTorch.

    .venv/bin/python benchmarks/inference_profile.py [--model care_s0 --threads 1 --runs 40]
"""
import argparse
import collections
import json
import re
import tempfile
import warnings
from pathlib import Path

import onnxruntime as ort
import torch

from caretrans.bench.latency import create_model
from caretrans.export.convert import export_onnx

PARTS = ('token_mixer', 'inter1/fc1', 'inter1/dwconv', 'inter1/fc2', 'inter2/fc1', 'inter2/dwconv', 'inter2/fc2',
         'downsample', 'stem', 'head')


def _part(node: str) -> str:
    """The part of the network an ONNX Runtime node belongs to, from its (module-path) name."""
    if 'Reorder' in node:
        return 'layout reorders'
    if 'Gelu' in node or '/act/' in node:
        return 'GELU'
    stage = re.search(r'stages\.(\d)', node)
    part = next((p for p in PARTS if p in node), 'other (split/concat/add/mul/bn)')
    return f'stage {int(stage.group(1)) + 1} {part}' if stage else part


def ort_profile(model, x: torch.Tensor, threads: int, runs: int, workdir: Path):
    path = workdir / 'model.onnx'
    with torch.no_grad():
        export_onnx(model, x, path)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.enable_profiling = True
    options.profile_file_prefix = str(workdir / 'profile')
    session = ort.InferenceSession(str(path), options, providers=['CPUExecutionProvider'])
    feed = {session.get_inputs()[0].name: x.numpy()}
    for _ in range(runs):
        session.run(None, feed)
    events = json.loads(Path(session.end_profiling()).read_text())
    per_part, nodes = collections.defaultdict(float), 0
    for e in events:
        if e.get('cat') == 'Node' and e['name'].endswith('_kernel_time'):
            per_part[_part(e['name'])] += e['dur'] / runs / 1e3
            nodes += 1
    return per_part, nodes // runs


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--model', default='care_s0')
    parser.add_argument('--img-size', type=int, default=224)
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--runs', type=int, default=40)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter('ignore')
    x = torch.randn(1, 3, args.img_size, args.img_size)
    profiles = {}
    with tempfile.TemporaryDirectory() as tmp:
        for variant in ('unfused', 'fused'):
            workdir = Path(tmp) / variant
            workdir.mkdir()
            profiles[variant] = ort_profile(create_model(args.model, variant == 'fused'), x, args.threads,
                                            args.runs, workdir)
    (unfused, n_unfused), (fused, n_fused) = profiles['unfused'], profiles['fused']
    print(f'ONNX Runtime, {args.model}, batch 1, {args.img_size}x{args.img_size}, {args.threads} thread(s): '
          f'kernel ms per run ({n_unfused} nodes un-fused, {n_fused} fused)')
    for part in sorted(set(unfused) | set(fused)):
        print(f'  {part:<42} {unfused.get(part, 0):7.3f} {fused.get(part, 0):7.3f}')
    print(f'  {"total":<42} {sum(unfused.values()):7.3f} {sum(fused.values()):7.3f}')

    model = create_model(args.model, fused=True)
    with torch.inference_mode(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(5):
            model(x)
    print('\neager PyTorch (fused), torch.profiler, 5 runs:')
    print(prof.key_averages().table(sort_by='self_cpu_time_total', row_limit=12))
    return 0


if __name__ == '__main__':
    main()
