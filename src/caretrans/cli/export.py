"""`caretrans export`: re-parameterise, export (ONNX, TorchScript, Core ML, ExecuTorch, LiteRT; int8 ONNX,
ExecuTorch or LiteRT) and check the artefact against PyTorch."""
import json


def add_parser(subparsers):
    p = subparsers.add_parser('export', help='export a fused model and check it against PyTorch')
    p.add_argument('-m', '--model', help='timm model name (default: the one recorded in the checkpoint, else care_s0)')
    p.add_argument('--checkpoint', metavar='RUN_OR_FILE', help='weights (a run folder, ours or released; the model '
                   'card, else the class count and input channels, are read from it)')
    p.add_argument('--format', required=True, choices=['onnx', 'torchscript', 'coreml', 'executorch', 'tflite'])
    p.add_argument('--output', required=True, metavar='PATH')
    p.add_argument('--img-size', type=int, help="the graph's input size (default: the checkpoint's model card's, "
                   "else 224)")
    p.add_argument('--dynamic-batch', action='store_true', help='ONNX: a free batch axis (checked at 1 and 8); '
                   'ExecuTorch (XNNPACK): any batch up to --max-batch (checked at 1 and --max-batch)')
    p.add_argument('--max-batch', type=int, default=8, help='ExecuTorch with --dynamic-batch: the largest batch '
                   '(default 8; the program plans its memory for it)')
    p.add_argument('--nhwc', action='store_true', help='LiteRT (tflite): channels-last (N, H, W, C) input, as '
                   'Android camera pipelines hand it over')
    p.add_argument('--backend', choices=['xnnpack', 'coreml'],
                   help='ExecuTorch: the delegate the program is lowered to (default: xnnpack, the phone CPU)')
    p.add_argument('--fp16', action='store_true',
                   help='Core ML (.mlpackage or --backend coreml): float16 compute precision, as the Neural '
                   'Engine runs; LiteRT (tflite): float16 weights (half the file, float32 arithmetic)')
    p.add_argument('--image-input', action='store_true', help='Core ML .mlpackage: the input is an image (0-255 '
                   'pixels); ExecuTorch: a float tensor of 0-255 pixels; the program scales and normalises it with '
                   '--mean and --std')
    p.add_argument('--mean', type=float, nargs='+', help="with --image-input (default: the model card's, else the "
                   "model's pretrained_cfg)")
    p.add_argument('--std', type=float, nargs='+', help="with --image-input (default: the model card's, else the "
                   "model's pretrained_cfg)")
    p.add_argument('--no-reparameterize', dest='reparameterize', action='store_false',
                   help='export the model as trained, without inference fusions')
    p.add_argument('--int8', metavar='DATA', help="ONNX: also write PATH.int8.onnx, quantised with ONNX Runtime "
                   "(static, per-channel); ExecuTorch (XNNPACK): also write PATH.int8.pte, quantised with PT2E and "
                   "XNNPACK's quantiser (static, per-channel); LiteRT: also write PATH.int8.tflite, quantised with "
                   "PT2E and litert-torch's quantiser (static, per-channel); calibrated on DATA ('fashion-mnist', "
                   "'synthetic' or an image folder)")
    p.add_argument('--calib-count', type=int, default=256, help='calibration images (default 256)')
    p.add_argument('--crop-pct', type=float,
                   help='with --int8: evaluation transform crop (resize to img_size / crop_pct, centre crop; '
                   "default: the model card's, else 0.875)")
    p.add_argument('--eval-count', type=int, default=0,
                   help='with --int8: top-1 of float and int8 on this many validation images of DATA')
    p.add_argument('--json', action='store_true', help='print the report as JSON')
    p.set_defaults(func=run)


def _build(args, info):
    """The model of --model (or of the checkpoint) with the checkpoint's class count, channels and weights."""
    import timm

    from ..models import load_checkpoint, reparameterize

    kwargs = (info.card.model_kwargs() if info.card is not None else info.model_kwargs()) if info else {}
    model = timm.create_model(args.model, **kwargs)
    if info:
        load_checkpoint(model, info.path)
        if info.card is not None:
            info.card.apply(model)  # a save_for_hf folder's card is in its config.json, not in the weights
    model.eval()
    return reparameterize(model) if args.reparameterize else model


def _image_norm(args, model):
    """(mean, std) of --image-input, one value per input channel."""
    if not args.image_input:
        if args.mean or args.std:
            raise ValueError('--mean and --std go with --image-input')
        return None
    cfg = getattr(model, 'pretrained_cfg', {}) or {}
    norm = [args.mean or cfg.get('mean'), args.std or cfg.get('std')]
    for i, name in enumerate(('mean', 'std')):
        if norm[i] is None:
            raise ValueError(f'--image-input needs --{name}: the model has no pretrained_cfg {name}')
        if len(norm[i]) != model.in_chans:
            raise ValueError(f'--{name} needs {model.in_chans} value(s), one per input channel; got {len(norm[i])}')
    if any(s <= 0 for s in norm[1]):
        raise ValueError(f'--std must be positive, got {norm[1]}')
    return tuple(norm)


def _metadata(args, info) -> dict:
    """What the artefact records (formats with a place for it): the checkpoint's model card, at the graph's size."""
    import dataclasses

    from ..models.card import CARD_KEY

    if not info or info.card is None:
        return {}
    card = info.card
    return {CARD_KEY: dataclasses.replace(card, input_size=(card.in_chans, args.img_size, args.img_size)).to_json()}


def _export(args, model, info) -> dict:
    if args.format == 'tflite':
        return _export_tflite(args, model, info)
    if args.nhwc:
        raise ValueError('--nhwc chooses the input layout of a LiteRT model: use it with --format tflite')
    if args.format != 'executorch':
        from ..export import export_model

        if args.backend:
            raise ValueError('--backend chooses the delegate of an ExecuTorch program: use it with --format executorch')
        return export_model(model, args.format, args.output, args.img_size, args.dynamic_batch, fp16=args.fp16,
                            image=_image_norm(args, model), metadata=_metadata(args, info))
    from ..export.convert import ImageInput
    from ..export.mobile import export_executorch

    norm = _image_norm(args, model)
    program_model = ImageInput(model, *norm, scale=1 / 255).eval() if norm else model
    return export_executorch(program_model, args.output, args.backend or 'xnnpack', args.img_size, fp16=args.fp16,
                             max_batch=args.max_batch if args.dynamic_batch else 1)


def _export_tflite(args, model, info) -> dict:
    from ..export.litert import export_tflite

    if args.backend or args.image_input:
        raise ValueError('--backend and --image-input do not apply to LiteRT models (XNNPACK delegate, tensor input)')
    return export_tflite(model, args.output, args.img_size, nhwc=args.nhwc, fp16=args.fp16,
                         metadata=_metadata(args, info))


def _int8_onnx(args, model, card):
    """PATH.int8.onnx and, per path, a runner on one image and a top-1 evaluator."""
    from pathlib import Path

    from ..export import onnx_session, quantize_onnx
    from ..export.quantize import onnx_top1

    output = Path(args.output)
    int8_path = quantize_onnx(output, output.with_suffix('.int8.onnx'), args.int8, args.calib_count,
                              args.img_size, model.in_chans, crop_pct=args.crop_pct, card=card, progress=True)

    def runner(path, x):
        session = onnx_session(path)
        return lambda: session.run(None, {session.get_inputs()[0].name: x})

    def evaluate(path):
        return onnx_top1(path, args.int8, args.eval_count, args.img_size, model.in_chans, crop_pct=args.crop_pct,
                         card=card, progress=f'top-1 of {Path(path).name}')

    return int8_path, runner, evaluate, dict(runtime='ONNX Runtime')


def _int8_executorch(args, model, card):
    """PATH.int8.pte (checked against PyTorch's simulation of the int8 model) and, per path, a runner
    on one image and a top-1 evaluator."""
    from pathlib import Path

    import torch

    from ..export.mobile import LoadedProgram, export_executorch
    from ..export.quantize import calibration_images, top1

    int8_path = Path(args.output).with_suffix('.int8.pte')
    images = calibration_images(args.int8, args.calib_count, args.img_size, model.in_chans, crop_pct=args.crop_pct,
                                card=card)
    report = export_executorch(model, int8_path, 'xnnpack', args.img_size,
                               calibration=(torch.from_numpy(x) for x in images), progress=args.calib_count)

    def runner(path, x):
        program, x = LoadedProgram(Path(path).read_bytes()), torch.from_numpy(x)
        return lambda: program(x)

    def evaluate(path):
        program = LoadedProgram(Path(path).read_bytes())
        return top1(lambda images: program(torch.from_numpy(images)).numpy(), args.int8, args.eval_count,
                    args.img_size, model.in_chans, batch_size=1, crop_pct=args.crop_pct, card=card,
                    progress=f'top-1 of {Path(path).name}')

    return int8_path, runner, evaluate, dict(runtime='ExecuTorch (XNNPACK)', **{
        k: report[k] for k in ('segments', 'delegated', 'portable', 'max_abs_diff', 'max_abs_diff_to_float',
                               'lowering_s')})


def _int8_litert(args, model, card):
    """PATH.int8.tflite (checked against PyTorch's simulation of the int8 model) and, per path, a runner
    on one image and a top-1 evaluator (both files in the layout of --nhwc)."""
    from pathlib import Path

    import torch

    from ..export.litert import LoadedModel, export_tflite
    from ..export.quantize import calibration_images, top1

    int8_path = Path(args.output).with_suffix('.int8.tflite')
    images = calibration_images(args.int8, args.calib_count, args.img_size, model.in_chans, crop_pct=args.crop_pct,
                                card=card)
    report = export_tflite(model, int8_path, args.img_size, nhwc=args.nhwc, progress=args.calib_count,
                           calibration=(torch.from_numpy(x) for x in images))
    layout = (lambda x: x.transpose(0, 2, 3, 1)) if args.nhwc else (lambda x: x)

    def runner(path, x):
        loaded, x = LoadedModel(Path(path).read_bytes()), layout(x)
        return lambda: loaded(x)

    def evaluate(path):
        loaded = LoadedModel(Path(path).read_bytes())
        return top1(lambda images: loaded(layout(images)).numpy(), args.int8, args.eval_count, args.img_size,
                    model.in_chans, batch_size=1, crop_pct=args.crop_pct, card=card,
                    progress=f'top-1 of {Path(path).name}')

    return int8_path, runner, evaluate, dict(runtime='LiteRT (XNNPACK)', **{
        k: report[k] for k in ('segments', 'delegated', 'outside', 'input_dtype', 'max_abs_diff',
                               'max_abs_diff_to_float', 'conversion_s')})


def _int8(args, model, report, card):
    """Quantise, time int8 against float (interleaved) and, with --eval-count, compare their top-1."""
    import torch

    from ..bench.latency import time_interleaved
    from ..export.quantize import dataset_batches

    if args.format == 'executorch':
        int8_path, runner, evaluate, details = _int8_executorch(args, model, card)
    elif args.format == 'tflite':
        int8_path, runner, evaluate, details = _int8_litert(args, model, card)
    else:
        int8_path, runner, evaluate, details = _int8_onnx(args, model, card)
    x = next(dataset_batches(args.int8, 'val', 1, args.img_size, model.in_chans, crop_pct=args.crop_pct,
                             card=card))[0]
    paths = (args.output, str(int8_path))
    times = time_interleaved({p: runner(p, x) for p in paths}, rounds=20)
    ratio = float(torch.tensor(times[paths[1]]).div(torch.tensor(times[paths[0]])).median())
    report['int8'] = dict(output=str(int8_path), calibration=f'{args.calib_count} {args.int8} train images',
                          latency_ratio_int8_to_float=ratio, **details)
    if args.eval_count:
        report['int8'].update(eval_images=args.eval_count, top1_float=evaluate(paths[0]), top1_int8=evaluate(paths[1]))


def _input_line(args, model) -> str:
    """What the exported graph takes."""
    batch = 'N' if args.dynamic_batch else '1'
    size, chans = args.img_size, model.in_chans
    shape = f'({batch}, {size}, {size}, {chans}), NHWC' if args.nhwc else f'({batch}, {chans}, {size}, {size})'
    if args.image_input:
        mean, std = _image_norm(args, model)
        kind = ('a float tensor of' if args.format == 'executorch' else
                'an RGB image of' if model.in_chans == 3 else 'a grayscale image of')
        return (f'input {shape}: {kind} 0-255 pixels, scaled and normalised inside the program '
                f'(mean {_floats(mean)}, std {_floats(std)})')
    cfg = getattr(model, 'pretrained_cfg', {}) or {}
    return (f'input {shape}: float pixels normalised with mean {_floats(cfg.get("mean", ()))}, std '
            f'{_floats(cfg.get("std", ()))} after resizing to {args.img_size} / crop {cfg.get("crop_pct")} '
            f'({cfg.get("interpolation")}), centre crop')


def _floats(values) -> str:
    return '(' + ', '.join(f'{v:.4g}' for v in values) + ')'


def _print(args, report):
    print(f'wrote {report["output"]} ({args.format}{"/" + report["backend"] if "backend" in report else ""}, '
          f'{"fused" if args.reparameterize else "un-fused"} {args.model})')
    print(report['input'])
    if report['model_card'] is not None:
        print('model card (labels, preprocessing) recorded in the metadata' if report.get('metadata') else
              'no model card recorded: ExecuTorch programs have no metadata (keep the run\'s best.safetensors)')
    if report['format'] == 'tflite':
        outside = ', '.join(f'{op} x{n}' for op, n in report['outside'].items()) or 'none'
        custom = ', '.join(op for op in report['operators'] if op.startswith('custom:'))
        ops = sum(report['operators'].values())
        print(f'{report["layout"]} {report["input_dtype"]} input {report["input_shape"]}, {report["precision"]}; '
              f'{ops} LiteRT operators, {"custom: " + custom if custom else "all builtin"}; '
              f'XNNPACK delegate in {report["segments"]} segment(s), left to LiteRT\'s kernels: {outside} '
              f'(converted in {report["conversion_s"]:.0f} s)')
    elif 'segments' in report:
        portable = ', '.join(f'{op} x{n}' for op, n in report['portable'].items()) or 'none'
        print(f'delegated to {"+".join(report["backends"]) or "no backend"} in {report["segments"]} segment(s): '
              f'{sum(report["delegated"].values())} operators; left to portable kernels: {portable} '
              f'(lowered in {report["lowering_s"]:.0f} s)')
    checked = ', '.join(f'batch {b}: max |diff| {d:.2e}' for b, d in report['max_abs_diff'].items())
    if checked:
        print(f'checked against PyTorch: {checked}')
    else:
        program = report['coreml_program']
        print(f'Core ML cannot run on this OS: checked the program, not its numbers ({program["input"]} input '
              f'{program["input_shape"]}, {program["conv_ops"]} convs computing in {program["precision"]}, '
              f'output shape)')
    if 'int8' in report:
        q = report['int8']
        print(f'wrote {q["output"]}: int8 / float latency {q["latency_ratio_int8_to_float"]:.2f} ({q["runtime"]})')
        if 'top1_float' in q:
            print(f'top-1 on {q["eval_images"]} validation images: float {q["top1_float"]:.2f}%, '
                  f'int8 {q["top1_int8"]:.2f}%')


def run(args):
    from ..export.convert import check_export_request
    from ..export.quiet import quiet_libraries
    from ..models.checkpoint_info import run_weights
    from ..models import describe
    from .common import check_at_least, check_model_names

    # Everything that would fail is refused before the model is built.
    if args.checkpoint:
        args.checkpoint = str(run_weights(args.checkpoint))
    info = describe(args.checkpoint, model=args.model) if args.checkpoint else None
    card = info.card if info else None
    args.model = (info.model if info else args.model) or 'care_s0'
    args.img_size = args.img_size if args.img_size is not None else card.img_size if card else 224
    args.crop_pct = args.crop_pct if args.crop_pct is not None else card.crop_pct if card else 0.875
    check_model_names([args.model])
    if args.int8 and args.format not in ('onnx', 'executorch', 'tflite'):
        raise ValueError('--int8 quantises the ONNX or ExecuTorch export or the LiteRT model: use it with --format '
                         'onnx, executorch or tflite')
    if args.int8 and args.backend == 'coreml':
        raise ValueError('--int8 programs are lowered to XNNPACK: use --backend xnnpack')
    if args.image_input and args.format not in ('coreml', 'executorch'):
        raise ValueError('--image-input applies to Core ML and ExecuTorch exports')
    if args.image_input and args.int8:
        raise ValueError('--image-input and --int8 do not go together: the int8 program takes the normalised '
                         'tensor its calibration images are')
    check_at_least(args, calib_count=1, eval_count=0, max_batch=1)
    if not 0 < args.crop_pct <= 1:
        raise ValueError(f'--crop-pct {args.crop_pct}: expected a fraction in (0, 1]')
    check_export_request(args.format, args.output, args.img_size, args.dynamic_batch)
    model = _build(args, info)
    with quiet_libraries():  # the converters' and runtimes' own log lines (CARETRANS_VERBOSE=1 shows them)
        report = _export(args, model, info)
        if args.int8:
            _int8(args, model, report, card)
    report.update(model=args.model, checkpoint=args.checkpoint, reparameterized=args.reparameterize,
                  input=_input_line(args, model), model_card=card.to_dict() if card else None)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print(args, report)
    return 0
