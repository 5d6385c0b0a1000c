"""`caretrans predict`: top-k classes of images from a trained run alone."""
import json
import sys


def add_parser(subparsers):
    p = subparsers.add_parser('predict', help="top-k classes of images, from a run's folder or weights alone")
    p.add_argument('--checkpoint', required=True, metavar='RUN_OR_FILE',
                   help="a run folder (its best.safetensors, else last.pth), a weights file, or a save_for_hf folder")
    p.add_argument('images', nargs='+', metavar='IMAGE_OR_FOLDER',
                   help='image files (any format PIL reads) and folders (searched recursively)')
    p.add_argument('--top-k', type=int, default=5, help='classes per image (default 5, at most the class count)')
    p.add_argument('-b', '--batch-size', type=int, default=32)
    p.add_argument('--device', help='default: cuda if available, else cpu')
    p.add_argument('--json', action='store_true', help='print JSON')
    p.add_argument('--output', metavar='CSV', help='also write the predictions to this CSV file (path, label_1, '
                   'probability_1, ... label_K, probability_K)')
    p.set_defaults(func=run)


def _write_csv(predictions, top_k: int, path):
    import csv

    from ..models.checkpoint import atomic_file

    with atomic_file(path) as tmp, open(tmp, 'w', newline='', encoding='utf-8') as f:
        writer = csv.writer(f)
        writer.writerow(['path'] + [f'{c}_{i}' for i in range(1, top_k + 1) for c in ('label', 'probability')])
        for p in predictions:
            writer.writerow([p.path] + [v for label, prob in p.top for v in (label, f'{prob:.6f}')])


def run(args):
    import torch

    from ..data import find_images
    from ..inference import load_run, predict_images, run_task
    from ..models.checkpoint_info import run_weights
    from .common import check_at_least

    check_at_least(args, top_k=1, batch_size=1)
    device = torch.device(args.device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    task = run_task(run_weights(args.checkpoint))
    if task != 'classification':  # detections and class maps are written as pictures by their own command
        raise ValueError(f'{args.checkpoint} is a {task} run: use `caretrans {task} predict`')
    model, transform, labels = load_run(args.checkpoint, device)
    paths = [path for path, _ in find_images(args.images)]
    if not paths:
        raise ValueError(f'no image files in {", ".join(args.images)}')
    top_k = min(args.top_k, len(labels))
    done, unreadable = [], []
    for p in predict_images(model, transform, labels, paths, top_k, args.batch_size):
        if p.error is not None:
            unreadable.append(p)
            print(f'caretrans predict: skipping an unreadable image: {p.error}', file=sys.stderr)
            continue
        done.append(p)
        if not args.json:
            print(f'{p.path}: ' + ', '.join(f'{label} {100 * prob:.1f}%' for label, prob in p.top), flush=True)
    if not done:
        raise ValueError(f'none of the {len(paths)} image file(s) could be read (each is named above)')
    if args.output:
        _write_csv(done, top_k, args.output)
    if args.json:
        print(json.dumps(dict(
            predictions=[dict(path=p.path, top=[dict(label=label, probability=prob) for label, prob in p.top])
                         for p in done],
            unreadable=[dict(path=p.path, error=p.error) for p in unreadable]), indent=2))
    return 0
