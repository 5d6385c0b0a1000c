"""CARE-S0 beside timm peers of similar size, trained with one recipe and one budget on Fashion-MNIST.

    .venv/bin/python benchmarks/train_peers.py --epochs 1 --threads 1 --output runs/peers

Every model gets the `fashion-mnist-quick` recipe (32x32 grayscale input, in_chans=1) with
`--epochs` epochs, then a row: params, GMACs at 32x32, training images/s (mean over epochs)
and top-1 on the 10,000 test images. The table is printed and written to OUTPUT/peers.md.
"""
import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch

import caretrans  # noqa: F401  (registers the CARE models)
from caretrans.data import dataset_info, create_dataset
from caretrans.runtime.metrics import MetricsLogger
from caretrans.train.recipe import load_recipe
from caretrans.train.report import summarize
from caretrans.train.trainer import train

PEERS = ['care_s0', 'resnet18', 'mobilenetv2_100', 'fastvit_t8', 'mobileone_s0']


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--models', nargs='+', default=PEERS)
    parser.add_argument('--epochs', type=int, default=1, help='the same budget for every model')
    parser.add_argument('--recipe', default='fashion-mnist-quick')
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--output', default='runs/peers')
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    base = dataclasses.replace(load_recipe(args.recipe), epochs=args.epochs)
    classes = dataset_info(create_dataset(base.data, 'val'))['classes']
    output = Path(args.output)
    rows = []
    for name in args.models:
        recipe = dataclasses.replace(base, model=name)
        start = time.perf_counter()
        result = train(recipe, output / name, progress=False)
        minutes = (time.perf_counter() - start) / 60
        figures = summarize(result.model.cpu(), result.img_size, 1, result.metrics, classes, output / name, minutes)
        speeds = [r['train_img_s'] for r in MetricsLogger(output / name).records]
        rows.append(dict(model=name, params_m=figures['params_m'], gmacs=figures['gmacs'],
                         train_img_s=sum(speeds) / len(speeds), top1=figures['top1'], minutes=minutes))
        print(json.dumps(rows[-1]), flush=True)

    table = [f'| model | params (M) | GMACs @{base.img_size} | train img/s | test top-1 (%) | minutes |',
             '|---|---|---|---|---|---|']
    table += [f'| {r["model"]} | {r["params_m"]:.2f} | {r["gmacs"]:.4f} | {r["train_img_s"]:.0f} | '
              f'{r["top1"]:.2f} | {r["minutes"]:.1f} |' for r in rows]
    text = '\n'.join(table) + '\n'
    output.mkdir(parents=True, exist_ok=True)
    (output / 'peers.md').write_text(text)
    (output / 'peers.json').write_text(json.dumps(rows, indent=2))
    print(text)


if __name__ == '__main__':
    main()
