"""Phone runtimes side by side (docs/performance.md, "Phone runtimes side by side"): CARE-S0/S1/S2 against
FastViT-T8/T12/SA12, MobileOne-S0 and EfficientFormer-L1 on LiteRT and ExecuTorch, both through XNNPACK,
float32 and int8, all timed interleaved in one process, at one thread count per run:

    .venv/bin/python benchmarks/phone_runtimes.py --cache runs/phone_models --build-only
    .venv/bin/python benchmarks/phone_runtimes.py --cache runs/phone_models --threads 1 --rounds 40 --iters 3 \
        --json runs/phone_1t.json
    .venv/bin/python benchmarks/phone_runtimes.py --cache runs/phone_models --threads 2 --rounds 40 --iters 3 \
        --json runs/phone_2t.json

Every model is re-parameterised and converted as `caretrans export --format tflite|executorch` does
(int8: PT2E, calibrated on --calib-count synthetic images, the classifier head left float), batch 1,
224x224, random weights (latency does not depend on them). A float entry's logits must match eager
PyTorch's (max |diff| / max |logit| <= 1e-4) before it is timed; an int8 entry's error to eager is
reported. Each round takes the runtimes in a fresh random order (one runtime's thread pool at a time:
idle workers of the other might still spin) and runs their entries `--iters` times each in a fresh
random order. Ratios are medians over rounds of the per-round ratio, with their inter-quartile range.
--cache keeps the converted files (about an hour of conversion on 2 loaded cores), so that a run
only times. `--threads 1 2` interleaves the thread counts too, resetting ExecuTorch's process-wide
thread pool between them; such resets deadlocked once here, hence one thread count per run.
"""
import argparse
import json
import platform
import random
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import torch

import caretrans  # noqa: F401  (registers the CARE models)
from caretrans.bench.latency import OUTPUT_RTOL, create_model, is_care_model, output_error
from caretrans.export import litert, mobile
from caretrans.export.quantize import calibration_images
from caretrans.models.complexity import count_macs

MODELS = ['care_s0', 'care_s1', 'care_s2', 'fastvit_t8', 'fastvit_t12', 'fastvit_sa12', 'mobileone_s0',
          'efficientformer_l1']
PAIRS = [('care_s0', 'fastvit_t8'), ('care_s1', 'fastvit_t12'), ('care_s2', 'fastvit_sa12')]
RUNTIMES = ('litert', 'executorch')
PRECISIONS = ('fp32', 'int8')


def build(model, runtime: str, precision: str, x: torch.Tensor, calibration) -> tuple:
    """(serialised model, how its operators run) for one runtime and precision."""
    with torch.no_grad():
        if runtime == 'litert':
            graph, quantizer = litert.export_graph(model, x), None
            if precision == 'int8':
                quantizer = litert.int8_quantizer()
                graph = litert.quantize_int8(graph, calibration, quantizer)
            buffer = litert.convert(graph, x, quantizer)
            return buffer, litert.delegation_report(buffer)
        program = mobile.export_program(model, x)
        if precision == 'int8':
            program = torch.export.export(mobile.quantize_int8(program, calibration), (x,))
        edge = mobile.lower(program)
        report = mobile.delegation_report(edge)
        return edge.to_executorch().buffer, dict(segments=report['segments'], outside=report['portable'])


def cached_build(cache, name, runtime, precision, model, x, calibration, cached_only=False):
    """build(), through files in `cache` when given (FILE and FILE.json, the delegation report)."""
    path = cache and Path(cache) / f'{name}.{precision}.{"tflite" if runtime == "litert" else "pte"}'
    if path and path.is_file() and path.with_suffix(path.suffix + '.json').is_file():
        return path.read_bytes(), json.loads(path.with_suffix(path.suffix + '.json').read_text())
    if cached_only:
        raise FileNotFoundError(f'not converted yet ({path})')
    buffer, report = build(model, runtime, precision, x, calibration)
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(buffer)
        path.with_suffix(path.suffix + '.json').write_text(json.dumps(report))
    return buffer, report


def time_rounds(entries, threads, runtimes, rounds: int, iters: int, seed: int = 0):
    """Per entry key (model, runtime, precision, threads), milliseconds per call per round: each round
    takes the thread counts, and within each the runtimes, in a fresh random order (one runtime's
    thread pool at a time: idle workers of the other might still spin) and runs their entries in a
    fresh random order."""
    rng = random.Random(seed)
    times = {key: [] for key in entries}
    for key, run in entries.items():  # warm-up, at each entry's own thread count
        use_threads(key[3])
        for _ in range(3):
            run()
    for _ in range(rounds):
        for t in rng.sample(threads, len(threads)):
            use_threads(t)
            for runtime in rng.sample(runtimes, len(runtimes)):
                keys = [k for k in entries if k[3] == t and k[1] == runtime]
                for key in rng.sample(keys, len(keys)):
                    start = time.perf_counter()
                    for _ in range(iters):
                        entries[key]()
                    times[key].append((time.perf_counter() - start) / iters * 1e3)
    return times


_pool = {}


def use_threads(threads: int):
    """Size ExecuTorch's thread pool, only when it changes: resetting it often has deadlocked."""
    if _pool.get('threads') != threads:
        mobile.set_threads(threads)
        _pool['threads'] = threads


def quartiles(values) -> list:
    return [float(np.percentile(values, q)) for q in (25, 50, 75)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--models', nargs='+', default=MODELS)
    parser.add_argument('--runtimes', nargs='+', default=list(RUNTIMES), choices=RUNTIMES)
    parser.add_argument('--precisions', nargs='+', default=list(PRECISIONS), choices=PRECISIONS)
    parser.add_argument('--threads', nargs='+', type=int, default=[1, 2])
    parser.add_argument('--img-size', type=int, default=224)
    parser.add_argument('--rounds', type=int, default=40)
    parser.add_argument('--iters', type=int, default=3, help='calls per entry per round (averaged)')
    parser.add_argument('--calib-count', type=int, default=16, help='synthetic calibration images for int8')
    parser.add_argument('--cache', help='folder keeping the converted files between runs')
    parser.add_argument('--build-only', action='store_true', help='convert (into --cache) and stop')
    parser.add_argument('--cached-only', action='store_true', help='time only what --cache holds')
    parser.add_argument('--json', help='also write the rows here')
    args = parser.parse_args()
    warnings.simplefilter('ignore')
    torch.manual_seed(0)
    x = torch.randn(1, 3, args.img_size, args.img_size)
    calibration = [torch.from_numpy(c) for c in calibration_images('synthetic', args.calib_count, args.img_size, 3)]
    entries, rows, gmacs = {}, {}, {}
    for name in args.models:
        torch.manual_seed(zlib.crc32(name.encode()))  # the same weights whatever the model order
        model = create_model(name, fused=True)
        # as `caretrans bench` reports them: CARE as published (un-fused), the peers re-parameterised
        gmacs[name] = count_macs(create_model(name, fused=not is_care_model(name)), args.img_size) / 1e9
        with torch.no_grad():
            expected = model(x)
        for runtime in args.runtimes:
            for precision in args.precisions:
                start = time.perf_counter()
                row = dict(model=name, runtime=runtime, precision=precision, gmacs=gmacs[name])
                try:
                    buffer, report = cached_build(args.cache, f'{name}.{runtime}', runtime, precision, model, x,
                                                  calibration, args.cached_only)
                except Exception as e:  # a model this runtime or quantiser cannot take: reported, not timed
                    row['error'] = f'{type(e).__name__}: {str(e).splitlines()[0][:200]}'
                    print(f'{name} {runtime} {precision}: {row["error"]}', flush=True)
                    rows[(name, runtime, precision)] = row
                    continue
                row.update(segments=report['segments'], outside=report['outside'], size_mb=len(buffer) / 2 ** 20)
                print(f'{name} {runtime} {precision}: {time.perf_counter() - start:.0f} s, {row["size_mb"]:.1f} MB, '
                      f'{report["segments"]} XNNPACK segment(s), outside: {report["outside"] or "none"}', flush=True)
                if args.build_only:
                    continue
                program = mobile.LoadedProgram(buffer) if runtime == 'executorch' else None
                for t in args.threads:
                    loaded = program or litert.LoadedModel(buffer, t)
                    use_threads(t)
                    row[f'error_{t}'] = output_error(loaded(x), expected)
                    # Cached files hold the weights of the run that converted them: compare, but time anyway.
                    if precision == 'int8' or args.cached_only or row[f'error_{t}'] <= OUTPUT_RTOL['float32']:
                        entries[(name, runtime, precision, t)] = (lambda run: lambda: run(x))(loaded)
                rows[(name, runtime, precision)] = row
    if args.build_only:
        return
    print(f'timing {len(entries)} entries, {args.rounds} rounds x {args.iters} calls', flush=True)
    times = time_rounds(entries, args.threads, args.runtimes, args.rounds, args.iters)
    for (name, runtime, precision, t), values in times.items():
        row = rows[(name, runtime, precision)]
        row[f'ms_{t}'] = quartiles(values)
        reference = times.get(('care_s0', runtime, precision, t))
        if reference:
            row[f'ratio_to_care_s0_{t}'] = quartiles(np.array(values) / np.array(reference))
    pairs = []
    for care, peer in PAIRS:
        for runtime in args.runtimes:
            for precision in args.precisions:
                for t in args.threads:
                    a, b = times.get((care, runtime, precision, t)), times.get((peer, runtime, precision, t))
                    if a and b:
                        pairs.append(dict(care=care, peer=peer, runtime=runtime, precision=precision, threads=t,
                                          ratio=quartiles(np.array(a) / np.array(b))))
    setting = dict(machine=platform.processor() or platform.machine(), torch=torch.__version__,
                   img_size=args.img_size, rounds=args.rounds, iters=args.iters, threads=args.threads,
                   calib_count=args.calib_count)
    print(json.dumps(setting))
    print('| model | GMACs | runtime | precision | ' + ' | '.join(f'{t} thread ms (IQR) | x CARE-S0' for t in args.threads)
          + ' | segments |')
    for row in rows.values():
        cells = []
        for t in args.threads:
            ms, ratio = row.get(f'ms_{t}'), row.get(f'ratio_to_care_s0_{t}')
            cells.append(f'{ms[1]:.1f} ({ms[0]:.1f}-{ms[2]:.1f})' if ms else row.get('error', 'not timed')[:40])
            cells.append(f'{ratio[1]:.2f}' if ratio else '-')
        print(f'| {row["model"]} | {row["gmacs"]:.2f} | {row["runtime"]} | {row["precision"]} | ' + ' | '.join(cells)
              + f' | {row.get("segments", "-")} |')
    print('| CARE / peer | runtime | precision | threads | median ratio | IQR |')
    for p in pairs:
        print(f'| {p["care"]} / {p["peer"]} | {p["runtime"]} | {p["precision"]} | {p["threads"]} | '
              f'{p["ratio"][1]:.2f} | {p["ratio"][0]:.2f}-{p["ratio"][2]:.2f} |')
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(dict(setting=setting, rows=list(rows.values()), pairs=pairs), indent=1))


if __name__ == '__main__':
    main()
