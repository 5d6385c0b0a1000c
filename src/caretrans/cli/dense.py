"""The `caretrans det` and `caretrans seg` commands: train, validate, predict and synth, sharing one parser."""
import contextlib
import json
import sys
from pathlib import Path

__all__ = ['add_task_parser']

_DEFAULT_PRESET = {'det': 'coco', 'seg': 'ade20k'}
_SHAPES_PRESET = {'det': 'shapes-det', 'seg': 'shapes-seg'}


def _print_metrics(metrics, as_json: bool):
    """AP, IoU and accuracy figures, all in percent; per-class ones by class name (n/a: a class absent)."""
    if as_json:
        print(json.dumps(metrics, indent=2))
        return
    for k, v in metrics.items():
        if isinstance(v, float):
            print(f'{k:>17}: {v:6.2f} %')
        elif isinstance(v, dict):
            print(f'{k:>17}: ' + ', '.join(f'{name} ' + ('n/a' if x is None else f'{x:.1f} %') for name, x in v.items()))


def _run_train(args):
    import functools

    from ..dense.recipe import load_recipe
    from ..dense.train import train
    from ..runtime import run_exit_code
    from ..runtime.distributed import is_primary_process
    from ..runtime.loop import TrainingDiverged
    from .common import check_model_names
    from .recipe_flags import prepare_run

    recipe, run_dir, resume = prepare_run(args, functools.partial(load_recipe, task=args.task),
                                          _DEFAULT_PRESET[args.task], prefix=f'{args.task}-')
    check_model_names([recipe.model])
    try:  # with --json, stdout is the JSON alone: the run's lines go to stderr
        with contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():
            result = train(recipe, run_dir, resume=resume, device=args.device, progress=args.progress)
    except TrainingDiverged as e:
        print(f'caretrans {args.task}: error: {e}', file=sys.stderr)
        return 3
    if result.status not in ('finished', 'already finished'):
        return run_exit_code(result.status)
    if not is_primary_process() or result.status == 'already finished':
        return 0
    _print_metrics(dict(result.metrics, epoch=result.epoch, status=result.status, run_dir=str(result.run_dir)),
                   args.json)
    if not args.json:
        print(f'run folder {result.run_dir}: last.pth, model.safetensors, recipe.yaml, metrics.csv, curves.png')
    return 0


def _validation_overrides(args):
    """The recipe fields --data, --split, --batch-size and --workers set, where given."""
    return {field: value for field, value in (('data', args.data), ('val_split', args.split),
                                              ('batch_size', args.batch_size), ('workers', args.workers))
            if value is not None}


def _run_validate(args):
    from ..dense.recipe import load_recipe
    from ..dense.run import evaluate_checkpoint
    from ..runtime.distributed import is_primary_process
    from .common import check_at_least

    check_at_least(args, batch_size=1, workers=0)
    recipe = load_recipe(args.recipe, args.task) if args.recipe else None  # None: the run's own
    metrics = evaluate_checkpoint(args.checkpoint, recipe, device=args.device, task=args.task,
                                  overrides=_validation_overrides(args))
    if is_primary_process():
        _print_metrics(metrics, args.json)
    return 0


def _detection_record(run, image, path: Path, picture: Path, score_threshold: float):
    from ..dense import predict as P

    found = P.detect(run, image, score_threshold)
    P.draw_detections(image, found, run.labels).save(picture)
    detections = [dict(label=run.labels[int(k)], score=round(float(s), 4), box=[round(float(v), 1) for v in box])
                  for k, s, box in zip(found['labels'], found['scores'], found['boxes'])]
    return dict(image=str(path), width=image.width, height=image.height, picture=str(picture), detections=detections)


def _segmentation_record(run, image, path: Path, picture: Path, class_file: Path):
    from ..dense import predict as P

    class_map = P.segment(run, image)
    P.draw_class_map(image, class_map).save(picture)
    P.class_map_image(class_map, len(run.labels)).save(class_file)
    return dict(image=str(path), width=image.width, height=image.height, picture=str(picture),
                class_map=str(class_file), classes=P.class_shares(class_map, run.labels))


def _print_record(record):
    if 'detections' in record:
        print(f"{record['image']}: {len(record['detections'])} detection(s) -> {record['picture']}")
        for d in record['detections']:
            print(f"  {d['label']:<16} {d['score']:.3f}  [{', '.join(f'{v:.1f}' for v in d['box'])}]")
    else:
        shares = ', '.join(f'{name} {share:.1f} %' for name, share in record['classes'].items())
        print(f"{record['image']}: {shares} -> {record['picture']}, {record['class_map']}")


def _run_predict(args):
    import torch

    from ..data.images import UnreadableImageError, read_image
    from ..data import find_images
    from ..dense.predict import output_paths
    from ..dense.run import load_dense_run

    if args.task == 'det' and not 0 <= args.score_threshold <= 1:
        raise ValueError(f'--score-threshold {args.score_threshold}: expected a score in [0, 1]')
    output = Path(args.output)
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f'--output {output}: cannot create the folder: {e.strerror or e}') from None
    run = load_dense_run(args.checkpoint, task=args.task,
                         device=torch.device(args.device or ('cuda' if torch.cuda.is_available() else 'cpu')))
    files = find_images(args.images)
    problems = [f'{path} does not exist' for path, _ in files if not path.exists()]
    files = [(path, name) for path, name in files if path.exists()]
    suffixes = ('.boxes.png',) if args.task == 'det' else ('.seg.png', '.classes.png')
    records = []
    for (path, _), outputs in zip(files, output_paths([rel for _, rel in files], output, suffixes)):
        try:
            image = read_image(path)
        except UnreadableImageError as e:
            problems.append(str(e))
            continue
        try:
            outputs[0].parent.mkdir(parents=True, exist_ok=True)
            record = (_detection_record(run, image, path, *outputs, args.score_threshold) if args.task == 'det'
                      else _segmentation_record(run, image, path, *outputs))
        except OSError as e:
            raise ValueError(f'cannot write {outputs[0]}: {e.strerror or e}') from None
        records.append(record)
        if not args.json:
            _print_record(record)
    for problem in problems:
        print(f'caretrans {args.task} predict: skipped: {problem}', file=sys.stderr)
    if args.json:
        print(json.dumps(records, indent=2))
    if not records:
        raise ValueError(f'no image to predict on in {" ".join(args.images)}')
    return 0


def _run_synth(args):
    from ..dense.synthetic import make_shapes_dataset

    paths = make_shapes_dataset(args.output, args.num_train, args.num_val, args.image_size, seed=args.seed)
    for k, v in paths.items():
        print(f'{k}: {v}')
    print(f'train on it: caretrans {args.task} train --recipe {_SHAPES_PRESET[args.task]} --data {args.output}')
    return 0


def add_task_parser(subparsers, task: str, help_text: str):
    """Register `caretrans <task>` with its train, validate, predict and synth actions."""
    from ..dense.recipe import PRESETS, field_names, load_recipe
    from .recipe_flags import add_training_flags

    parser = subparsers.add_parser(task, help=help_text)
    actions = parser.add_subparsers(dest='action', required=True, metavar='ACTION')

    p = actions.add_parser('train', help='train (resumable; DDP with torchrun)',
                           description='Every recipe flag overrides the preset/YAML given with --recipe. Under '
                                       'torchrun each process takes --batch-size images.')
    other_tasks_fields = tuple(sorted(set(field_names()) - set(field_names(task))))
    add_training_flags(p, PRESETS, load_recipe(_DEFAULT_PRESET[task]), _DEFAULT_PRESET[task],
                       f'runs/{task}-MODEL-DATA', skip=('task',) + other_tasks_fields)
    p.set_defaults(func=_run_train, task=task)

    p = actions.add_parser('validate', aliases=['eval'], help='box/mask AP or mIoU of a checkpoint, in percent '
                           '("eval": the same, its former name)')
    p.add_argument('--checkpoint', required=True, help='a run folder, or its model.safetensors or last.pth')
    p.add_argument('--recipe', help="preset or YAML (default: the run's own)")
    p.add_argument('--data', help='another dataset folder (default: the recipe\'s)')
    p.add_argument('--split', '--val-split', help="the split evaluated (default: the recipe's val_split)")
    p.add_argument('-b', '--batch-size', type=int, help="det: images per batch (default: the recipe's)")
    p.add_argument('-j', '--workers', type=int, help="data-loading processes (default: the recipe's)")
    p.add_argument('--device', help='cpu, cuda or cuda:N (default: cuda if available, one GPU per local rank)')
    p.add_argument('--json', action='store_true', help='print the metrics as JSON')
    p.set_defaults(func=_run_validate, task=task)

    what = 'detections (label, score, box) and a picture with their boxes and masks' if task == 'det' else \
        'the class map (a palette PNG) and a picture with its colours'
    p = actions.add_parser('predict', help=f'{what.split(" and ")[0]} of images, from a run folder alone',
                           description=f'Per image: {what}, written under --output. Folders are searched '
                                       'recursively; files that cannot be read are skipped, each named.')
    p.add_argument('--checkpoint', required=True, help='a run folder, or its model.safetensors or last.pth')
    p.add_argument('images', nargs='+', metavar='IMAGE_OR_FOLDER', help='images (any format PIL reads) or folders')
    p.add_argument('--output', default='predictions', metavar='DIR', help='where the pictures go (default: '
                   'predictions)')
    if task == 'det':
        p.add_argument('--score-threshold', type=float, default=0.5, metavar='T',
                       help='detections scoring below T are left out (default: 0.5)')
    p.add_argument('--device', help='cpu, cuda or cuda:N (default: cuda if available)')
    p.add_argument('--json', action='store_true', help='print the predictions as JSON')
    p.set_defaults(func=_run_predict, task=task)

    p = actions.add_parser('synth', help='write the synthetic shapes dataset (COCO and ADE20K formats)')
    p.add_argument('--output', required=True)
    p.add_argument('--num-train', type=int, default=64)
    p.add_argument('--num-val', type=int, default=16)
    p.add_argument('--image-size', type=int, default=128)
    p.add_argument('--seed', type=int, default=0)
    p.set_defaults(func=_run_synth, task=task)
