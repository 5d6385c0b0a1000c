"""The paper's Table 1 GPU column side by side on one CUDA GPU: CARE-S0/S1/S2 and timm's peers, re-parameterised.

    python benchmarks/gpu_table1.py --output gpu_table1.json    # one H100/H200: under 5 minutes
    python benchmarks/gpu_table1.py --dry-run                   # the CPU, two small models: checks the script

Inference columns (224x224, eval mode, re-parameterised): batch 64 fp32 eager; batch 64 fp16
channels-last eager; the same compiled (torch.compile); batch 1 fp16 channels-last replayed from
a CUDA graph; the same compiled with mode='reduce-overhead' (CUDA graphs). Training rows: one
AdamW step, bf16 autocast, batch 128, channels-last, eager and compiled: images/s and peak memory.
CARE runs its Triton kernels (kernels='auto' on CUDA); 'care_s0 [torch]' is CARE-S0 on the
PyTorch path beside it, the kernels' own effect. Within a column the models are timed in
interleaved rounds; "x S0" is the median over rounds of time / CARE-S0's time in that round.
Compiling is the slow part: the compiled columns cover --compile-models only, and columns still
waiting when --budget-s runs out are skipped (and listed), cheap ones first.
"""
import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import timm
import torch

import caretrans
from caretrans.bench.gpu import DTYPES, example_input, inference_runner, peak_memory_mib, prepare, sync, \
    train_step_runner
from caretrans.bench.latency import Entry, summarise, time_interleaved

CARE = ('care_s0', 'care_s1', 'care_s2')
PEERS = ('fastvit_t8', 'fastvit_t12', 'fastvit_sa12', 'mobileone_s0', 'mobileone_s2', 'mobileone_s4',
         'mobilenetv2_100', 'mobilenetv2_140', 'efficientformer_l1', 'deit_tiny_patch16_224', 'pvt_v2_b0', 'resnet18')
TORCH_PATH = 'care_s0 [torch]'  # CARE-S0 with kernels='torch'
COMPILE_MODELS = ('care_s0', TORCH_PATH, 'fastvit_t8')
TRAIN_MODELS = ('care_s0', 'care_s2', TORCH_PATH, 'fastvit_t8', 'mobileone_s0')
TRAIN_COMPILE_MODELS = ('care_s0', 'fastvit_t8')


@dataclass(frozen=True)
class Column:
    key: str
    batch: int
    dtype: str
    channels_last: bool = False
    compile: bool = False
    cuda_graphs: bool = False
    train: bool = False


# Cheapest first: when the budget runs out, the compiled columns go.
COLUMNS = (
    Column('b64 fp32 eager', 64, 'float32'),
    Column('b64 fp16 CL eager', 64, 'float16', channels_last=True),
    Column('b1 fp16 CL CUDA graph', 1, 'float16', channels_last=True, cuda_graphs=True),
    Column('train bf16 b128 eager', 128, 'bfloat16', channels_last=True, train=True),
    Column('b64 fp16 CL compiled', 64, 'float16', channels_last=True, compile=True),
    Column('b1 fp16 CL reduce-overhead', 1, 'float16', channels_last=True, compile=True, cuda_graphs=True),
    Column('train bf16 b128 compiled', 128, 'bfloat16', channels_last=True, compile=True, train=True),
)


def build(row: str, train: bool) -> torch.nn.Module:
    """The model of a table row: CARE on its Triton kernels (or '[torch]': the PyTorch path), peers as timm
    builds them; re-parameterised for inference."""
    name, kernels = (row.split()[0], 'torch') if row == TORCH_PATH else (row, None)
    model = timm.create_model(name, **({'kernels': kernels} if kernels else {}))
    return model.train() if train else caretrans.reparameterize(model)


def rows_of(column: Column, models: Sequence[str], compile_models: Sequence[str], train_models: Sequence[str],
            train_compile_models: Sequence[str]) -> List[str]:
    wanted = (train_compile_models if column.compile else train_models) if column.train else \
        (compile_models if column.compile else models)
    return [m for m in models if m in wanted]


def measure(column: Column, rows: Sequence[str], device: torch.device, img_size: int, rounds: int, iters: int,
            compile_backend: str) -> List[dict]:
    """Times (and for training, peak memory) of every row in one column, interleaved round by round."""
    dtype = DTYPES[column.dtype]
    runners, entries, memory = {}, [], {}
    for row in rows:
        model = build(row, column.train)
        if column.train:  # autocast: fp32 weights, bf16 compute
            model = prepare(model, device, torch.float32, column.channels_last)
            x = example_input(column.batch, img_size, device, torch.float32, column.channels_last)
            run = train_step_runner(model, x, dtype, column.compile, compile_backend)
        else:
            model = prepare(model, device, dtype, column.channels_last)
            x = example_input(column.batch, img_size, device, dtype, column.channels_last)
            run = inference_runner(model, x, column.compile, column.cuda_graphs, compile_backend)
        run()  # compiles, captures, warms up
        memory[row] = peak_memory_mib(run, device) if column.train else None
        runners[len(entries)] = run
        entries.append(Entry(row, 'fused', column.key))
    for key, times in time_interleaved(runners, rounds, iters, sync=sync(device)).items():
        entries[key].times_ms = times
    results = summarise(entries)
    for row, result in zip(rows, results):
        result.update(model=row, batch_size=column.batch, dtype=column.dtype, channels_last=column.channels_last,
                      compile=column.compile, cuda_graphs=column.cuda_graphs, train=column.train)
        if column.train:
            result.update(images_per_s=column.batch * 1e3 / result['median_ms'], peak_mib=memory[row])
    return results


def table(results: Dict[str, List[dict]], models: Sequence[str]) -> str:
    """Markdown: inference columns (median ms, x S0), then training rows (images/s, peak MiB, x S0 of step time)."""
    inference = [c for c in COLUMNS if not c.train and c.key in results]
    lines = ['| model | ' + ' | '.join(f'{c.key} ms (x S0)' for c in inference) + ' |',
             '|---|' + '---|' * len(inference)]
    for model in models:
        cells = []
        for c in inference:
            r = next((r for r in results[c.key] if r['model'] == model), None)
            cells.append('' if r is None else f'{r["median_ms"]:.2f} ({r["ratio_to_care_s0"]:.2f})')
        lines.append(f'| {model} | ' + ' | '.join(cells) + ' |')
    for c in (c for c in COLUMNS if c.train and c.key in results):
        lines += ['', f'| {c.key} | images/s | peak MiB | step time x S0 |', '|---|---|---|---|']
        for r in results[c.key]:
            peak = '-' if r['peak_mib'] is None else f'{r["peak_mib"]:.0f}'
            lines.append(f'| {r["model"]} | {r["images_per_s"]:.0f} | {peak} | {r["ratio_to_care_s0"]:.2f} |')
    return '\n'.join(lines)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--models', nargs='+', default=list(CARE + (TORCH_PATH,) + PEERS),
                   help=f"table rows: timm names, and '{TORCH_PATH}' for CARE-S0 on the PyTorch path")
    p.add_argument('--compile-models', nargs='+', default=list(COMPILE_MODELS), help='rows of the compiled columns')
    p.add_argument('--train-models', nargs='+', default=list(TRAIN_MODELS), help='rows of the training step')
    p.add_argument('--train-compile-models', nargs='+', default=list(TRAIN_COMPILE_MODELS))
    p.add_argument('--columns', nargs='+', default=[c.key for c in COLUMNS], metavar='COLUMN',
                   help='a subset of: ' + '; '.join(c.key for c in COLUMNS))
    p.add_argument('--img-size', type=int, default=224)
    p.add_argument('--rounds', type=int, default=10, help='interleaved rounds per column')
    p.add_argument('--iters', type=int, default=5, help='calls per model per round')
    p.add_argument('--budget-s', type=float, default=270, help='columns not started by then are skipped')
    p.add_argument('--output', help='write the results as JSON')
    p.add_argument('--dry-run', action='store_true',
                   help='CPU, care_s0 and mobileone_s0 at 64x64, batches of at most 4, bfloat16 for float16, '
                        "no CUDA graphs, Dynamo's eager backend: a check of the script, no measurement")
    args = p.parse_args(argv)
    unknown = sorted(set(args.columns) - {c.key for c in COLUMNS})
    if unknown:
        p.error(f'unknown column(s): {", ".join(unknown)}')
    return args


def dry_run_column(column: Column) -> Column:
    """The column as the CPU dry run can run it."""
    return Column(column.key, min(column.batch, 4), 'bfloat16' if column.dtype == 'float16' else column.dtype,
                  column.channels_last, column.compile, False, column.train)


def main(argv: Optional[Sequence[str]] = None) -> dict:
    args = parse_args(argv)
    if args.dry_run:
        args.models = ['care_s0', 'mobileone_s0']
        args.img_size, args.rounds, args.iters = 64, 1, 1
        device, backend = torch.device('cpu'), 'eager'
    elif not torch.cuda.is_available():
        sys.exit('gpu_table1.py measures on CUDA; this machine has none (--dry-run checks the script on the CPU)')
    else:
        device, backend = torch.device('cuda'), 'inductor'
        torch.backends.cudnn.benchmark = True
    start, results, skipped = time.perf_counter(), {}, []
    for column in (c for c in COLUMNS if c.key in args.columns):
        if time.perf_counter() - start > args.budget_s:
            skipped.append(column.key)
            continue
        rows = rows_of(column, args.models, args.compile_models, args.train_models, args.train_compile_models)
        if not rows or 'care_s0' not in rows:
            skipped.append(column.key)  # the ratios need CARE-S0
            continue
        results[column.key] = measure(dry_run_column(column) if args.dry_run else column, rows, device,
                                      args.img_size, args.rounds, args.iters, backend)
        torch._dynamo.reset()
        if device.type == 'cuda':
            torch.cuda.empty_cache()
    report = dict(device=torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu (dry run)',
                  torch=torch.__version__, timm=timm.__version__, img_size=args.img_size, rounds=args.rounds,
                  iters=args.iters, seconds=time.perf_counter() - start, skipped=skipped, columns=results,
                  command=' '.join(['python', 'benchmarks/gpu_table1.py'] + list(argv if argv is not None
                                                                                  else sys.argv[1:])))
    print(f'{report["device"]}, torch {report["torch"]}, timm {report["timm"]}, {args.img_size}x{args.img_size}, '
          f'{args.rounds} interleaved rounds x {args.iters} calls, {report["seconds"]:.0f} s'
          + (f'; skipped (budget or no CARE-S0 row): {", ".join(skipped)}' if skipped else ''))
    print(table(results, args.models))
    if args.output:
        Path(args.output).write_text(json.dumps(report, indent=2))
    return report


if __name__ == '__main__':
    main()
