"""`caretrans bench`: latency of CARE and its peers side by side, with ratios to CARE-S0."""
import json
import os


def add_parser(subparsers):
    from ..bench.catalog import CARE_MODELS, DEFAULT_RUNTIMES, PEERS, RUNTIMES

    p = subparsers.add_parser('bench', help='latency side by side (eager, ONNX Runtime, OpenVINO, ExecuTorch, '
                              'LiteRT), interleaved')
    p.add_argument('-m', '--model', '--models', dest='models', nargs='+', default=list(CARE_MODELS + PEERS),
                   metavar='MODEL', help="timm model names (default: CARE-S0/S1/S2 and the peers of the paper's Table 1)")
    p.add_argument('--runtimes', nargs='+', default=list(DEFAULT_RUNTIMES), choices=RUNTIMES,
                   help='default: %(default)s; executorch (XNNPACK, needs caretrans[mobile]) lowers each model '
                   'first, litert (XNNPACK delegate, needs caretrans[litert]) converts each to .tflite first')
    p.add_argument('-b', '--batch-size', type=int, default=1)
    p.add_argument('--checkpoint', metavar='RUN_OR_FILE', help="time the models at the input a trained model takes: "
                   "its model card's input size (--img-size's default), channels and class count")
    p.add_argument('--img-size', type=int, help="default: the --checkpoint's recorded size, else 224")
    p.add_argument('--threads', type=int, default=os.cpu_count(), help='intra-op threads (default: all cores)')
    p.add_argument('--rounds', type=int, default=20, help='interleaved rounds; each times every entry once')
    p.add_argument('--iters', type=int, default=1, help='calls per entry per round (averaged)')
    p.add_argument('--device', default='cpu', help="where the PyTorch runtime ('eager') runs: cpu, cuda, cuda:N")
    p.add_argument('--dtype', default='float32', choices=['float32', 'float16', 'bfloat16'],
                   help='PyTorch runtime: weights and input in this dtype')
    p.add_argument('--channels-last', action='store_true', help='PyTorch runtime: channels-last weights and input')
    p.add_argument('--compile', action='store_true', help='PyTorch runtime: torch.compile each model first')
    p.add_argument('--cuda-graphs', action='store_true',
                   help="PyTorch runtime on CUDA: replay CUDA graphs (with --compile: mode='reduce-overhead')")
    p.add_argument('--throughput', action='store_true',
                   help='also images/s of the fused CARE models at --throughput-batch (CUDA when present)')
    p.add_argument('--throughput-batch', type=int, default=64)
    p.add_argument('--plot', metavar='PNG', help='write a latency-vs-accuracy figure (paper Figure 1 style)')
    p.add_argument('--plot-runtime', choices=RUNTIMES,
                   help='the runtime whose latencies the figure shows (default: onnxruntime if timed, else the first)')
    p.add_argument('--json', action='store_true', help='print JSON instead of a table')
    p.set_defaults(func=run)


def _input_of(args):
    """(img_size, in_chans, num_classes) the models are timed at: the --checkpoint's card's, else ImageNet's."""
    card = None
    if args.checkpoint:
        from ..models import describe
        from ..models.checkpoint_info import run_weights

        card = describe(run_weights(args.checkpoint)).card
        if card is None:
            raise ValueError(f'--checkpoint {args.checkpoint} records no model card (input size and channels)')
    img_size = args.img_size if args.img_size is not None else card.img_size if card else 224
    return img_size, card.in_chans if card else 3, card.num_classes if card else 1000


def _check(args):
    from .common import check_at_least

    if args.img_size < 32:
        raise ValueError(f'--img-size {args.img_size} is too small: CARE needs at least 32 pixels')
    check_at_least(args, batch_size=1, threads=1, rounds=1, iters=1, throughput_batch=1)
    cuda = args.device.startswith('cuda')
    if args.cuda_graphs and not cuda:
        raise ValueError('--cuda-graphs needs --device cuda')
    if (args.device != 'cpu' or args.dtype != 'float32') and set(args.runtimes) != {'eager'}:
        raise ValueError(f'--device {args.device} --dtype {args.dtype} apply to the PyTorch runtime only: '
                         'add --runtimes eager')
    if cuda and not _cuda_available():
        raise ValueError(f'--device {args.device}: this machine has no CUDA device')


def _cuda_available() -> bool:
    import torch
    return torch.cuda.is_available()


def run(args):
    from ..bench.latency import OUTPUT_RTOL, benchmark, is_care_model, plot, throughput
    from ..export.quiet import quiet_libraries
    from .common import check_model_names

    check_model_names(args.models)
    args.img_size, in_chans, num_classes = _input_of(args)
    _check(args)
    with quiet_libraries():  # the runtimes' own log lines (CARETRANS_VERBOSE=1 shows them)
        rows = benchmark(args.models, args.runtimes, args.batch_size, args.img_size, args.threads, args.rounds,
                         args.iters, num_classes=num_classes, device=args.device, dtype=args.dtype,
                         channels_last=args.channels_last, compile=args.compile, cuda_graphs=args.cuda_graphs,
                         in_chans=in_chans)
    result = dict(rows=rows)
    if args.throughput:
        result['throughput'] = [throughput(m, args.throughput_batch, args.img_size)
                                for m in args.models if is_care_model(m)]
    if args.plot:
        runtime = args.plot_runtime or ('onnxruntime' if 'onnxruntime' in args.runtimes else args.runtimes[0])
        if runtime not in args.runtimes:
            raise ValueError(f'--plot-runtime {runtime} is not among the timed --runtimes')
        result['plot'] = str(plot(rows, args.plot, runtime))
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    torch_setting = ', '.join([args.device, args.dtype] + [flag for flag, on in (
        ('channels-last', args.channels_last), ('compiled', args.compile), ('CUDA graphs', args.cuda_graphs)) if on])
    print(f'batch {args.batch_size}, {in_chans}x{args.img_size}x{args.img_size}, {args.threads} thread(s), '
          f'{num_classes} classes, PyTorch runtime: '
          f'{torch_setting}; {args.rounds} interleaved rounds; ratio = median over rounds of latency / fused '
          f'care_s0 latency; outputs checked against eager first (error = max |diff| / max |logit|, at most '
          f'{OUTPUT_RTOL[args.dtype]:g})')
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
