"""`caretrans export`: re-parameterise, export (ONNX, TorchScript, Core ML, int8 ONNX) and check numerically."""
import json


def add_parser(subparsers):
    p = subparsers.add_parser('export', help='export a fused model and check it against PyTorch')
    p.add_argument('--model', default='care_s0')
    p.add_argument('--checkpoint', metavar='FILE', help='weights (ours or released; class count and input '
                   'channels are read from it)')
    p.add_argument('--format', required=True, choices=['onnx', 'torchscript', 'coreml'])
    p.add_argument('--output', required=True, metavar='PATH')
    p.add_argument('--img-size', type=int, default=224)
    p.add_argument('--dynamic-batch', action='store_true', help='ONNX: a free batch axis (checked at 1 and 8)')
    p.add_argument('--no-reparameterize', dest='reparameterize', action='store_false',
                   help='export the model as trained, without inference fusions')
    p.add_argument('--int8', metavar='DATA', help="ONNX: also write PATH.int8.onnx, quantised with ONNX Runtime "
                   "(static, per-channel) and calibrated on DATA ('fashion-mnist', 'synthetic' or an image folder)")
    p.add_argument('--calib-count', type=int, default=256, help='calibration images (default 256)')
    p.add_argument('--crop-pct', type=float, default=0.875,
                   help='with --int8: evaluation transform crop (resize to img_size / crop_pct, centre crop)')
    p.add_argument('--eval-count', type=int, default=0,
                   help='with --int8: top-1 of float and int8 on this many validation images of DATA')
    p.add_argument('--json', action='store_true', help='print the report as JSON')
    p.set_defaults(func=run)


def _build(args):
    import timm

    from ..models import load_checkpoint, read_checkpoint, reparameterize
    from .common import checkpoint_shape

    kwargs = checkpoint_shape(read_checkpoint(args.checkpoint)) if args.checkpoint else {}
    model = timm.create_model(args.model, **kwargs)
    if args.checkpoint:
        load_checkpoint(model, args.checkpoint)
    model.eval()
    return reparameterize(model) if args.reparameterize else model


def _int8(args, model, report):
    from pathlib import Path

    import torch

    from ..bench.latency import time_interleaved
    from ..export import onnx_session, quantize_onnx
    from ..export.quantize import dataset_batches, onnx_top1

    in_chans = model.in_chans
    output = Path(args.output)
    int8_path = quantize_onnx(output, output.with_suffix('.int8.onnx'), args.int8, args.calib_count,
                              args.img_size, in_chans, crop_pct=args.crop_pct)
    x = next(dataset_batches(args.int8, 'val', 1, args.img_size, in_chans, crop_pct=args.crop_pct))[0]
    sessions = {p: onnx_session(p) for p in (output, int8_path)}
    runners = {p: (lambda s=s: s.run(None, {s.get_inputs()[0].name: x})) for p, s in sessions.items()}
    times = time_interleaved(runners, rounds=20)
    ratio = float(torch.tensor(times[int8_path]).div(torch.tensor(times[output])).median())
    report['int8'] = dict(output=str(int8_path), calibration=f'{args.calib_count} {args.int8} train images',
                          latency_ratio_int8_to_float=ratio)
    if args.eval_count:
        report['int8'].update(
            eval_images=args.eval_count,
            top1_float=onnx_top1(output, args.int8, args.eval_count, args.img_size, in_chans, crop_pct=args.crop_pct),
            top1_int8=onnx_top1(int8_path, args.int8, args.eval_count, args.img_size, in_chans,
                                crop_pct=args.crop_pct))


def run(args):
    from ..export import export_model
    from ..export.convert import check_export_request
    from .common import check_at_least, check_model_names

    # Everything that would fail is refused before the model is built.
    check_model_names([args.model])
    if args.int8 and args.format != 'onnx':
        raise ValueError('--int8 quantises the ONNX export: use it with --format onnx')
    check_at_least(args, calib_count=1, eval_count=0)
    if not 0 < args.crop_pct <= 1:
        raise ValueError(f'--crop-pct {args.crop_pct}: expected a fraction in (0, 1]')
    check_export_request(args.format, args.output, args.img_size, args.dynamic_batch)
    model = _build(args)
    report = export_model(model, args.format, args.output, args.img_size, args.dynamic_batch)
    report.update(model=args.model, checkpoint=args.checkpoint, reparameterized=args.reparameterize)
    if args.int8:
        _int8(args, model, report)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    checked = ', '.join(f'batch {b}: max |diff| {d:.2e}' for b, d in report['max_abs_diff'].items())
    print(f'wrote {report["output"]} ({args.format}, {"fused" if args.reparameterize else "un-fused"} {args.model})')
    print(f'checked against PyTorch: {checked}' if checked else
          'Core ML cannot run on this OS: checked the saved program (input shape, conv count, output shape), '
          'not its numbers')
    if 'int8' in report:
        q = report['int8']
        print(f'wrote {q["output"]}: int8 / float latency {q["latency_ratio_int8_to_float"]:.2f} (ONNX Runtime)')
        if 'top1_float' in q:
            print(f'top-1 on {q["eval_images"]} validation images: float {q["top1_float"]:.2f}%, '
                  f'int8 {q["top1_int8"]:.2f}%')
    return 0
