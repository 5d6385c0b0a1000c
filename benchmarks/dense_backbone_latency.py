"""Backbone latency and GMACs at 512x512 (paper Table 2): CARE vs ResNet-18/50 and PoolFormer-S12.

Every model is a timm `features_only` backbone (the four stages a Mask R-CNN or Semantic
FPN reads), batch 1, eval mode, no gradients. The models are timed interleaved, round after
round, so that load from other processes on a shared machine falls on all of them alike;
the table gives each model's median and its ratio to the first model.

    .venv/bin/python benchmarks/dense_backbone_latency.py --threads 1 --rounds 15
"""
import argparse
import json
import platform
import statistics
import time

import timm
import torch

import caretrans  # noqa: F401  (registers the CARE models)
from caretrans.bench.profile import PAPER_FIGURES
from caretrans.models.complexity import count_macs

MODELS = ['care_s0', 'care_s1', 'care_s2', 'resnet18', 'resnet50', 'poolformer_s12']
# Table 2's backbone GMACs at 512 for the baselines (the CARE ones are in PAPER_FIGURES).
PAPER_GMACS = {'resnet18': 9.5, 'resnet50': 21.4, 'poolformer_s12': 9.5}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--models', nargs='+', default=MODELS)
    parser.add_argument('--img-size', type=int, default=512)
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--rounds', type=int, default=15)
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument('--json', default=None, help='also write the results here')
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    models = {name: timm.create_model(name, features_only=True).eval() for name in args.models}
    x = torch.randn(1, 3, args.img_size, args.img_size)
    times = {name: [] for name in models}
    with torch.no_grad():
        for _ in range(args.warmup):
            for m in models.values():
                m(x)
        for _ in range(args.rounds):
            for name, m in models.items():
                start = time.perf_counter()
                m(x)
                times[name].append(time.perf_counter() - start)

    first = args.models[0]
    reference = statistics.median(times[first])
    rows = []
    for name, m in models.items():
        median = statistics.median(times[name])
        paper = PAPER_FIGURES.get(name, {}).get('backbone_gmacs_512', PAPER_GMACS.get(name))
        rows.append(dict(model=name, gmacs=count_macs(m, args.img_size) / 1e9, paper_gmacs=paper,
                         median_ms=1e3 * median, min_ms=1e3 * min(times[name]), ratio=median / reference))
    print(f'{platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} thread(s), '
          f'{args.img_size}x{args.img_size}, batch 1, {args.rounds} interleaved rounds')
    print(f'| backbone | GMACs@{args.img_size} (paper) | median ms | min ms | latency / {first} |')
    print('|---|---|---|---|---|')
    for r in rows:
        paper = f' ({r["paper_gmacs"]})' if r['paper_gmacs'] is not None else ''
        print(f'| {r["model"]} | {r["gmacs"]:.2f}{paper} | {r["median_ms"]:.1f} | {r["min_ms"]:.1f} | {r["ratio"]:.2f} |')
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(dict(args=vars(args), rows=rows), f, indent=2)


if __name__ == '__main__':
    main()
