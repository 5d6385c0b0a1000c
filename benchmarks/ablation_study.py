"""The paper's ablations (Tables 3-5) at small scale: every variant trained on Fashion-MNIST with one recipe.

    .venv/bin/python benchmarks/ablation_study.py --train-images 6000 --val-images 2000 --epochs 3 \
        --batch-size 128 --seeds 0 1 --threads 1 --output runs/ablations

Every variant gets the `fashion-mnist-quick` recipe (32x32 grayscale input, in_chans=1) with the
same seeds; a shortened budget takes a class-balanced subset of the training images (and of the
test images, for the evaluation), fewer epochs, and a smaller batch with the learning rate scaled
linearly. All variants are built on CARE-S0 (Table 3's decouplings too: the options are the
same for every size), so each latency ratio is to the released CARE-S0, fused, at 224x224 on one
thread (eager PyTorch and ONNX Runtime, interleaved rounds). Writes OUTPUT/ablations.{json,md,png};
a finished run (OUTPUT/MODEL/seedN/result.json) is kept, so an interrupted study continues.
"""
import argparse
import dataclasses
import gzip
import json
import os
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

# (table, label, registered name, base model, structure options, the paper's top-1). Table 3 is on
# CARE-S2 in the paper; here its decouplings are built on CARE-S0 like the rest.
STUDY = (
    ('Table 3', 'asym (released)', 'care_s0', 'care_s0', {}, 82.1),
    ('Table 3', 'sym', 'study_care_s0_sym', 'care_s0', dict(decoupling='sym'), 82.1),
    ('Table 3', 'stacked', 'study_care_s0_stacked', 'care_s0', dict(decoupling='stacked'), 81.4),
    ('Table 3', 'no local', 'study_care_s0_no_local', 'care_s0', dict(decoupling='no_local'), 77.3),
    ('Table 4', 'full (released)', 'care_s0', 'care_s0', {}, 78.4),
    ('Table 4', 'no Inter1', 'care_s0_no_inter1', 'care_s0', dict(inter1=False), 76.2),
    ('Table 4', 'no Inter2', 'care_s0_no_inter2', 'care_s0', dict(inter2=False), 70.9),
    ('Table 4', 'no memory', 'care_s0_no_memory', 'care_s0', dict(memory=False), 76.5),
    ('Table 5', 'early conv + MS (released)', 'care_s0', 'care_s0', {}, 78.4),
    ('Table 5', 'early attention', 'care_s0_early_attn', 'care_s0', dict(early='attention'), 78.3),
    ('Table 5', 'single-scale local', 'care_s0_single_local', 'care_s0', dict(local='single'), 78.1),
)
# The paper's claims, as (table, better, worse) labels: its top-1 orderings (ties count as >=).
ORDERINGS = (
    ('Table 3', 'asym (released)', 'sym'), ('Table 3', 'asym (released)', 'stacked'),
    ('Table 3', 'asym (released)', 'no local'), ('Table 3', 'stacked', 'no local'),
    ('Table 4', 'full (released)', 'no memory'), ('Table 4', 'full (released)', 'no Inter1'),
    ('Table 4', 'no Inter1', 'no Inter2'), ('Table 4', 'no memory', 'no Inter2'),
    ('Table 5', 'early conv + MS (released)', 'early attention'),
    ('Table 5', 'early conv + MS (released)', 'single-scale local'),
)
FASHION_MNIST = Path('/usr/share/datasets/fashion-mnist')
_PREFIX = {'train': 'train', 'val': 't10k'}


def write_idx(path: Path, array: np.ndarray):
    """An IDX file of unsigned bytes (the MNIST format), gzipped."""
    header = bytes([0, 0, 0x08, array.ndim]) + b''.join(n.to_bytes(4, 'big') for n in array.shape)
    with gzip.open(path, 'wb') as f:
        f.write(header + np.ascontiguousarray(array, np.uint8).tobytes())


def balanced_subset(source: Path, target: Path, split: str, count: int):
    """The first count/10 images of each class of `split`, in their original order, as IDX files."""
    from caretrans.data.datasets import FashionMNIST

    full = FashionMNIST(split, root=source)
    keep = np.sort(np.concatenate([np.flatnonzero(full.targets == c)[:count // 10] for c in range(10)]))
    write_idx(target / f'{_PREFIX[split]}-images-idx3-ubyte.gz', full.images[keep])
    write_idx(target / f'{_PREFIX[split]}-labels-idx1-ubyte.gz', full.targets[keep])


def register_study_models():
    """Table 3's decouplings on CARE-S0, registered with timm under their study names for the trainer."""
    import timm
    from timm.models import register_model

    def register(name, base, options):
        def create(pretrained=False, **kwargs):
            return timm.create_model(base, pretrained=pretrained, **{**options, **kwargs})
        create.__name__ = create.__qualname__ = name
        register_model(create)

    for _, _, name, base, options, _ in STUDY:
        if name not in timm.list_models(name):
            register(name, base, options)


def train_runs(args, recipe, models):
    """Top-1 of every (model, seed) run; finished runs are read back, not retrained."""
    from caretrans.train.trainer import train

    results = {}
    for name in models:
        for seed in args.seeds:
            run_dir = Path(args.output) / name / f'seed{seed}'
            done = run_dir / 'result.json'
            if not done.is_file():
                start = time.perf_counter()
                result = train(dataclasses.replace(recipe, model=name, seed=seed), run_dir, progress=False)
                done.write_text(json.dumps(dict(top1=result.metrics['top1'], best_top1=result.best_top1,
                                                minutes=(time.perf_counter() - start) / 60)))
            results[name, seed] = json.loads(done.read_text())
            print(name, seed, results[name, seed], flush=True)
    return results


def latency_ratios(models, rounds: int, threads: int):
    """Median over interleaved rounds of each fused model's latency over fused CARE-S0's, per runtime."""
    import torch
    from caretrans.bench.latency import Entry, create_model, make_runner, summarise, time_interleaved

    torch.set_num_threads(threads)
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    entries, runners = [], {}
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter('ignore')
        for name in models:
            model = create_model(name, fused=True)
            for runtime in ('eager', 'onnxruntime'):
                runners[len(entries)] = make_runner(model, runtime, x, threads, Path(tmp) / f'{len(entries)}.onnx')
                entries.append(Entry(name, 'fused', runtime))
        for key, times in time_interleaved(runners, rounds).items():
            entries[key].times_ms = times
    return {(r['model'], r['runtime']): r for r in summarise(entries)}


def table(rows, orderings, budget: str) -> str:
    lines = [budget, '',
             '| table | variant | model | params (M) | top-1 % per seed | mean | spread | paper top-1 | '
             'latency x released (eager / ORT) |',
             '|---|---|---|---|---|---|---|---|---|']
    for r in rows:
        seeds = ' / '.join(f'{t:.2f}' for t in r['top1'])
        lines.append(f'| {r["table"]} | {r["label"]} | `{r["model"]}` | {r["params_m"]:.2f} | {seeds} | '
                     f'{r["mean"]:.2f} | {r["spread"]:.2f} | {r["paper_top1"]:.1f} | '
                     f'{r["latency_eager"]:.2f} / {r["latency_ort"]:.2f} |')
    lines += ['', '| table | paper: better ≥ worse | ours: difference of means (pp) | holds? | '
              'beyond the seed spread? |', '|---|---|---|---|---|']
    for o in orderings:
        lines.append(f'| {o["table"]} | {o["better"]} ≥ {o["worse"]} | {o["difference"]:+.2f} | '
                     f'{"yes" if o["holds"] else "no"} | {"yes" if o["clear"] else "no"} |')
    return '\n'.join(lines) + '\n'


def plot(rows, path: Path, budget: str):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, (acc, lat) = plt.subplots(1, 2, figsize=(13, 5), gridspec_kw=dict(width_ratios=(3, 2)))
    colours = {'Table 3': 'tab:blue', 'Table 4': 'tab:orange', 'Table 5': 'tab:green'}
    ys = range(len(rows))
    for y, r in zip(ys, rows):
        c = colours[r['table']]
        acc.hlines(y, min(r['top1']), max(r['top1']), color=c, lw=2)
        acc.plot(r['top1'], [y] * len(r['top1']), 'o', color=c, ms=4, alpha=0.6)
        acc.plot(r['mean'], y, 'D', color=c, ms=7)
        lat.barh(y, r['latency_eager'], color=c, alpha=0.8)
    labels = [f'{r["table"][-1]}: {r["label"]}' for r in rows]
    for ax in (acc, lat):
        ax.set_yticks(list(ys), labels if ax is acc else [''] * len(rows), fontsize=8)
        ax.invert_yaxis()
        ax.grid(axis='x', alpha=0.3)
    acc.set_xlabel('Fashion-MNIST test top-1 (%): seeds (dots), mean (diamond), range (line)')
    lat.axvline(1.0, color='grey', lw=1)
    lat.set_xlabel('CPU latency / released CARE-S0 (fused, 224x224, 1 thread, eager)')
    fig.suptitle(budget, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--train-images', type=int, default=60000, help='class-balanced subset (default: all)')
    parser.add_argument('--val-images', type=int, default=10000, help='class-balanced test subset (default: all)')
    parser.add_argument('--epochs', type=int, default=None, help="default: the recipe's")
    parser.add_argument('--batch-size', type=int, default=None, help="default: the recipe's; the lr scales linearly")
    parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1])
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--latency-rounds', type=int, default=20)
    parser.add_argument('--source', type=Path, default=FASHION_MNIST, help='the Fashion-MNIST IDX files')
    parser.add_argument('--output', default='runs/ablations')
    args = parser.parse_args()

    output = Path(args.output)
    data = output / 'data'
    data.mkdir(parents=True, exist_ok=True)
    os.environ['CARETRANS_FASHION_MNIST'] = str(data)  # the trainer's Fashion-MNIST: read when caretrans is imported

    import torch
    import caretrans  # noqa: F401  (registers the CARE models)
    from caretrans.train.recipe import load_recipe

    balanced_subset(args.source, data, 'train', args.train_images)
    balanced_subset(args.source, data, 'val', args.val_images)
    torch.set_num_threads(args.threads)
    register_study_models()
    recipe = load_recipe('fashion-mnist-quick')
    batch = args.batch_size or recipe.batch_size
    recipe = dataclasses.replace(recipe, epochs=args.epochs or recipe.epochs, batch_size=batch,
                                 lr=recipe.lr * batch / recipe.batch_size)
    budget = (f'fashion-mnist-quick recipe, {args.train_images} training / {args.val_images} test images '
              f'(class-balanced), {recipe.epochs} epochs, batch {batch}, lr {recipe.lr:.3g}, seeds '
              f'{", ".join(map(str, args.seeds))}, {args.threads} CPU thread(s)')
    models = list(dict.fromkeys(name for _, _, name, *_ in STUDY))
    runs = train_runs(args, recipe, models)
    latency = latency_ratios(models, args.latency_rounds, args.threads)

    from caretrans.models.complexity import count_params
    import timm
    rows = []
    for tab, label, name, _, options, paper in STUDY:
        top1 = [runs[name, s]['top1'] for s in args.seeds]
        rows.append(dict(table=tab, label=label, model=name, options=options, top1=top1, mean=float(np.mean(top1)),
                         spread=float(np.ptp(top1)), paper_top1=paper,
                         params_m=count_params(timm.create_model(name, num_classes=10, in_chans=1)) / 1e6,
                         latency_eager=latency[name, 'eager']['ratio_to_care_s0'],
                         latency_ort=latency[name, 'onnxruntime']['ratio_to_care_s0']))
    by_label = {(r['table'], r['label']): r for r in rows}
    orderings = []
    for tab, better, worse in ORDERINGS:
        a, b = by_label[tab, better], by_label[tab, worse]
        difference = a['mean'] - b['mean']
        orderings.append(dict(table=tab, better=better, worse=worse, difference=difference, holds=difference >= 0,
                              clear=min(a['top1']) > max(b['top1'])))
    (output / 'ablations.json').write_text(json.dumps(dict(budget=budget, rows=rows, orderings=orderings), indent=2))
    text = table(rows, orderings, budget)
    (output / 'ablations.md').write_text(text)
    plot(rows, output / 'ablations.png', budget)
    print(text)


if __name__ == '__main__':
    main()
