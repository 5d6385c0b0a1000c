"""`caretrans bench`: latency of CARE and its peers side by side, with ratios to CARE-S0."""
import json
import os


def add_parser(subparsers):
    from ..bench.latency import CARE_MODELS, DEFAULT_RUNTIMES, PEERS, RUNTIMES

    p = subparsers.add_parser('bench', help='latency side by side (eager, ONNX Runtime, OpenVINO, ExecuTorch), '
                              'interleaved')
    p.add_argument('--models', nargs='+', default=list(CARE_MODELS + PEERS), metavar='MODEL',
                   help='timm model names (default: CARE-S0/S1/S2 and the peers of the paper\'s Table 1)')
    p.add_argument('--runtimes', nargs='+', default=list(DEFAULT_RUNTIMES), choices=RUNTIMES,
                   help='default: %(default)s; executorch (XNNPACK, needs caretrans[mobile]) lowers each model first')
    p.add_argument('--batch-size', type=int, default=1)
    p.add_argument('--img-size', type=int, default=224)
    p.add_argument('--threads', type=int, default=os.cpu_count(), help='intra-op threads (default: all cores)')
    p.add_argument('--rounds', type=int, default=20, help='interleaved rounds; each times every entry once')
    p.add_argument('--iters', type=int, default=1, help='calls per entry per round (averaged)')
    p.add_argument('--throughput', action='store_true',
                   help='also images/s of the fused CARE models at --throughput-batch (CUDA when present)')
    p.add_argument('--throughput-batch', type=int, default=64)
    p.add_argument('--plot', metavar='PNG', help='write a latency-vs-accuracy figure (paper Figure 1 style)')
    p.add_argument('--plot-runtime', choices=RUNTIMES,
                   help='the runtime whose latencies the figure shows (default: onnxruntime if timed, else the first)')
    p.add_argument('--json', action='store_true', help='print JSON instead of a table')
    p.set_defaults(func=run)


def _check(args):
    if args.img_size < 32:
        raise ValueError(f'--img-size {args.img_size} is too small: CARE needs at least 32 pixels')
    for option in ('batch_size', 'threads', 'rounds', 'iters', 'throughput_batch'):
        if getattr(args, option) < 1:
            raise ValueError(f'--{option.replace("_", "-")} must be at least 1')


def run(args):
    from ..bench.latency import CARE_MODELS, OUTPUT_RTOL, benchmark, plot, throughput
    from .common import check_model_names

    check_model_names(args.models)
    _check(args)
    rows = benchmark(args.models, args.runtimes, args.batch_size, args.img_size, args.threads, args.rounds,
                     args.iters)
    result = dict(rows=rows)
    if args.throughput:
        result['throughput'] = [throughput(m, args.throughput_batch, args.img_size)
                                for m in args.models if m in CARE_MODELS]
    if args.plot:
        runtime = args.plot_runtime or ('onnxruntime' if 'onnxruntime' in args.runtimes else args.runtimes[0])
        if runtime not in args.runtimes:
            raise ValueError(f'--plot-runtime {runtime} is not among the timed --runtimes')
        result['plot'] = str(plot(rows, args.plot, runtime))
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f'batch {args.batch_size}, {args.img_size}x{args.img_size}, {args.threads} thread(s), '
          f'{args.rounds} interleaved rounds; ratio = median over rounds of latency / fused care_s0 latency; '
          f'outputs checked against eager first (error = max |diff| / max |logit|, at most {OUTPUT_RTOL:g})')
    print(f'{"model":<22} {"variant":<8} {"runtime":<12} {"median ms":>10} {"p25-p75 ms":>15} '
          f'{"x care_s0":>9} {"params M":>9} {"GMACs":>6} {"top-1":>6}')
    for r in rows:
        ratio = '-' if r['ratio_to_care_s0'] is None else f'{r["ratio_to_care_s0"]:.2f}'
        top1 = '-' if r['top1'] is None else f'{r["top1"]:.1f}'
        timing = (f'{r["median_ms"]:>10.2f} {r["p25_ms"]:>7.2f}-{r["p75_ms"]:<7.2f}' if r['outputs_match'] else
                  f'{"wrong outputs: error " + format(r["output_error"], ".1e"):>26}')
        print(f'{r["model"]:<22} {r["variant"]:<8} {r["runtime"]:<12} {timing} {ratio:>9} {r["params_m"]:>9.2f} '
              f'{r["gmacs"]:>6.2f} {top1:>6}')
    for t in result.get('throughput', []):
        print(f'throughput {t["model"]} fused, batch {t["batch_size"]} on {t["device"]}: {t["images_per_s"]:.1f} images/s')
    if args.plot:
        print(f'figure: {result["plot"]}')
    return 0
